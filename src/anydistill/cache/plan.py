"""The teacher pass's plan: which image goes into which shard, and which shards on disk can be kept.

Assignment. The images are listed like :class:`~anydistill.data.folder.UnlabeledImageFolder` lists them
(``DIR/images`` if it exists, else ``DIR``; recursive; id = relative path without extension) and
sorted by id. Image ``i`` belongs to shard ``i // shard_size``; of ``W`` processes, rank ``r`` writes
the shards ``s`` with ``s % W == r``.

Resume. Before writing, each rank checks its shards: a shard is kept when its tar and index exist,
the tar's size and sha256 match the index, the index was written by this teacher with these
settings, and it holds exactly the ids the shard should hold, with unchanged image files (same size
and mtime, else the same sha256). Every other shard is redone from scratch. A kill at any moment
therefore loses at most the shards being written; a rerun finishes with no duplicate and no missing
image, and a finished cache reruns as a no-op check. A folder holding another teacher's shards or
manifest is refused (never overwritten).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anydistill.cache.manifest import MANIFEST, read_manifest
from anydistill.cache.shards import ShardIndex, check_tar, file_sha256
from anydistill.data.folder import UnlabeledImageFolder
from anydistill.errors import ConfigError, DataError

#: What each teacher task stores: classifiers' logits are one ``(K,)`` vector per image.
#: What a box teacher's pass stores per image: float32 ``(N, 4)`` xyxy pixels, float32 ``(N,)``, int64 ``(N,)``.
DETECT_TARGETS = ("boxes", "scores", "labels")
#: A box-and-mask teacher (``gives_masks``) adds its instance masks as COCO RLE: the N RLE ``counts``
#: strings concatenated, uint8 ``(L,)``, and each one's length, int64 ``(N,)`` (the size is the image's).
MASK_TARGETS = ("mask_rle", "mask_rle_lengths")
_TARGET_FOR_TASK = {"depth": "disp", "semantic": "logits", "segmentation": "logits", "classify": "logits"}


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class _Settings:
    """The pass's settings, checked by :func:`~anydistill.cache.teacher_pass.run_teacher_pass`."""

    batch_size: int
    shard_size: int
    features: bool
    max_size: int | None
    num_workers: int
    progress: bool
    autocast: bool


@dataclass(frozen=True)
class _Item:
    """One image to process (picklable: it travels to DataLoader workers)."""

    index: int  # position in the sorted image list = the sample key
    id: str
    path: str
    source: str  # path relative to the image root, POSIX


@dataclass
class _Plan:
    """Every image of the pass, in order, cut into shards of ``shard_size``."""

    out: Path
    image_root: Path
    items: list[_Item]
    shard_size: int
    header: dict[str, Any]  # what each shard index records; the resume check compares it

    @property
    def n_shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def shard_items(self, s: int) -> list[_Item]:
        return self.items[s * self.shard_size : (s + 1) * self.shard_size]


def _key(index: int) -> str:
    """The sample key of image ``index`` in its shard (zero-padded, so keys sort like indexes)."""
    return f"{index:09d}"


def _make_plan(teacher: Any, images_dir: Path, out: Path, settings: _Settings, targets: list[str]) -> _Plan:
    """Lists the images under ``images_dir`` (see the module doc) into the plan of the pass into ``out``.

    Raises:
        DataError: no images (or no such folder).
    """
    folder = UnlabeledImageFolder(images_dir)
    root = folder.images_dir.resolve()
    items = [
        _Item(i, image_id, str(path), path.relative_to(folder.images_dir).as_posix())  # symlinks kept
        for i, (image_id, path) in enumerate(zip(folder.ids, folder.image_paths, strict=True))
    ]
    header = {
        "teacher": teacher.fingerprint,
        "targets": targets,
        "dtype": "float16",
        "max_size": settings.max_size,
        "shard_size": settings.shard_size,
    }
    return _Plan(out, root, items, settings.shard_size, header)


