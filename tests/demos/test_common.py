"""The demos' shared steps: step budgets with a time cap, and round-robin latency."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from anydistill.config import DataConfig
from anydistill.data.toyworld import write_toyworld
from anydistill.demos import common as demo_common
from anydistill.demos.common import budget_note, round_robin_latency_ms, step_config, write_split
from anydistill.training import TrainResult


def _result(tmp_path: Path, name: str, steps: int) -> TrainResult:
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"global_step": steps}))
    return TrainResult(run, run / "best.ckpt", run / "last.ckpt", {})


def test_step_config_budgets_in_steps_with_the_time_only_as_a_cap(tmp_path):
    cfg = step_config("depth", "depth_tiny", tmp_path, DataConfig(), 150, 30.0, log_every_n_steps=10)
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs, cfg.trainer.max_time_minutes) == (150, -1, 30.0)


def test_budget_note_says_whether_the_cap_cut_a_run_short(tmp_path):
    full = {"teacher": (_result(tmp_path, "t", 150), 150), "student": (_result(tmp_path, "s", 100), 100)}
    note = budget_note(full, 30.0)
    assert "teacher 150 steps, student 100 steps" in note and "not reached" in note and "stopped" not in note
    cut = {"teacher": (_result(tmp_path, "t2", 32), 60)}
    note = budget_note(cut, 3.0)
    assert "stopped by the cap: teacher at step 32 of 60" in note and "not reached" not in note


def test_round_robin_latency_measures_each_call_in_turn():
    order: list[str] = []

    def call(name: str, seconds: float):
        def run() -> None:
            order.append(name)
            time.sleep(seconds)

        return run

    ms = round_robin_latency_ms({"a": call("a", 0.002), "b": call("b", 0.02)}, rounds=3)
    assert order == ["a", "b"] * 4  # one warm-up each, then a, b, a, b, ...
    assert ms["b"] > ms["a"] and ms["b"] == pytest.approx(20, abs=15)


def test_write_split_renders_large_splits_in_two_processes_with_the_same_files(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    real = demo_common.write_toyworld

    def spy(*args, **kwargs):
        calls.append(kwargs["workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(demo_common, "write_toyworld", spy)
    monkeypatch.setattr(demo_common.os, "cpu_count", lambda: 2)
    write_split(tmp_path / "pool", 256, 8, "wide", seed=3)
    write_split(tmp_path / "small", 4, 8, "wide", seed=3)
    assert calls == [2, 0]  # a pool for a large split only
    write_toyworld(tmp_path / "one", count=256, size=8, domain="wide", seed=3, progress=False)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) >= 2 * 256
    for rel in files:
        assert (tmp_path / "pool" / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), rel
