"""The ``anydistill`` command as a user's shell runs it: a fresh interpreter, no pytest capture or warning
filters in between. Checks what only a new process shows: the OpenMP wait policy set before torch loads,
and a training run's output free of framework banners, tips and warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return {**env, **extra}


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_sets_a_passive_openmp_wait_before_torch_loads(given, expected) -> None:
    code = "import os, sys, anydistill.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    env = _env(**({"OMP_WAIT_POLICY": given} if given else {}))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    # torch not imported yet: libgomp reads the variable when torch loads it, so it must be set first.
    assert out.stdout.split() == [expected, "False"]


def test_a_training_run_prints_only_its_own_lines(tmp_path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "anydistill.cli", "train", "task=depth", "model.name=depth_tiny",
           f"run_dir={run}", "data.source=toyworld", "data.image_size=32", "data.train_count=8",
           "data.val_count=4", "data.batch_size=4", "data.num_workers=0", "trainer.max_steps=2",
           "trainer.progress_bar=false"]  # fmt: skip
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no banner ("GPU available", "LOCAL_RANK"), tip, warning or info line
    lines = out.stdout.splitlines()
    assert lines[:2] == [f"run folder: {run}", f"best checkpoint: {run / 'checkpoints' / 'best.ckpt'}"]
    assert json.loads("\n".join(lines[2:]))["val/n_images"] == 4.0  # the rest is the metrics, nothing else
