"""Datasets over the folder format users bring (and toyworld writes).

Layout (``<rel>`` is a relative path without extension and may contain sub-folders)::

    root/images/<rel>.<png|jpg|jpeg|webp|tif|tiff|bmp>
    root/depth/<rel>.png (16-bit, metres = value / depth_scale) | <rel>.npy | <rel>.exr
    root/semantic/<rel>.png (index or palette PNG)
    root/instances/<rel>.png (16-bit ids, 0 = none)
    root/classes.json, root/meta.json ({"depth_scale": ...}), root/cameras.json (optional)

What is cheap is checked when the dataset is built (folder exists, images found, each image has its
label, ``classes.json``/``meta.json``/``cameras.json`` well formed); what needs decoding is checked in
``__getitem__`` (file readable, image and label of the same size, class ids in the table) or for the
whole set at once by :meth:`FolderDataset.scan`. Nothing is dropped silently: every excluded sample is
in :attr:`FolderDataset.skipped` with its reason, and :meth:`FolderDataset.report` summarises them.

Corrupt files during training (``on_bad_image="skip"``): ``__getitem__`` replaces an unreadable sample
by the next readable one (index + 1, + 2, ...; deterministic, so the epoch keeps its length and batch
sizes stay constant) and logs a warning naming the file. Inside DataLoader worker processes the skip
list lives in the worker's copy of the dataset, so the main process only sees it through the log;
call :meth:`FolderDataset.scan` before training to find every bad file up front and get a complete
:attr:`skipped` list.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from anydistill.data.io import (
    IMAGE_EXTENSIONS,
    ClassTable,
    exif_orientation,
    read_classes,
    read_depth,
    read_image,
    read_mask,
)
from anydistill.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["LABEL_DIRS", "LABEL_EXTENSIONS", "FolderDataset", "SkippedSample", "UnlabeledImageFolder"]

Task = Literal["depth", "semantic", "instance", "image"]
Policy = Literal["error", "skip"]

#: Sub-folder of ``root`` that holds each task's labels.
LABEL_DIRS: dict[str, str] = {"depth": "depth", "semantic": "semantic", "instance": "instances"}
#: Label file extensions each task accepts (lower case).
LABEL_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "depth": (".png", ".npy", ".exr", ".tif", ".tiff"),
    "semantic": (".png", ".npy"),
    "instance": (".png", ".npy"),
}
OUTPUT_IGNORE = 255  # the ignore value of every sample this module returns (project convention)
_MAX_REPLACEMENT_TRIES = 64
# Image formats users have that the folder convention does not list: warned about, not read.
_OTHER_IMAGE_EXTENSIONS = frozenset(
    {".gif", ".heic", ".heif", ".avif", ".jfif", ".jp2", ".ppm", ".pgm", ".pnm"}
)
_EXAMPLES = 5  # how many paths an error message or report lists before "and N more"


@dataclass(frozen=True)
class SkippedSample:
    """A sample excluded from the dataset, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class _Entry:
    id: str  # relative path without extension, POSIX separators
    image: Path
    label: Path | None


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:_EXAMPLES])
    return shown + (f" and {len(items) - _EXAMPLES} more" if len(items) > _EXAMPLES else "")


def _is_hidden(rel: Path) -> bool:
    # ".DS_Store", ".ipynb_checkpoints/", and macOS "._name.jpg" resource forks (not images).
    return any(part.startswith(".") for part in rel.parts)


def _index_files(folder: Path, extensions: tuple[str, ...]) -> tuple[dict[str, list[Path]], Counter[str]]:
    """Maps ``<rel>`` (relative path without extension) to the files under ``folder`` with those
    extensions (one recursive walk instead of one ``stat`` per image per candidate extension), and
    counts the extensions of the other files (for error hints)."""
    found: dict[str, list[Path]] = {}
    others: Counter[str] = Counter()
    if not folder.is_dir():
        return found, others
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if _is_hidden(rel) or not path.is_file():
            continue
        ext = path.suffix.lower()
        if ext in extensions:
            found.setdefault(rel.with_suffix("").as_posix(), []).append(path)
        else:
            others[ext or "(no extension)"] += 1
    return found, others


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object")
    return data


