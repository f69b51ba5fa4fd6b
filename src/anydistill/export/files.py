"""Writing an export folder so that a killed export never leaves a graph that looks valid.

Everything is first written into a staging folder inside ``DIR`` (``DIR/.anydistill-export-<id>``,
same file system), checked there, and only then moved in with ``os.replace`` (atomic): external-data
files first, then the graphs, then ``export.json`` last (itself written to a temporary name and
replaced). A reader that finds ``export.json`` finds complete graphs. A failed check deletes the staging
folder, leaving ``DIR`` as it was.

``DIR`` may be new, empty, or an earlier anydistill export (replaced: its graphs are overwritten and
graph files of the old export that the new one does not have are removed). Any other non-empty
folder is refused. Leftover staging folders of a killed export count as ours.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from anydistill.atomic import write_text_atomic
from anydistill.errors import DataError
from anydistill.export.manifest import EXPORT_JSON, GRAPH_FILES, is_export_manifest

__all__ = ["STAGING_PREFIX", "Staging", "check_output_folder", "commit", "write_json_atomic"]

STAGING_PREFIX = ".anydistill-export-"
#: Every file name an export may own (graphs and their external data), whatever its task.
_OWNED = {name for files in GRAPH_FILES.values() for name in files.values()}
_OWNED |= {f"{name}.data" for name in _OWNED}


def _is_staging(path: Path) -> bool:
    return path.is_dir() and path.name.startswith(STAGING_PREFIX)


def _is_ours(out: Path) -> bool:
    """``out`` holds an export record, or a staging folder (an export was killed while committing)."""
    try:
        if is_export_manifest(json.loads((out / EXPORT_JSON).read_text())):
            return True
    except (OSError, ValueError):
        pass
    return any(_is_staging(p) for p in out.iterdir())


def check_output_folder(out: Path) -> None:
    """Refuse ``out`` before anything is loaded or written, unless it is new, empty or an export.

    Raises:
        DataError: ``out`` is a file, a non-empty folder that is not an anydistill export, or cannot
            be created / written.
    """
    if out.exists() and not out.is_dir():
        raise DataError(out, "output folder is an existing file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_ours(out):
        raise DataError(
            out, f"exists and is not an anydistill export (no {EXPORT_JSON}); give a new or empty folder"
        )
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(out, f"output folder cannot be created or written (in {parent})")


class Staging:
    """``with Staging(out) as stage:``: a fresh staging folder ``stage`` inside ``out`` (created with its
    parents); removed on leaving, whether :func:`commit` moved its files out or an error left them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> Path:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            for old in self.out.iterdir():  # staging folders of killed exports
                if _is_staging(old):
                    shutil.rmtree(old, ignore_errors=True)
            self.path.mkdir()
        except OSError as exc:
            raise DataError(
                self.out, f"output folder cannot be created or written: {exc.strerror or exc}"
            ) from None
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path``: written to a temporary file beside it, fsync'ed, then
    ``os.replace`` (:func:`anydistill.atomic.write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n", fsync=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def commit(stage: Path, out: Path, files: list[str], manifest: dict[str, Any]) -> None:
    """Move ``files`` (names in ``stage``) into ``out`` and write ``out/export.json`` = ``manifest``.

    The old record goes first (the folder is never a stale record over new graphs), external data
    before its graph, the new record last; owned files the new export lacks are removed.
    """
    for name in files:  # on disk before they are renamed into place
        _fsync(stage / name)
    (out / EXPORT_JSON).unlink(missing_ok=True)
    for name in sorted(files, key=lambda n: not n.endswith(".data")):  # .data files first
        os.replace(stage / name, out / name)
    for name in _OWNED - set(files):
        (out / name).unlink(missing_ok=True)
    write_json_atomic(out / EXPORT_JSON, manifest)
