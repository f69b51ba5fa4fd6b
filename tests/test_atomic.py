"""Atomic files: whole or not at all, nothing left behind, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from anydistill.atomic import atomic_path, write_text_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_whole_with_ordinary_permissions(tmp_path, monkeypatch, umask, mode):
    from anydistill import atomic

    monkeypatch.setattr(atomic, "_UMASK", umask)  # the process's umask, read once at import
    path = write_text_atomic(tmp_path / "sub" / "a.json", "{}\n")
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == mode  # not mkstemp's 0o600 whatever the umask
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_the_umask_is_read_without_changing_it():
    from anydistill.atomic import _read_umask

    before = os.umask(0o027)
    try:
        assert _read_umask() == 0o027
        assert os.umask(0o027) == 0o027  # left as it was
    finally:
        os.umask(before)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_fsync_variant_replaces(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "one")
    assert write_text_atomic(tmp_path / "a.txt", "two", fsync=True).read_text() == "two"