def _targets(teacher: Any, features: bool) -> list[str]:
    """The names stored per image: ``"disp"`` or ``"logits"`` from the teacher's task, then ``"feat"``; a box
    teacher's ``"boxes"``, ``"scores"``, ``"labels"``.

    Raises:
        ConfigError: an unknown task, or features asked of a teacher without a feature encoder.
    """
    task = getattr(teacher, "task", None)
    if task == "detect":  # a box teacher: variable-length boxes, scores and labels per image
        if features:
            raise ConfigError(
                "features were asked for but a box teacher (task detect) has no feature maps to cache"
            )
        return list(DETECT_TARGETS) + (list(MASK_TARGETS) if getattr(teacher, "gives_masks", False) else [])
    if task == "features":
        targets: list[str] = []
        features = True
    elif task in _TARGET_FOR_TASK:
        targets = [_TARGET_FOR_TASK[task]]
    else:
        raise ConfigError(f"teacher task must be depth, semantic, classify, detect or features, got {task!r}")
    if features:
        if not callable(getattr(teacher, "features", None)) or getattr(teacher, "feature_dim", 0) is None:
            raise ConfigError(f"features were asked for but {type(teacher).__name__} has no feature encoder")
        targets.append("feat")
    return targets


# --------------------------------------------------------------------------------------- resume
def _file_unchanged(path: Path, rec: dict[str, Any]) -> bool:
    """Whether the image file ``path`` is still the one an index row ``rec`` was made from."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != rec.get("bytes"):
        return False
    if stat.st_mtime_ns == rec.get("mtime_ns"):
        return True
    if "sha256" not in rec:  # an unreadable image that was touched: try it again
        return False
    try:
        return file_sha256(path) == rec["sha256"]
    except OSError:
        return False


def _index_matches(plan: _Plan, s: int, ix: ShardIndex, full: bool) -> bool:
    """Whether a shard on disk is exactly what shard ``s`` of this plan should be (see the module doc)."""
    if ix.index != s or any(ix.header.get(k) != v for k, v in plan.header.items()):
        return False
    rows = sorted(ix.samples + ix.unreadable, key=lambda r: r["key"])
    expected = plan.shard_items(s)
    if [(r["key"], r["id"], r["source"]) for r in rows] != [
        (_key(i.index), i.id, i.source) for i in expected
    ]:
        return False
    if not all(_file_unchanged(plan.image_root / r["source"], r) for r in rows):
        return False
    try:
        check_tar(ix.path.with_name(ix.name), ix, full=full)  # type: ignore[union-attr]
    except DataError:
        return False
    return True


def _find_complete(plan: _Plan, s: int, candidates: list[Path], full: bool) -> ShardIndex | None:
    """The complete shard ``s`` among ``candidates`` (index files), if any.

    Raises:
        DataError: a shard of another teacher (the folder is someone else's cache).
    """
    found: ShardIndex | None = None
    for path in candidates:
        try:
            ix = ShardIndex.load(path)
        except DataError:
            continue  # a damaged index: the shard is redone
        theirs = ix.header.get("teacher")
        if theirs != plan.header["teacher"]:
            raise DataError(
                plan.out,
                f"holds shards of another teacher ({path.name}: fingerprint {theirs}, this teacher "
                f"{plan.header['teacher']}); write to another folder or delete this one",
            )
        if found is None and _index_matches(plan, s, ix, full):
            found = ix
    return found


def _remove_shard(index_path: Path) -> None:
    """Deletes a shard: its index file and its tar."""
    for path in (index_path, index_path.with_suffix(".tar")):
        path.unlink(missing_ok=True)


def _check_existing_manifest(plan: _Plan) -> None:
    """Refuses a folder whose ``manifest.json`` is another teacher's; an unreadable one is rewritten later.

    Raises:
        DataError: the manifest's teacher fingerprint is not this teacher's.
    """
    if not (plan.out / MANIFEST).is_file():
        return
    try:
        manifest = read_manifest(plan.out)
    except DataError:
        return  # unreadable: rewritten at the end
    if manifest.teacher_fingerprint != plan.header["teacher"]:
        raise DataError(
            plan.out,
            f"is a cache of another teacher (fingerprint {manifest.teacher_fingerprint}, this teacher "
            f"{plan.header['teacher']}); write to another folder or delete this one",
        )
