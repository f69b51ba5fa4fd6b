"""The atomic writer of one tar shard and its sidecar index.

Format and atomicity: :mod:`anydistill.cache.shards`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from anydistill.cache.shards import MemberRef, ShardIndex, atomic_write_json, encode_npy, shard_stem

__all__ = ["ShardWriter"]

_BLOCK = tarfile.BLOCKSIZE  # 512: tar pads every member's data to a multiple of this


class _HashingFile:
    """A write-only file wrapper that hashes what goes through it (tarfile needs ``write``/``tell``)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._pos = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self.sha.update(data)
        self._pos += len(data)
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._f.flush()


class ShardWriter:
    """Writes one shard atomically (see the module docstring).

    Use as a context manager: leaving it with an exception removes the ``.tmp`` and writes nothing
    else; :meth:`close` (called on a normal exit) publishes the tar, then its index.

    Args:
        directory: the cache folder.
        index: the global shard number.
        rank: the writing process's rank (only recorded in the file name).
        header: JSON-able facts to record in the index (teacher fingerprint, targets, ...).
    """

    def __init__(self, directory: Path, index: int, rank: int, header: Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        self.index = index
        self.rank = rank
        self.header = dict(header)
        stem = shard_stem(rank, index)
        self.tar_path = self.directory / f"{stem}.tar"
        self.index_path = self.directory / f"{stem}.json"
        self.tmp_path = self.directory / f"{stem}.tar.tmp"
        self._file: BinaryIO | None = open(self.tmp_path, "wb")  # noqa: SIM115 -- closed in close()/abort()
        self._hashing = _HashingFile(self._file)
        self._tar: tarfile.TarFile | None = tarfile.open(
            fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT
        )  # type: ignore[call-overload]
        self.samples: list[dict[str, Any]] = []
        self.unreadable: list[dict[str, Any]] = []
        self.result: ShardIndex | None = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _add_member(self, name: str, data: bytes) -> tuple[int, int]:
        """Appends one member; returns the (offset, size) of its data inside the tar."""
        assert self._tar is not None, "shard already closed"
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        # After addfile the tar's offset is past the data and its padding to a 512-byte block.
        padded = -(-len(data) // _BLOCK) * _BLOCK
        return self._tar.offset - padded, len(data)

    def add_sample(
        self, key: str, record: Mapping[str, Any], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        """Adds ``<key>.<name>.npy`` for each array and ``<key>.json`` holding ``meta``.

        Args:
            key: the sample key (digits only).
            record: what the index keeps for the sample (id, source, sha256, bytes, mtime_ns).
            arrays: target name (``disp``, ``logits``, ``feat``) -> array.
            meta: the JSON member's content.
        """
        members: dict[str, Any] = {}
        for name, array in arrays.items():
            data = encode_npy(array)
            offset, size = self._add_member(f"{key}.{name}.npy", data)
            members[name] = MemberRef(
                offset, size, zlib.crc32(data), tuple(array.shape), str(array.dtype)
            ).to_dict()
        data = json.dumps(dict(meta), sort_keys=True).encode()
        offset, size = self._add_member(f"{key}.json", data)
        members["json"] = MemberRef(offset, size, zlib.crc32(data)).to_dict()
        self.samples.append({**record, "key": key, "members": members})

    def add_unreadable(self, key: str, record: Mapping[str, Any]) -> None:
        """Records an image of this shard that was not cached (``record`` holds its ``reason``)."""
        self.unreadable.append({**record, "key": key})

    def close(self) -> ShardIndex:
        """Publishes the tar (fsync + replace), then its index. Returns the index."""
        if self.result is not None:
            return self.result
        assert self._tar is not None and self._file is not None
        try:
            self._tar.close()  # writes the end-of-archive blocks
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            tar_bytes = self._hashing.tell()
            os.replace(self.tmp_path, self.tar_path)
        except BaseException:
            self.abort()
            raise
        self._tar = self._file = None
        self.header["created"] = round(time.time(), 3)
        result = ShardIndex(
            name=self.tar_path.name,
            index=self.index,
            rank=self.rank,
            tar_bytes=tar_bytes,
            sha256=self._hashing.sha.hexdigest(),
            samples=sorted(self.samples, key=lambda r: r["key"]),
            unreadable=sorted(self.unreadable, key=lambda r: r["key"]),
            header=self.header,
            path=self.index_path,
        )
        atomic_write_json(self.index_path, result.to_dict())
        self.result = result
        return result

    def abort(self) -> None:
        """Drops the partial shard (the ``.tmp``); complete files from earlier runs are left alone."""
        for closer in (self._tar, self._file):
            if closer is not None:
                try:
                    closer.close()
                except OSError:
                    pass  # e.g. disk full while flushing: the file is being removed anyway
        self._tar = self._file = None
        self.tmp_path.unlink(missing_ok=True)
