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

Finding the files and pairing each image with its label: :mod:`anydistill.data.folder_index`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from anydistill.data.folder_index import OUTPUT_IGNORE, SkippedSample, _Entry, _examples, _FolderIndex
from anydistill.data.io import exif_orientation, read_image
from anydistill.data.labels import ClassTable, read_classes, read_depth, read_mask
from anydistill.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# SkippedSample lives in folder_index (the label matching records skips); kept here as part of this
# module's API (FolderDataset.skipped / scan() return them).
__all__ = ["FolderDataset", "SkippedSample", "UnlabeledImageFolder"]

Task = Literal["depth", "semantic", "instance", "image"]
Policy = Literal["error", "skip"]
_MAX_REPLACEMENT_TRIES = 64


class FolderDataset(_FolderIndex, Dataset):
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
        if not self._entries:  # one line: the count and the first reasons (report() lists them all)
            shown = "; ".join(f"{s.path}: {s.reason}" for s in self._skipped[:2])
            more = f"; and {len(self._skipped) - 2} more" if len(self._skipped) > 2 else ""
            raise DataError(self.images_dir, f"all {len(self._skipped)} image(s) were skipped: {shown}{more}")
        if self._skipped:  # images without a label (on_missing_label="skip"): counted and named
            names = _examples([str(s.path) for s in self._skipped])
            logger.warning(
                "%s: skipped %d image(s) without a %s label: %s", self.root, len(self._skipped), task, names
            )

    # Construction helpers (_resolve_*, _find_images, _read_cameras, _match_labels): see _FolderIndex
    # in anydistill.data.folder_index.

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
                        'set data.on_bad_class=ignore (FolderDataset(on_bad_class="ignore")) to map them to the ignore index',
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


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


def _id_summary(valid: np.ndarray) -> str:
    ids = np.flatnonzero(valid).tolist()
    if ids == list(range(len(ids))):
        return f"0..{len(ids) - 1}"
    return str(ids[:20]) + ("..." if len(ids) > 20 else "")
