"""Tar shards of pseudo-labels: the format, the sidecar index and a random-access reader.

On-disk format (one shard; WebDataset-compatible POSIX.1-2001 tar, written with the stdlib ``tarfile``)::

    shard-<rank>-<index:06d>.tar     members, grouped by sample key (the image's global index, 9 digits):
        <key>.disp.npy               float16 (H, W)      teacher disparity (depth teachers)
        <key>.logits.npy             float16 (K, H, W)   teacher logits (semantic teachers)
        <key>.feat.npy               float16 (C, h, w)   frozen-encoder features (optional)
        <key>.json                   {"id", "source", "sha256", "image_size": [H, W], "teacher"}
    shard-<rank>-<index:06d>.json    the sidecar index (below)

``<index>`` is the *global* shard number (image ``i`` of the sorted image list is in shard
``i // shard_size``); ``<rank>`` only records which process wrote it. Keys are numbers, not image ids,
because WebDataset splits a member name at the first dot of its base name and ids may contain dots.
Member headers carry no timestamps or owners (all 0), so the same arrays give the same bytes and the
same sha256 whoever writes them.

The sidecar index (JSON, written after the tar) makes reading random-access without scanning the tar:
the tar's byte size and sha256, and for every sample its id, source path, content hash, the image
file's size and mtime, and each member's ``offset``/``size`` (of the data, inside the tar), ``crc32``,
``shape`` and ``dtype``; plus the images of the shard that could not be read (with the reason).

Atomicity: the tar is written to ``<name>.tar.tmp``, fsync'ed and ``os.replace``d; then the index is
written the same way. A shard is complete only when both exist and the index's size/sha256 match the
tar, so a process killed at any moment leaves complete shards and, at worst, a stray ``.tmp`` (the
next writer of that shard overwrites it) or a tar without its index (redone).

The writer (atomic, as above) is :class:`~anydistill.cache.shard_writer.ShardWriter`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from anydistill.errors import DataError

__all__ = [
    "INDEX_VERSION",
    "MemberRef",
    "ShardIndex",
    "ShardReader",
    "atomic_write_json",
    "check_tar",
    "decode_npy",
    "encode_npy",
    "file_sha256",
    "list_shard_files",
    "shard_stem",
]

INDEX_VERSION = 1
_SHARD_NAME = re.compile(r"^shard-(\d+)-(\d{6,})\.(tar|json)$")
_HASH_CHUNK = 1 << 20


def shard_stem(rank: int, index: int) -> str:
    """``shard-<rank>-<index:06d>``: the shared stem of a shard's tar and its index."""
    return f"shard-{rank}-{index:06d}"


