"""The manifest of a finished pseudo-label cache, and opening a cache with every check a reader needs.

``manifest.json`` is written atomically by rank 0 once every rank has finished its shards, so its
presence means "finished". It records::

    format, version            "anydistill-pseudo-label-cache", 1
    teacher                    {"fingerprint", "spec", "task"}
    image_root                 the (absolute) folder the ids are relative to
    targets, dtype             e.g. ["disp", "feat"], "float16"
    max_size, shard_size       the pass's settings
    classes                    the teacher's class names (label order), when it has them
    num_images, count          images listed / images cached
    shards                     [{"name", "index", "index_file", "count", "bytes", "sha256"}]
    unreadable                 [{"id", "source", "reason"}]: never silently dropped
    timing                     {"seconds", "written", "images_per_second", "world_size"}

The id -> (shard, member offsets) table lives in the shards' sidecar indexes (see
:mod:`anydistill.cache.shards`), read when a cache is opened.

Checks when opening (:func:`open_cache`): no manifest -> "not a finished cache"; another teacher's
fingerprint -> both fingerprints named; a shard missing, truncated or resized -> that shard named
(``verify=True`` also compares every shard's sha256); on each read, the member's crc32.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anydistill.cache.shards import MemberRef, ShardIndex, ShardReader, check_tar
from anydistill.errors import DataError

__all__ = ["FORMAT", "MANIFEST", "VERSION", "Manifest", "PseudoLabelCache", "ShardEntry", "open_cache"]

FORMAT = "anydistill-pseudo-label-cache"
VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class ShardEntry:
    """One shard as the manifest lists it."""

    name: str
    index: int
    index_file: str
    count: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """The table of contents of a finished cache (see the module docstring)."""

    teacher_fingerprint: str
    teacher_spec: str | None
    task: str
    image_root: str
    targets: list[str]
    shard_size: int
    num_images: int
    count: int
    shards: list[ShardEntry]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    max_size: int | None = None
    classes: list[str] | None = None
    dtype: str = "float16"
    format: str = FORMAT
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        teacher = {
            "fingerprint": d.pop("teacher_fingerprint"),
            "spec": d.pop("teacher_spec"),
            "task": d.pop("task"),
        }
        head = {"format": d.pop("format"), "version": d.pop("version"), "teacher": teacher}
        return {**head, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        teacher = d["teacher"]
        return cls(
            teacher_fingerprint=str(teacher["fingerprint"]),
            teacher_spec=teacher.get("spec"),
            task=str(teacher["task"]),
            image_root=str(d["image_root"]),
            targets=list(d["targets"]),
            shard_size=int(d["shard_size"]),
            num_images=int(d["num_images"]),
            count=int(d["count"]),
            shards=[ShardEntry(**s) for s in d["shards"]],
            unreadable=list(d.get("unreadable", [])),
            timing=dict(d.get("timing", {})),
            max_size=d.get("max_size"),
            classes=d.get("classes"),
            dtype=str(d.get("dtype", "float16")),
            format=str(d["format"]),
            version=int(d["version"]),
        )

    def summary(self) -> str:
        """A few lines for people: what was cached, what could not be, how fast."""
        lines = [
            f"cached {self.count} of {self.num_images} image(s) in {len(self.shards)} shard(s) "
            f"(targets {', '.join(self.targets)}; teacher {self.teacher_fingerprint[:12]})"
        ]
        if self.timing.get("written"):
            lines.append(
                f"this run: {int(self.timing['written'])} image(s) in {self.timing.get('seconds', 0.0):.1f} s "
                f"({self.timing.get('images_per_second', 0.0):.1f} img/s, "
                f"{int(self.timing.get('world_size', 1))} process(es))"
            )
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} image(s) not cached:")
            lines += [f"  {u['source']}: {u['reason']}" for u in self.unreadable]
        return "\n".join(lines)


def read_manifest(directory: str | Path) -> Manifest:
    """Reads ``<directory>/manifest.json``.

    Raises:
        DataError: no folder, no manifest (an unfinished pass), unreadable or of another format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "no such pseudo-label cache folder")
    path = directory / MANIFEST
    if not path.is_file():
        raise DataError(
            directory,
            f"not a finished pseudo-label cache (no {MANIFEST}); rerun the teacher pass to finish it",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"unreadable manifest ({e}); rerun the teacher pass to rewrite it") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(path, f"not a pseudo-label cache manifest (format is not {FORMAT!r})")
    if data.get("version") != VERSION:
        raise DataError(path, f"cache format version {data.get('version')}; this anydistill reads {VERSION}")
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"malformed manifest (missing or bad field {e})") from None


