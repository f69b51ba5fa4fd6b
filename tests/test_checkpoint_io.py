"""Atomic checkpoint saves (issue 10) and the resume choice when a checkpoint is torn."""

import errno
import os
import stat
from pathlib import Path

import pytest
import torch

from anydistill import checkpoint_io
from anydistill.checkpoint_io import (
    AtomicCheckpointIO,
    DiskFullError,
    atomic_copy,
    atomic_torch_save,
    remove_stale_temporaries,
)
from anydistill.training import _find_resume


def ckpt(step: int) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.full((1000,), float(step))}}


def load_step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def half_then_enospc(obj, f, *args, **kwargs):
    """A torch.save that dies like a full disk: half of the real bytes written, then ENOSPC."""
    import io

    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


real_save = torch.save


def test_failed_save_leaves_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(ckpt(1), target)
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(
        DiskFullError, match=r"last\.ckpt: no space left on device .* previous file is kept"
    ) as info:
        AtomicCheckpointIO().save_checkpoint(ckpt(2), target)
    assert info.value.__cause__.errno == errno.ENOSPC and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left
    assert target.read_bytes() == before and load_step(target) == 1


def test_save_replaces_only_once_complete(tmp_path, monkeypatch):
    """Until the rename the destination is the old, whole file; the new one is complete and in its folder."""
    target = tmp_path / "last.ckpt"
    atomic_torch_save(ckpt(1), target)
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        seen.append((Path(src), Path(dst), load_step(Path(dst)), load_step(Path(src))))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    AtomicCheckpointIO().save_checkpoint(ckpt(2), target)
    [(src, dst, old_step, new_step)] = seen
    assert dst == target and (old_step, new_step) == (1, 2)
    assert src.parent == target.parent  # same folder: a rename on one file system, never a copy
    assert src.name.startswith(".last.ckpt.") and src.name.endswith(".tmp")
    assert load_step(target) == 2 and not src.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_temporary_file_is_beside_the_target_not_in_the_system_temp(tmp_path, monkeypatch):
    opened = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            opened.append(Path(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    target = tmp_path / "sub" / "best.ckpt"
    AtomicCheckpointIO().save_checkpoint(ckpt(3), target)
    assert len(opened) == 1 and opened[0].parent == target.parent
    assert load_step(target) == 3


def test_storage_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint(ckpt(1), tmp_path / "x.ckpt", storage_options={"a": 1})


def test_atomic_copy_keeps_source_and_old_destination_on_failure(tmp_path, monkeypatch):
    src, dst = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    atomic_torch_save(ckpt(5), src)
    atomic_torch_save(ckpt(1), dst)

    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(checkpoint_io.shutil, "copyfileobj", io_error)
        with pytest.raises(OSError) as info:  # other errors than a full disk propagate as they are
            atomic_copy(src, dst)
    assert type(info.value) is OSError and info.value.errno == errno.EIO
    assert load_step(dst) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    atomic_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes() and load_step(src) == 5


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".last.ckpt.123.abcd.tmp").write_bytes(b"half")
    (tmp_path / "best.ckpt.tmp").write_bytes(b"")
    atomic_torch_save(ckpt(1), tmp_path / "last.ckpt")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".last.ckpt.123.abcd.tmp", "best.ckpt.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_from_good_last(tmp_path, capsys):
    atomic_torch_save(ckpt(4), tmp_path / "last.ckpt")
    atomic_torch_save(ckpt(2), tmp_path / "best.ckpt")
    (tmp_path / ".last.ckpt.99.ffff.tmp").write_bytes(b"x")  # a killed save's leftover
    assert _find_resume(tmp_path) == tmp_path / "last.ckpt"
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_torn_last_is_set_aside_and_best_resumes(tmp_path, capsys):
    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    atomic_torch_save(ckpt(4), last)
    atomic_torch_save(ckpt(2), best)
    truncate(last)
    torn_bytes = last.read_bytes()
    assert _find_resume(tmp_path) == best
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"anydistill: warning: {last} is unreadable (")
    assert err[0].endswith("; set aside as last.ckpt.torn, resuming from best.ckpt")
    assert (tmp_path / "last.ckpt.torn").read_bytes() == torn_bytes and not last.exists()


def test_a_second_torn_last_does_not_overwrite_the_first(tmp_path, capsys):
    last = tmp_path / "last.ckpt"
    (tmp_path / "last.ckpt.torn").write_bytes(b"first")
    last.write_bytes(b"")  # 0 bytes: what a kill during Lightning's cross-file-system copy leaves
    assert _find_resume(tmp_path) is None
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"anydistill: warning: {last} is unreadable (checkpoint is empty (0 bytes)); "
        "set aside as last.ckpt.torn-1, starting from scratch"
    ]
    assert (tmp_path / "last.ckpt.torn").read_bytes() == b"first" and (
        tmp_path / "last.ckpt.torn-1"
    ).is_file()


def test_both_torn_start_from_scratch(tmp_path, capsys):
    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    atomic_torch_save(ckpt(4), last)
    atomic_torch_save(ckpt(2), best)
    truncate(last)
    best.write_bytes(b"garbage, not a zip")
    assert _find_resume(tmp_path) is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2  # one line per file set aside
    assert err[0].endswith("set aside as last.ckpt.torn, starting from scratch (best.ckpt is unreadable too)")
    assert err[1].endswith("set aside as best.ckpt.torn, starting from scratch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt.torn", "last.ckpt.torn"]


def test_torn_best_beside_good_last_is_set_aside(tmp_path, capsys):
    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    atomic_torch_save(ckpt(4), last)
    atomic_torch_save(ckpt(2), best)
    truncate(best)
    assert _find_resume(tmp_path) == last
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("set aside as best.ckpt.torn, resuming from last.ckpt")


def test_no_last_resumes_from_good_best(tmp_path, capsys):
    atomic_torch_save(ckpt(2), tmp_path / "best.ckpt")
    assert _find_resume(tmp_path) == tmp_path / "best.ckpt"
    assert _find_resume(tmp_path / "missing") is None
    assert capsys.readouterr().err == ""


def test_other_ranks_choose_without_renaming(tmp_path, capsys, monkeypatch):
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    atomic_torch_save(ckpt(4), last)
    atomic_torch_save(ckpt(2), best)
    truncate(last)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert _find_resume(tmp_path) == best
    assert last.is_file() and capsys.readouterr().err == ""


def test_data_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """The rename must not reach the disk before the data (else a power loss leaves a whole name over
    missing data), and the rename itself is made durable by fsyncing the folder."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    AtomicCheckpointIO().save_checkpoint(ckpt(1), tmp_path / "last.ckpt")
    assert events == ["fsync file", "replace", "fsync dir"]


def test_torch_zip_writer_masking_enospc_is_still_a_full_disk(tmp_path, monkeypatch):
    """torch's zip writer turns a failed write into RuntimeError("unexpected pos") raised while the
    OSError is handled: the full disk is found behind it."""

    def masked(obj, f, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2") from None

    monkeypatch.setattr(torch, "save", masked)
    with pytest.raises(DiskFullError, match="no space left"):
        atomic_torch_save(ckpt(1), tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []
