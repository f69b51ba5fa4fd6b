"""End to end: a torn last.ckpt is set aside and the run resumes (issue 10); kills during saves on a
file system other than the temporary folder's never tear a checkpoint (slow)."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anydistill.checkpoints import read_checkpoint
from anydistill.cli import main

TINY = [
    "task=depth",
    "model.name=depth_tiny",
    "data.train_count=16",
    "data.val_count=4",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_epochs=100",
    "trainer.progress_bar=false",
    "trainer.grid_images=2",
]


def step_of(path: Path) -> int:
    return read_checkpoint(path)["global_step"]


def test_torn_last_checkpoint_is_set_aside_and_the_run_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", f"run_dir={run}", *TINY]
    assert main([*args, "trainer.max_steps=4"]) == 0
    last, best = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "best.ckpt"
    assert step_of(last) == 4 and step_of(best) == 4
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    capsys.readouterr()

    assert main([*args, "trainer.max_steps=6"]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("anydistill: warning:")]
    assert warnings == [
        f"anydistill: warning: {last} is unreadable ("
        + warnings[0].split(" is unreadable (", 1)[1].rsplit(")", 1)[0]
        + "); set aside as last.ckpt.torn, resuming from best.ckpt"
    ]
    assert f"from {best}" in out  # the "resuming ... from" line
    assert step_of(last) == 6
    assert (run / "checkpoints" / "last.ckpt.torn").read_bytes() == data[: len(data) // 2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
        "last.ckpt.torn",
    ]


# --- slow: SIGKILL during saves, run folder on a tmpfs (another file system than the temporary folder) ---

TARGET_STEPS = 150


@pytest.fixture
def tmpfs(tmp_path):
    """A 256 MiB tmpfs mounted in ``tmp_path`` (skip where mounting is not permitted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def train_command(run: Path) -> list[str]:
    return [
        sys.executable, "-m", "anydistill.cli", "train", f"run_dir={run}", *TINY,
        f"trainer.max_steps={TARGET_STEPS}", "trainer.checkpoint_every_n_steps=1",
    ]  # fmt: skip


def check_checkpoint_folder(ckpt_dir: Path) -> None:
    """Every checkpoint there reads; nothing is torn (killed saves may leave only ``*.tmp``)."""
    for path in ckpt_dir.iterdir():
        assert not path.name.endswith((".torn",)) and ".torn-" not in path.name, f"torn checkpoint {path}"
        if path.name.endswith(".ckpt"):
            read_checkpoint(path)  # raises DataError on a torn file
        else:
            assert path.name.endswith(".tmp"), f"unexpected file {path}"


@pytest.mark.slow
def test_kills_during_saves_never_tear_a_checkpoint(tmpfs):
    run = tmpfs / "run"
    ckpt_dir = run / "checkpoints"
    # The runs' temporary folder: on another file system than the run folder, and watched for strays
    # (Lightning's own save writes its checkpoint there first and leaves it behind when killed).
    systemp = tmpfs.parent / "systemp"
    systemp.mkdir()
    assert os.stat(tmpfs).st_dev != os.stat(systemp).st_dev, "the tmpfs shares the temporary folder's device"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(systemp)}
    rng = random.Random(10)
    during_save, steps = 0, []
    for trial in range(10):
        log = tmpfs.parent / f"trial{trial}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                train_command(run), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        before = step_of(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").is_file() else 0
        stale = {p.name for p in ckpt_dir.glob("*.tmp")} if ckpt_dir.is_dir() else set()
        mode = "save" if trial % 2 == 0 else "random"
        deadline = time.time() + 180
        killed_at = None
        if mode == "save":
            # kill right after a save starts (a new temporary file, or a checkpoint file changing: what
            # Lightning's own copy would show), a few saves in
            skip = rng.randint(0, 3)
            seen = signatures(ckpt_dir)
            while time.time() < deadline and proc.poll() is None:
                fresh = {p.name for p in ckpt_dir.glob("*.tmp")} - stale if ckpt_dir.is_dir() else set()
                now = signatures(ckpt_dir)
                if fresh or now != seen:
                    if skip == 0:
                        time.sleep(rng.uniform(0, 0.003))
                        killed_at = "save"
                        break
                    skip -= 1
                    stale |= fresh
                    seen = now
                time.sleep(0.0005)
        else:
            # kill at a random moment once training has got going (a save written since the start)
            while time.time() < deadline and proc.poll() is None:
                if (ckpt_dir / "last.ckpt").is_file() and step_of_safe(ckpt_dir / "last.ckpt") > before:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 1.5))
            killed_at = "random"
        assert proc.poll() is None, f"trial {trial}: run ended before the kill:\n{log.read_text()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert before == 0 or "resuming" in text, f"trial {trial} did not resume:\n{text[-3000:]}"
        during_save += killed_at == "save" and any(ckpt_dir.glob("*.tmp"))
        check_checkpoint_folder(ckpt_dir)
        # (a kill during the very first save leaves no last.ckpt yet: nothing to resume, step 0)
        steps.append(step_of(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").exists() else 0)
    done = subprocess.run(train_command(run), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "resuming" in done.stdout and "warning" not in done.stderr
    check_checkpoint_folder(ckpt_dir)
    assert not list(ckpt_dir.glob("*.tmp"))
    assert not [p for p in systemp.rglob("*") if p.is_file() and p.stat().st_size > 1 << 20], (
        "stray checkpoint copies"
    )
    assert step_of(ckpt_dir / "last.ckpt") == TARGET_STEPS
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "last.ckpt"]
    print(f"\nkill trials: 10/10 resumed; {during_save} killed mid-save (temporary left); last steps {steps}")


def signatures(ckpt_dir: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of the checkpoints: any change shows a save writing or renaming one."""
    found = {}
    for name in ("last.ckpt", "best.ckpt"):
        try:
            st = os.stat(ckpt_dir / name)
        except FileNotFoundError:
            continue
        found[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def step_of_safe(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["global_step"]
    except Exception:  # noqa: BLE001 - replaced while reading
        return 0