class FolderDataset(Dataset):
    """Images and (optionally) one kind of label from a folder; returns raw numpy samples.

    A sample (before ``transform``) is a dict: ``"image"`` uint8 ``(H, W, 3)``; for task ``"depth"``
    ``"depth"`` float32 ``(H, W)`` metres (0 = invalid: NaN/inf/negative in the file become 0); for
    ``"semantic"`` ``"semantic"`` int64 ``(H, W)`` (255 = ignore, whatever value the files use);
    for ``"instance"`` ``"instance"`` int32 ``(H, W)`` (0 = none); ``"K"`` float32 ``(3, 3)`` when
    ``cameras.json`` exists; ``"id"`` the relative path without extension.

    Args:
        root: dataset folder.
        task: which label to load; ``"image"`` loads images only (``root/images`` if it exists, else
            ``root`` itself).
        transform: applied to the raw sample dict (e.g. :func:`anydistill.data.transforms.train_transforms`).
        depth_scale: integer depth units per metre; default ``meta.json``'s ``depth_scale``, else 1000.
        on_missing_label: ``"error"`` raises naming the image and the expected label path(s);
            ``"skip"`` excludes the image and records it in :attr:`skipped`.
        on_bad_image: what to do with an unreadable (empty, truncated, corrupt) image or label file:
            ``"error"`` raises; ``"skip"`` replaces it (see the module docstring) and records it.
        on_bad_class: semantic ids outside the class table: ``"error"`` raises naming the file and the
            ids; ``"ignore"`` maps them to 255.
        ignore_index: the ignore value *in the label files*; default ``classes.json``'s
            ``ignore_index``, else 255. Returned samples always use 255.
        num_classes: valid semantic ids are ``0..num_classes-1`` when there is no ``classes.json``;
            with one, must agree with it. Without either, ids are not checked.
        images_dir: image folder (absolute, or relative to ``root``) instead of ``root/images``.
        color_to_id: for colour (RGB) semantic masks, ``(r, g, b) -> id``; ``"classes"`` takes it from
            the colours in ``classes.json``.
    """

    def __init__(
        self,
        root: str | Path,
        task: Task,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        depth_scale: float | None = None,
        on_missing_label: Policy = "error",
        on_bad_image: Policy = "error",
        on_bad_class: Literal["error", "ignore"] = "error",
        ignore_index: int | None = None,
        num_classes: int | None = None,
        images_dir: str | Path | None = None,
        color_to_id: dict[tuple[int, int, int], int] | Literal["classes"] | None = None,
    ) -> None:
        _check_choice("task", task, ("depth", "semantic", "instance", "image"))
        _check_choice("on_missing_label", on_missing_label, ("error", "skip"))
        _check_choice("on_bad_image", on_bad_image, ("error", "skip"))
        _check_choice("on_bad_class", on_bad_class, ("error", "ignore"))
        self.root = Path(root)
        self.task = task
        self.transform = transform
        self.on_missing_label = on_missing_label
        self.on_bad_image = on_bad_image
        self.on_bad_class = on_bad_class
        self._skipped: list[SkippedSample] = []
        self._bad_indices: set[int] = set()
        self._all_invalid_depth: set[str] = set()
        self.ignored_extensions: Counter[str] = Counter()
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder not found")

        self.images_dir = self._resolve_images_dir(images_dir)
        self.depth_scale = self._resolve_depth_scale(depth_scale)
        self.classes: ClassTable | None = read_classes(self.root)
        self.ignore_index = self._resolve_ignore_index(ignore_index)
        self.num_classes, self._valid_ids = self._resolve_class_ids(num_classes)
        self._color_to_id = self._resolve_color_map(color_to_id)

        images = self._find_images()
        self._cameras = self._read_cameras([rel for rel, _ in images])
        self._entries, self.orphan_labels = self._match_labels(images)
        if not self._entries:
            raise DataError(self.images_dir, f"every image was skipped; see report():\n{self.report()}")

    # ----------------------------------------------------------------- construction helpers
    def _resolve_images_dir(self, images_dir: str | Path | None) -> Path:
        if images_dir is not None:
            folder = Path(images_dir)
            folder = folder if folder.is_absolute() else self.root / folder
        elif (self.root / "images").is_dir() or self.task != "image":
            folder = self.root / "images"
        else:
            folder = self.root  # an unlabeled folder of images
        if not folder.is_dir():
            raise DataError(folder, "image folder not found (expected root/images/<rel>.<ext>)")
        return folder

    def _resolve_depth_scale(self, depth_scale: float | None) -> float:
        meta_path = self.root / "meta.json"
        if depth_scale is None and meta_path.is_file():
            meta = _read_json_object(meta_path)
            depth_scale = meta.get("depth_scale", 1000.0)
            where: Path | None = meta_path
        else:
            where = None
        if depth_scale is None:
            depth_scale = 1000.0
        ok = isinstance(depth_scale, int | float) and not isinstance(depth_scale, bool)
        if not (ok and math.isfinite(depth_scale) and depth_scale > 0):
            message = f"depth_scale must be a positive number, got {depth_scale!r}"
            raise DataError(where, message) if where else ConfigError(message)
        return float(depth_scale)

    def _resolve_ignore_index(self, ignore_index: int | None) -> int:
        if ignore_index is None:
            ignore_index = self.classes.ignore_index if self.classes is not None else OUTPUT_IGNORE
        if self.classes is not None and ignore_index in self.classes.ids:
            raise ConfigError(f"ignore_index {ignore_index} is a class id in {self.root / 'classes.json'}")
        return int(ignore_index)

    def _resolve_class_ids(self, num_classes: int | None) -> tuple[int | None, np.ndarray | None]:
        """The class count and a boolean lookup table ``valid[id]`` (None = ids are not checked)."""
        if self.classes is not None:
            if num_classes is not None and num_classes != self.classes.num_classes:
                raise ConfigError(
                    f"num_classes={num_classes} but {self.root / 'classes.json'} defines ids up to "
                    f"{self.classes.num_classes - 1} (num_classes {self.classes.num_classes})"
                )
            ids = list(self.classes.ids)
            num_classes = self.classes.num_classes
        elif num_classes is not None:
            if num_classes < 1:
                raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
            ids = list(range(num_classes))
        else:
            return None, None
        if OUTPUT_IGNORE in ids and self.ignore_index != OUTPUT_IGNORE:
            raise ConfigError(
                f"class id {OUTPUT_IGNORE} collides with the ignore value {OUTPUT_IGNORE} that samples use"
            )
        valid = np.zeros(max(ids) + 1, dtype=bool)
        valid[ids] = True
        return num_classes, valid

    def _resolve_color_map(
        self, color_to_id: dict[tuple[int, int, int], int] | Literal["classes"] | None
    ) -> dict[tuple[int, int, int], int] | None:
        if color_to_id != "classes":
            return color_to_id
        if self.classes is None or not self.classes.color_to_id():
            raise ConfigError('color_to_id="classes" needs colours in classes.json')
        return self.classes.color_to_id()

    def _find_images(self) -> list[tuple[str, Path]]:
        found, others = _index_files(self.images_dir, IMAGE_EXTENSIONS)
        if self.images_dir == self.root:  # unlabeled root: label folders are not images
            skip = tuple(f"{d}/" for d in LABEL_DIRS.values())
            found = {rel: paths for rel, paths in found.items() if not rel.startswith(skip)}
        if not found:
            hint = ""
            if others:
                top = ", ".join(f"{ext} ({n})" for ext, n in others.most_common(5))
                hint = f"; found other files: {top}"
            raise DataError(
                self.images_dir,
                f"no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)}, any case){hint}",
            )
        self.ignored_extensions = others
        unsupported = {ext: n for ext, n in others.items() if ext in _OTHER_IMAGE_EXTENSIONS}
        if unsupported:
            logger.warning(
                "%s: ignored image files in unsupported formats %s (supported: %s); convert them to png/jpg",
                self.images_dir,
                unsupported,
                ", ".join(IMAGE_EXTENSIONS),
            )
        clashes = [sorted(str(p) for p in paths) for paths in found.values() if len(paths) > 1]
        if clashes:
            raise DataError(
                self.images_dir,
                "images that differ only by extension cannot be matched to labels: "
                + "; ".join(" vs ".join(c) for c in clashes[:_EXAMPLES]),
            )
        return [(rel, found[rel][0]) for rel in sorted(found)]

    def _read_cameras(self, rels: list[str]) -> dict[str, np.ndarray] | None:
        path = self.root / "cameras.json"
        if not path.is_file():
            return None
        data = _read_json_object(path)
        cameras: dict[str, np.ndarray] = {}
        for rel, value in data.items():
            try:
                k = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError):
                k = np.zeros(0)
            if k.shape != (3, 3) or not np.isfinite(k).all():
                raise DataError(path, f'"{rel}": expected a 3x3 matrix [[fx,0,cx],[0,fy,cy],[0,0,1]]')
            cameras[rel] = k
        missing = [rel for rel in rels if rel not in cameras]
        if missing:
            raise DataError(path, f"no intrinsics for {len(missing)} image(s): {_examples(missing)}")
        return cameras

    def _match_labels(self, images: list[tuple[str, Path]]) -> tuple[list[_Entry], list[Path]]:
        if self.task == "image":
            return [_Entry(rel, path, None) for rel, path in images], []
        label_dir = self.root / LABEL_DIRS[self.task]
        extensions = LABEL_EXTENSIONS[self.task]
        labels, _ = _index_files(label_dir, extensions)
        entries: list[_Entry] = []
        missing: list[tuple[str, Path]] = []
        for rel, image in images:
            candidates = labels.get(rel, [])
            if len(candidates) > 1:
                raise DataError(image, f"several labels match: {', '.join(sorted(map(str, candidates)))}")
            if candidates:
                entries.append(_Entry(rel, image, candidates[0]))
            else:
                missing.append((rel, image))
        image_rels = {rel for rel, _ in images}
        orphans = sorted(p for rel, paths in labels.items() if rel not in image_rels for p in paths)
        if missing:
            expected = partial(_expected_label, label_dir, extensions)
            if self.on_missing_label == "error":
                rel, image = missing[0]
                more = f" ({len(missing) - 1} other image(s) lack labels too)" if len(missing) > 1 else ""
                hint = ""
                if not label_dir.is_dir():
                    hint = f"; the label folder {label_dir} does not exist"
                elif orphans:
                    hint = f"; {len(orphans)} label file(s) match no image, e.g. {orphans[0]}"
                raise DataError(image, f"no {self.task} label; expected {expected(rel)}{more}{hint}")
            for rel, image in missing:
                self._skipped.append(SkippedSample(image, f"missing {self.task} label ({expected(rel)})"))
            logger.warning(
                "%s: skipped %d image(s) without a %s label; see report()", self.root, len(missing), self.task
            )
        return entries, orphans

    # ----------------------------------------------------------------------- public API
    @property
    def skipped(self) -> list[SkippedSample]:
        """Every sample excluded so far (missing labels, and bad files found by scan/__getitem__)."""
        return list(self._skipped)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self._entries]

    @property
    def image_paths(self) -> list[Path]:
        return [e.image for e in self._entries]

    @property
    def label_paths(self) -> list[Path | None]:
        return [e.label for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        if self.on_bad_image == "error":
            sample = self.load_raw(index)
        else:
            sample = self._load_or_replace(index)
        return self.transform(sample) if self.transform is not None else sample

    def load_raw(self, index: int) -> dict[str, Any]:
        """The raw (untransformed) sample ``index``; raises ``DataError`` for any bad file."""
        return self._check(index, *self._read(index))

    def scan(self) -> list[SkippedSample]:
        """Decodes every sample once and checks it like ``__getitem__`` would.

        Unreadable files are excluded and recorded when ``on_bad_image="skip"``; every other problem
        (unreadable files with ``"error"``, image/label size mismatches, ids outside the class table
        with ``on_bad_class="error"``) is collected and raised as one ``DataError`` listing them all.
        Depth maps with no valid pixel are counted in :meth:`report`.

        Returns:
            the samples this scan excluded.
        """
        keep: list[_Entry] = []
        newly: list[SkippedSample] = []
        problems: list[str] = []
        for index, entry in enumerate(self._entries):
            try:
                files = self._read(index)
            except DataError as e:
                if self.on_bad_image == "skip":
                    newly.append(SkippedSample(entry.image, f"unreadable: {e}"))
                else:
                    problems.append(str(e))
                continue
            try:
                self._check(index, *files)
            except DataError as e:
                problems.append(str(e))
            keep.append(entry)
        if problems:
            listing = "\n  ".join(problems[:20]) + (
                f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            )
            raise DataError(self.images_dir, f"{len(problems)} problem(s) found:\n  {listing}")
        if not keep:
            raise DataError(self.images_dir, "no readable sample left after scan()")
        self._entries = keep
        self._bad_indices.clear()
        self._skipped.extend(newly)
        if newly:
            logger.warning("%s: scan() skipped %d unreadable sample(s); see report()", self.root, len(newly))
        return newly

    def report(self) -> str:
        """A human-readable summary: sample count, skipped samples by reason, orphan label files."""
        lines = [f"{type(self).__name__}(root={self.root}, task={self.task!r}): {len(self)} sample(s)"]
        if self._skipped:
            lines.append(f"skipped {len(self._skipped)}:")
            for s in self._skipped:
                lines.append(f"  {s.path}: {s.reason}")
        if self.ignored_extensions:
            shown = ", ".join(f"{ext} ({n})" for ext, n in self.ignored_extensions.most_common(5))
            lines.append(f"files under {self.images_dir} ignored by extension: {shown}")
        if self.orphan_labels:
            shown = _examples([str(p) for p in self.orphan_labels])
            lines.append(f"{len(self.orphan_labels)} label file(s) match no image: {shown}")
        if self._all_invalid_depth:
            lines.append(
                f"{len(self._all_invalid_depth)} depth map(s) have no valid pixel: "
                + _examples(sorted(self._all_invalid_depth))
            )
        return "\n".join(lines)

    # ---------------------------------------------------------------------------- loading
    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Reads the image and label files (DataError here = an unreadable file)."""
        entry = self._entries[index]
        image = read_image(entry.image)
        if entry.label is None:
            return image, None
        if self.task == "depth":
            return image, read_depth(entry.label, self.depth_scale)
        return image, read_mask(entry.label, color_to_id=self._color_to_id)

    def _check(self, index: int, image: np.ndarray, label: np.ndarray | None) -> dict[str, Any]:
        """Checks an image/label pair for consistency and builds the raw sample."""
        entry = self._entries[index]
        sample: dict[str, Any] = {"image": image}
        if label is not None:
            assert entry.label is not None
            if label.shape[:2] != image.shape[:2]:
                raise DataError(entry.label, self._size_mismatch(entry, image.shape[:2], label.shape[:2]))
            if self.task == "depth":
                if not (label > 0).any() and entry.id not in self._all_invalid_depth:
                    self._all_invalid_depth.add(entry.id)
                    logger.warning("%s: depth map has no valid pixel (all masked)", entry.label)
                sample["depth"] = label
            elif self.task == "semantic":
                sample["semantic"] = self._check_semantic(label, entry.label)
            else:
                if label.min(initial=0) < 0 or label.max(initial=0) > np.iinfo(np.int32).max:
                    raise DataError(entry.label, "instance ids must be in [0, 2**31 - 1]")
                sample["instance"] = label.astype(np.int32)
        if self._cameras is not None:
            sample["K"] = self._cameras[entry.id].copy()
        sample["id"] = entry.id
        return sample

    def _size_mismatch(self, entry: _Entry, image_hw: tuple[int, ...], label_hw: tuple[int, ...]) -> str:
        message = (
            f"size mismatch: image {entry.image} is {image_hw[0]}x{image_hw[1]} (HxW) but label "
            f"{entry.label} is {label_hw[0]}x{label_hw[1]}"
        )
        if tuple(label_hw) == tuple(image_hw[::-1]):
            orientation = exif_orientation(entry.image)
            if orientation != 1:
                message += (
                    f"; the image was rotated by its EXIF orientation tag ({orientation}), the label "
                    "may have been saved un-rotated"
                )
        return message

    def _check_semantic(self, mask: np.ndarray, path: Path) -> np.ndarray:
        ignore = mask == self.ignore_index
        if self._valid_ids is not None:
            in_range = (mask >= 0) & (mask < len(self._valid_ids))
            valid = np.zeros_like(ignore)
            valid[in_range] = self._valid_ids[mask[in_range]]
            bad = ~valid & ~ignore
            if bad.any():
                if self.on_bad_class == "error":
                    bad_ids = np.unique(mask[bad]).tolist()
                    raise DataError(
                        path,
                        f"class ids {bad_ids[:20]} are not in the class table (ids "
                        f"{_id_summary(self._valid_ids)}, ignore {self.ignore_index}); "
                        'pass on_bad_class="ignore" to map them to ignore',
                    )
                ignore |= bad
        if self.ignore_index == OUTPUT_IGNORE and not ignore.any():
            return mask
        return np.where(ignore, np.int64(OUTPUT_IGNORE), mask)

    def _load_or_replace(self, index: int) -> dict[str, Any]:
        """Loads ``index`` or, when its files are unreadable, the next readable sample."""
        tries = min(len(self), _MAX_REPLACEMENT_TRIES)
        for step in range(tries):
            i = (index + step) % len(self)
            if i in self._bad_indices:
                continue
            try:
                files = self._read(i)
            except DataError as e:
                self._bad_indices.add(i)
                self._skipped.append(SkippedSample(self._entries[i].image, f"unreadable: {e}"))
                logger.warning("skipping unreadable sample (replaced by the next one): %s", e)
                continue
            return self._check(i, *files)
        raise DataError(self.images_dir, f"{tries} consecutive samples from index {index} are unreadable")


class UnlabeledImageFolder(FolderDataset):
    """A folder of images without labels (``root/images`` if it exists, else ``root``), recursive.

    Samples are ``{"image": uint8 (H, W, 3), "id": str}`` (plus ``"K"`` with ``cameras.json``).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        on_bad_image: Policy = "error",
        images_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            root, task="image", transform=transform, on_bad_image=on_bad_image, images_dir=images_dir
        )


def _expected_label(label_dir: Path, extensions: tuple[str, ...], rel: str) -> str:
    """``root/depth/a/b.png (or .npy, .exr)``: where the label of image ``<rel>`` should be."""
    others = f" (or {', '.join(extensions[1:])})" if len(extensions) > 1 else ""
    return f"{label_dir / rel}{extensions[0]}{others}"


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


def _id_summary(valid: np.ndarray) -> str:
    ids = np.flatnonzero(valid).tolist()
    if ids == list(range(len(ids))):
        return f"0..{len(ids) - 1}"
    return str(ids[:20]) + ("..." if len(ids) > 20 else "")
