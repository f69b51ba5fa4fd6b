"""Where a folder dataset's files are, and which label file belongs to which image.

The construction half of :class:`~anydistill.data.folder.FolderDataset` (layout and checks: see
:mod:`anydistill.data.folder`): the image folder, ``meta.json``'s depth scale, ``classes.json``'s ignore
index and class ids, ``cameras.json``, the images found (by extension, hidden files skipped) and the
label of each (same ``<rel>``, one of the task's label extensions). Nothing here decodes an image.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from anydistill.data.io import IMAGE_EXTENSIONS, iter_files
from anydistill.data.labels import ClassTable
from anydistill.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["LABEL_DIRS", "LABEL_EXTENSIONS", "OUTPUT_IGNORE", "SkippedSample"]

#: Sub-folder of ``root`` that holds each task's labels.
LABEL_DIRS: dict[str, str] = {"depth": "depth", "semantic": "semantic", "instance": "instances"}
#: Label file extensions each task accepts (lower case).
LABEL_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "depth": (".png", ".npy", ".exr", ".tif", ".tiff"),
    "semantic": (".png", ".npy"),
    "instance": (".png", ".npy"),
}
OUTPUT_IGNORE = 255  # the ignore value of every sample FolderDataset returns (project convention)
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


def _index_files(folder: Path, extensions: tuple[str, ...]) -> tuple[dict[str, list[Path]], Counter[str]]:
    """Maps ``<rel>`` (relative path without extension) to the files under ``folder`` with those
    extensions (one recursive walk instead of one ``stat`` per image per candidate extension), and
    counts the extensions of the other files (for error hints). Hidden files are skipped, as
    :func:`~anydistill.data.io.find_images` skips them; a missing folder gives nothing."""
    found: dict[str, list[Path]] = {}
    others: Counter[str] = Counter()
    if not folder.is_dir():
        return found, others
    for path in iter_files(folder):
        ext = path.suffix.lower()
        if ext in extensions:
            found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
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


class _FolderIndex:
    """The construction helpers of :class:`~anydistill.data.folder.FolderDataset` (its base class).

    Each helper reads the attributes that ``FolderDataset.__init__`` has set before calling it and
    returns what it resolved; :meth:`_find_images` also records :attr:`ignored_extensions`, and
    :meth:`_match_labels` records the images it skips for a missing label (in ``_skipped``, which is
    otherwise empty while the dataset is built).
    """

    root: Path
    task: str
    on_missing_label: str
    images_dir: Path
    classes: ClassTable | None
    ignore_index: int
    ignored_extensions: Counter[str]
    _skipped: list[SkippedSample]

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
            for rel, image in missing:  # FolderDataset warns once it knows some image is left
                self._skipped.append(SkippedSample(image, f"missing {self.task} label ({expected(rel)})"))
        return entries, orphans


def _expected_label(label_dir: Path, extensions: tuple[str, ...], rel: str) -> str:
    """``root/depth/a/b.png (or .npy, .exr)``: where the label of image ``<rel>`` should be."""
    others = f" (or {', '.join(extensions[1:])})" if len(extensions) > 1 else ""
    return f"{label_dir / rel}{extensions[0]}{others}"
