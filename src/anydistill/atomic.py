"""Files written whole or not at all: a temporary file beside the target, renamed onto it.

A reader (or a rerun after a kill) sees the old file or the new one, never a torn one; the temporary
name starts with a dot and ends in ``.tmp``, and is removed when writing fails. The file gets the
permissions a plainly created file would (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]


def _read_umask() -> int:
    """The process's umask, read once at import (``os.umask`` can only be read by setting it, which must
    not happen while other threads create files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp``: write ``tmp`` (same folder, parents made); on success it becomes
    ``p`` (``fsync``: flushed to disk first), on an exception it is removed and ``p`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        if fsync:
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, fsync: bool = False) -> Path:
    """``text`` (UTF-8) at ``path``, whole or not at all; returns ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
