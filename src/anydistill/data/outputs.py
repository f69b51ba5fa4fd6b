"""Output folders the commands write into: made, or refused in one line naming the path.

A path that cannot be a folder (an existing file, a file among its parents, no permission, a read-only
file system) is a :class:`~anydistill.errors.DataError` naming it, not an ``OSError`` traceback.
"""

from __future__ import annotations

from pathlib import Path

from anydistill.errors import DataError

__all__ = ["make_output_folder"]


def make_output_folder(folder: str | Path) -> Path:
    """Creates ``folder`` and its missing parents (an existing folder is fine).

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        DataError: ``folder`` is an existing file, or it cannot be created (a parent is a file, no
            permission, a read-only file system, ...); names ``folder`` and the reason.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(folder, "exists and is not a folder; choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(folder, f"cannot create the output folder: {e.strerror or e}") from None
    return folder
