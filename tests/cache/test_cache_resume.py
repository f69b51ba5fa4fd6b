"""Kill -9 a process running the teacher pass mid-way; a rerun finishes with no duplicate, no missing image."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from stand_in_teacher import StandInTeacher

from anydistill.cache import open_cache, run_teacher_pass
from anydistill.cache.shards import ShardIndex, list_shard_files
from anydistill.data.toyworld import write_toyworld

N = 10
KW = {"batch_size": 1, "shard_size": 2, "num_workers": 0, "progress": False}

SCRIPT = """
import sys
sys.path.insert(0, {helpers!r})
from stand_in_teacher import StandInTeacher
from anydistill.cache import run_teacher_pass
run_teacher_pass(StandInTeacher(delay=0.25), {images!r}, {out!r}, **{kw!r})
"""


def test_killed_pass_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    images = tmp_path / "toy"
    write_toyworld(images, count=N, size=32, domain="wide", seed=1, progress=False)
    out = tmp_path / "killed"
    script = tmp_path / "run_pass.py"
    helpers = str(Path(__file__).resolve().parent)
    script.write_text(
        textwrap.dedent(SCRIPT.format(helpers=helpers, images=str(images), out=str(out), kw=KW))
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        mid_shard = lambda: bool(list_shard_files(out)) and any(out.glob("*.tar.tmp"))  # noqa: E731
        while not mid_shard() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None:
            pytest.fail(f"the pass ended before it could be killed:\n{proc.stdout.read().decode()}")  # type: ignore[union-attr]
        proc.kill()  # SIGKILL: no cleanup code runs
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -9
    done = list_shard_files(out)
    assert 1 <= len(done) < N // 2 and not (out / "manifest.json").exists()

    resumed = run_teacher_pass(StandInTeacher(), images, out, **KW)
    reference = run_teacher_pass(StandInTeacher(), images, tmp_path / "uninterrupted", **KW)
    assert resumed.count == N and resumed.timing["written"] == N - 2 * len(done)
    assert not list(out.glob("*.tmp"))
    ids = [i for paths in list_shard_files(out).values() for p in paths for i in ShardIndex.load(p).ids]
    assert len(ids) == len(set(ids)) == N  # no duplicate, no missing image
    a, b = open_cache(out, verify=True), open_cache(tmp_path / "uninterrupted", verify=True)
    assert a.ids == b.ids
    for i in b.ids:
        np.testing.assert_array_equal(a.read(i)["disp"], b.read(i)["disp"])
    assert [s.sha256 for s in resumed.shards] == [s.sha256 for s in reference.shards]
