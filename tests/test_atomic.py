"""Atomic files: whole or not at all, nothing left behind, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from anydistill.atomic import atomic_path, write_text_atomic


def test_written_whole_with_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "sub" / "a.json", "{}\n")
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0o600
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


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