def list_shard_files(directory: Path) -> dict[int, list[Path]]:
    """Maps each global shard index to the index files (``shard-*-<index>.json``) found for it.

    Several ranks may have written the same index in runs with different world sizes; the caller picks
    the one that verifies.
    """
    found: dict[int, list[Path]] = {}
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        match = _SHARD_NAME.match(path.name)
        if match and match.group(3) == "json":
            found.setdefault(int(match.group(2)), []).append(path)
    for paths in found.values():
        paths.sort()
    return found


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def encode_npy(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def atomic_write_json(path: Path, data: Any, fsync: bool = True) -> None:
    """Write JSON to ``<path>.tmp``, fsync, then ``os.replace``: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class MemberRef:
    """Where a member's data lies inside its tar, and its checksum."""

    offset: int
    size: int
    crc32: int
    shape: tuple[int, ...] = ()
    dtype: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "size": self.size,
            "crc32": self.crc32,
            "shape": list(self.shape),
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberRef:
        return cls(
            int(d["offset"]), int(d["size"]), int(d["crc32"]), tuple(d.get("shape", ())), d.get("dtype", "")
        )


@dataclass
class ShardIndex:
    """The sidecar index of one shard (see the module docstring).

    ``samples``: one dict per cached image: ``key``, ``id``, ``source``, ``sha256``, ``bytes``,
    ``mtime_ns`` and ``members`` (target name -> :class:`MemberRef` dict). ``unreadable``: one dict per
    image of this shard that was not cached: ``id``, ``source``, ``reason``, ``bytes``, ``mtime_ns``.
    ``header``: what the writer was asked to record (teacher fingerprint, targets, ...).
    """

    name: str  # the tar's file name
    index: int
    rank: int
    tar_bytes: int
    sha256: str
    samples: list[dict[str, Any]]
    unreadable: list[dict[str, Any]]
    header: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where the index was read from / written to

    @property
    def ids(self) -> list[str]:
        """Every image id of this shard, cached or not, in key order."""
        rows = sorted(self.samples + self.unreadable, key=lambda r: r["key"])
        return [r["id"] for r in rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": INDEX_VERSION,
            "name": self.name,
            "index": self.index,
            "rank": self.rank,
            "tar_bytes": self.tar_bytes,
            "sha256": self.sha256,
            "header": self.header,
            "samples": self.samples,
            "unreadable": self.unreadable,
        }

    @classmethod
    def load(cls, path: Path) -> ShardIndex:
        """Reads an index file.

        Raises:
            DataError: unreadable, not JSON, or not a shard index of this version.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(path, f"unreadable shard index ({e}); rerun the pass to rewrite it") from None
        try:
            if data["version"] != INDEX_VERSION:
                raise DataError(
                    path, f"shard index version {data['version']}, this code reads {INDEX_VERSION}"
                )
            return cls(
                name=str(data["name"]),
                index=int(data["index"]),
                rank=int(data["rank"]),
                tar_bytes=int(data["tar_bytes"]),
                sha256=str(data["sha256"]),
                samples=list(data["samples"]),
                unreadable=list(data["unreadable"]),
                header=dict(data.get("header", {})),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(path, f"not a valid shard index (missing or bad field {e})") from None


class ShardReader:
    """Random access to one shard's members through its index (a seek and a read; no tar scan).

    Args:
        index: the shard's index.
        tar_path: the tar (default: next to the index).
    """

    def __init__(self, index: ShardIndex, tar_path: Path | None = None) -> None:
        self.index = index
        if tar_path is None:
            assert index.path is not None
            tar_path = index.path.with_name(index.name)
        self.tar_path = tar_path
        self._file: BinaryIO | None = None
        self._pid = -1

    def _handle(self) -> BinaryIO:
        # One open file per process (a handle does not survive pickling to a spawned worker).
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = open(self.tar_path, "rb")  # noqa: SIM115 -- kept open for random access
            except OSError as e:
                raise DataError(self.tar_path, f"cannot open shard: {e.strerror or e}") from None
            self._pid = os.getpid()
        return self._file

    def read_bytes(self, ref: MemberRef, what: str) -> bytes:
        """The data of one member, checked against its crc32.

        Raises:
            DataError: short read (truncated) or checksum mismatch (changed), naming the shard.
        """
        f = self._handle()
        data = os.pread(f.fileno(), ref.size, ref.offset)  # positional: safe across threads, no seek
        if len(data) != ref.size:
            raise DataError(self.tar_path, f"truncated: {what} ends past the end of the file; rerun the pass")
        if zlib.crc32(data) != ref.crc32:
            raise DataError(
                self.tar_path, f"checksum mismatch in {what}: the shard was changed; rerun the pass"
            )
        return data

    def read_array(self, ref: MemberRef, what: str) -> np.ndarray:
        try:
            return decode_npy(self.read_bytes(ref, what))
        except ValueError as e:
            raise DataError(self.tar_path, f"{what} is not a valid .npy array ({e})") from None

    def verify(self) -> None:
        """Checks the tar's size and sha256 against the index.

        Raises:
            DataError: missing, truncated/extended, or changed, naming the shard.
        """
        check_tar(self.tar_path, self.index, full=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1  # file handles do not cross process boundaries
        return state

    def iter_members(self) -> Iterator[tuple[str, int, int]]:
        """(name, data offset, size) of every member, read by scanning the tar with ``tarfile``."""
        with tarfile.open(self.tar_path, "r") as tar:
            for info in tar:
                yield info.name, info.offset_data, info.size


def check_tar(tar_path: Path, index: ShardIndex, full: bool) -> None:
    """Size check (always) and sha256 check (``full``) of a shard's tar against its index."""
    try:
        size = tar_path.stat().st_size
    except FileNotFoundError:
        raise DataError(tar_path, "shard missing (its index exists); rerun the pass to redo it") from None
    if size != index.tar_bytes:
        raise DataError(
            tar_path, f"truncated or changed: {size} bytes, its index says {index.tar_bytes}; rerun the pass"
        )
    if full and file_sha256(tar_path) != index.sha256:
        raise DataError(tar_path, "changed since it was written (sha256 mismatch); rerun the pass to redo it")
