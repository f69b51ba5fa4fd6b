"""Checkpoints written atomically in the run folder itself, so a kill or a full disk never tears one.

Lightning's :class:`~lightning.fabric.plugins.io.torch_io.TorchCheckpointIO` saves through an fsspec
transaction: the checkpoint goes to a temporary file made by ``tempfile.mkstemp()`` in the system's
temporary folder, which the commit moves into place with ``shutil.move``. When the run folder is on
another file system (a mounted disk, a network share, a tmpfs) that move is a *copy* onto the
destination: a kill or ``ENOSPC`` during it leaves a 0-byte or truncated ``last.ckpt`` (and a stray file
in ``/tmp``), and the rerun fails with a bare ``EOFError``. Nothing is fsynced either, so a power loss can
leave a complete name over incomplete data.

Here every save writes a temporary file in the *same* folder as its target (``.<name>.<pid>.<random>.tmp``),
flushes and fsyncs it, renames it onto the target with :func:`os.replace` (atomic within one file system)
and fsyncs the folder so the rename itself is durable. Until the rename the previous file is untouched;
on any error the temporary file is removed. A kill leaves at most a ``*.tmp`` beside the checkpoints,
which :func:`remove_stale_temporaries` clears when a run starts again.

:class:`AtomicCheckpointIO` is the Lightning plugin (``Trainer(plugins=[AtomicCheckpointIO()])``): every
save of the trainer (both ``ModelCheckpoint`` callbacks, ``trainer.save_checkpoint``) goes through it.
Loading and removing stay Lightning's. :func:`atomic_torch_save` and :func:`atomic_copy` are the same
write for code outside the trainer.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from anydistill.errors import AnydistillError

#: The suffix of the temporary files; :func:`remove_stale_temporaries` removes leftovers with it.
TMP_SUFFIX = ".tmp"


class DiskFullError(AnydistillError):
    """A save found no room on its file system; the previous file is kept (one line in the CLI, exit 2)."""


def _disk_full(exc: BaseException) -> OSError | None:
    """The ``ENOSPC`` / ``EDQUOT`` behind ``exc``: torch's zip writer reports a failed write as a
    ``RuntimeError`` ("unexpected pos") with the ``OSError`` as its context."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return current
        current = current.__cause__ or current.__context__
    return None


def temporary_path(path: Path) -> Path:
    """A fresh name for the temporary file of a save to ``path``: hidden, in the same folder (so the final
    :func:`os.replace` is a rename on one file system, never a copy), unique per process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable. Best effort: some file systems (and Windows) refuse to open or
    fsync a folder, and the rename has happened either way."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` all at once or not at all: ``write`` fills a temporary file in the same folder, which
    is flushed, fsynced and renamed onto ``path``; the folder is fsynced after the rename.

    On any exception (``ENOSPC``, ``KeyboardInterrupt``, a failing ``write``) the temporary file is
    removed, the previous ``path`` is left as it was and the exception propagates; a full disk as a
    :class:`DiskFullError` saying so in one line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temporary_path(path)
        try:
            # O_EXCL: never write into someone else's file; mode 0o666 under the umask, like a plain open().
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        full = _disk_full(exc)
        if full is None:
            raise
        free = ""
        code = errno.errorcode.get(full.errno or 0, "ENOSPC")
        with suppress(OSError):
            free = f", {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
        raise DiskFullError(
            f"{path}: no space left on device to write it ({code}{free}); the previous "
            "file is kept whole: free some space (a save needs room for a second copy beside it) and rerun "
            "the same command to resume"
        ) from exc
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy the file ``src`` to ``dst`` atomically (see :func:`atomic_write`); ``src`` is left in place."""
    with open(src, "rb") as source:
        atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 1 << 20))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files a killed save left in ``folder`` (``*.tmp``, hidden ones included); return
    them. Call it only when no save into ``folder`` can be under way (before training starts)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.endswith(TMP_SUFFIX) and entry.is_file():
            with suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _is_local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic saves in the destination folder (see the module doc).

    Give it to the trainer as ``L.Trainer(plugins=[AtomicCheckpointIO()])``: the strategy then routes every
    checkpoint save through :meth:`save_checkpoint`, the ``ModelCheckpoint`` callbacks' included (their
    removals go through :meth:`remove_checkpoint`; only ``save_last="link"``, not used here, writes links
    itself). Remote URLs (``s3://`` ...) keep Lightning's fsspec save, whose transaction is atomic on
    object stores.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` with :func:`torch.save`, atomically: the previous file stays whole
        until the new one is complete and fsynced."""
        if storage_options is not None:
            raise TypeError(
                f"`storage_options` in `Trainer.save_checkpoint` is not supported by {type(self).__name__}"
            )
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        text = str(path)
        atomic_torch_save(checkpoint, text.removeprefix("file://"))