@dataclass(frozen=True)
class _Location:
    shard: int  # position in PseudoLabelCache.readers
    sample: dict[str, Any]


class PseudoLabelCache:
    """A finished cache opened for random access by image id (build it with :func:`open_cache`).

    Attributes:
        directory: the cache folder.
        manifest: its :class:`Manifest`.
        ids: the cached image ids, sorted.
    """

    def __init__(self, directory: Path, manifest: Manifest, indexes: list[ShardIndex]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.readers = [ShardReader(ix, directory / ix.name) for ix in indexes]
        self._where: dict[str, _Location] = {}
        for pos, ix in enumerate(indexes):
            for sample in ix.samples:
                self._where[sample["id"]] = _Location(pos, sample)
        self.ids = sorted(self._where)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._where

    def record(self, image_id: str) -> dict[str, Any]:
        """What the index knows about an image: ``id``, ``source``, ``sha256``, ``bytes``, ``members``."""
        try:
            return self._where[image_id].sample
        except KeyError:
            raise KeyError(f"{image_id!r} is not in the cache {self.directory}") from None

    def read(self, image_id: str, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """The cached arrays of one image, e.g. ``{"disp": float16 (H, W), "feat": float16 (C, h, w)}``.

        Args:
            image_id: the image's id.
            names: read only these targets (default: all).

        Raises:
            KeyError: the id is not cached.
            DataError: the shard is truncated or the member changed (crc32), naming the shard.
        """
        where = self._where.get(image_id)
        if where is None:
            raise KeyError(f"{image_id!r} is not in the cache {self.directory}")
        reader = self.readers[where.shard]
        out: dict[str, np.ndarray] = {}
        for name, ref in where.sample["members"].items():
            if name != "json" and (names is None or name in names):
                out[name] = reader.read_array(MemberRef.from_dict(ref), f"{name} of {image_id!r}")
        return out

    def verify(self) -> None:
        """Compares every shard's sha256 with the manifest (reads the whole cache once)."""
        for reader in self.readers:
            reader.verify()

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


def open_cache(
    path: str | Path, teacher_fingerprint: str | None = None, verify: bool = False
) -> PseudoLabelCache:
    """Opens a finished cache after checking that it is whole and (optionally) whose it is.

    Args:
        path: the cache folder (``--out`` of the pass).
        teacher_fingerprint: when given, the cache must have been made by this teacher.
        verify: also compare each shard's sha256 (reads every shard once); without it, sizes are
            checked now and each member's crc32 when it is read.

    Raises:
        DataError: unfinished (no manifest), another teacher, a shard or its index missing, truncated
            or changed -- each message names the file and says what to do.
    """
    directory = Path(path)
    manifest = read_manifest(directory)
    if teacher_fingerprint is not None and teacher_fingerprint != manifest.teacher_fingerprint:
        raise DataError(
            directory,
            f"made by another teacher: its fingerprint is {manifest.teacher_fingerprint}, the teacher given "
            f"has {teacher_fingerprint}; rerun the pass with this teacher into another folder",
        )
    indexes: list[ShardIndex] = []
    for entry in manifest.shards:
        index_path = directory / entry.index_file
        if not index_path.is_file():
            raise DataError(index_path, "shard index missing; rerun the teacher pass to redo this shard")
        ix = ShardIndex.load(index_path)
        if ix.sha256 != entry.sha256 or ix.tar_bytes != entry.bytes or ix.name != entry.name:
            raise DataError(index_path, "shard index does not match the manifest; rerun the teacher pass")
        check_tar(directory / entry.name, ix, full=verify)
        indexes.append(ix)
    return PseudoLabelCache(directory, manifest, indexes)
