"""Two CPU processes (Lightning Fabric, gloo) give exactly the single-process cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from stand_in_teacher import StandInTeacher

from anydistill.cache import open_cache, run_teacher_pass
from anydistill.data.toyworld import write_toyworld

N = 11
KW = {"batch_size": 2, "shard_size": 3, "features": True, "num_workers": 1, "progress": False}

# strategy="ddp" re-runs this script once per extra rank, as it does for the CLI.
SCRIPT = """
import sys
sys.path.insert(0, {helpers!r})
from stand_in_teacher import StandInTeacher
from anydistill.cache import run_teacher_pass
from anydistill.cache.teacher_pass import is_global_zero
m = run_teacher_pass(StandInTeacher(), {images!r}, {out!r}, devices=2, accelerator="cpu", strategy="ddp", **{kw!r})
if is_global_zero():
    print("COUNT", m.count, m.timing["world_size"])
"""


def test_two_processes_give_the_single_process_result(tmp_path: Path) -> None:
    images = tmp_path / "toy"
    write_toyworld(images, count=N, size=32, domain="wide", seed=2, progress=False)
    out = tmp_path / "two"
    script = tmp_path / "run_pass.py"
    helpers = str(Path(__file__).resolve().parent)
    script.write_text(
        textwrap.dedent(SCRIPT.format(helpers=helpers, images=str(images), out=str(out), kw=KW))
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"COUNT {N} 2" in done.stdout

    single = run_teacher_pass(StandInTeacher(), images, tmp_path / "one", **KW)
    two = open_cache(out, verify=True)
    one = open_cache(tmp_path / "one", verify=True)
    assert two.manifest.timing["world_size"] == 2 and two.manifest.count == single.count == N
    # Per-rank shards: rank r wrote the shards s with s % 2 == r.
    assert [s.name for s in two.manifest.shards] == [f"shard-{s % 2}-{s:06d}.tar" for s in range(4)]
    assert two.ids == one.ids and len(set(two.ids)) == N
    for i in one.ids:
        a, b = two.read(i), one.read(i)
        assert sorted(a) == sorted(b) == ["disp", "feat"]
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert [s.sha256 for s in two.manifest.shards] == [s.sha256 for s in single.shards]
