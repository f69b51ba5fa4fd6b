"""Robust readers for label files: depth maps, label masks and the class table (``classes.json``).

As in :mod:`anydistill.data.io` (whose image decoding they share), every reader turns a bad file into a
:class:`~anydistill.errors.DataError` that names the file and says what is wrong in plain words, and
image contents are detected from the bytes, never from the extension.

Conventions (see the project's data conventions):

- ``read_depth`` -> float32 ``(H, W)`` metres, ``0`` where invalid (NaN, inf, negative, or stored 0).
- ``read_mask``  -> int64 ``(H, W)`` ids (palette *indices* for palette PNGs, never their colours).
- ``read_classes`` -> :class:`ClassTable` from ``classes.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anydistill.data.io import _SIXTEEN_BIT_MODES, _exif_transpose, _open, _warn_once
from anydistill.errors import DataError

__all__ = [
    "ClassEntry",
    "ClassTable",
    "read_classes",
    "read_depth",
    "read_mask",
]


def _read_npy(path: Path) -> np.ndarray:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    if size == 0:
        raise DataError(path, "empty file (0 bytes)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(path, f"not a valid .npy array or truncated: {e}") from None


def _squeeze_2d(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])  # (H, W)
    if arr.ndim != 2:
        raise DataError(path, f"expected a single-channel {what} of shape (H, W), got shape {arr.shape}")
    return arr


def _read_exr(path: Path) -> np.ndarray:
    # OpenEXR is not something PIL reads; use whichever optional reader is installed.
    try:
        import imageio.v3 as iio  # type: ignore[import-not-found]
    except ImportError:
        iio = None
    if iio is not None:
        try:
            return np.asarray(iio.imread(path))
        except Exception as e:  # noqa: BLE001 -- imageio raises many plugin-specific types
            raise DataError(path, f"cannot read EXR with imageio: {e}") from None
    try:
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            path,
            "reading .exr depth needs an EXR reader: `pip install imageio` (with its freeimage or "
            "pyav plugin) or `pip install opencv-python`; or convert the depth to .npy / 16-bit .png",
        ) from None
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError(path, "OpenCV could not read this EXR file (corrupt, or EXR support disabled)")
    return np.asarray(arr)


def read_depth(path: str | Path, depth_scale: float = 1000.0) -> np.ndarray:
    """Reads a depth map in metres.

    Args:
        path: a single-channel integer PNG (16-bit; 8-bit accepted with a warning) read as
            ``value / depth_scale``; a float TIFF (mode ``F``) read as metres; a ``.npy`` array
            ``(H, W)`` (or ``(1, H, W)`` / ``(H, W, 1)``) in metres; or ``.exr`` (first channel) in
            metres when imageio or OpenCV is installed.
        depth_scale: integer units per metre for integer images (1000.0 = millimetres).

    Returns:
        float32 ``(H, W)`` metres; NaN, +-inf and negative values become 0 (= invalid). An all-invalid
        map is returned as is (losses and metrics mask it out; the dataset may warn).

    Raises:
        DataError: missing/corrupt file, colour (RGB) image, or an array that is not ``(H, W)``.
    """
    path = Path(path)
    if not (isinstance(depth_scale, int | float) and math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be a positive number, got {depth_scale!r}")
    ext = path.suffix.lower()
    if ext == ".npy":
        arr = _read_npy(path)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataError(path, f"depth array must be numeric, got dtype {arr.dtype}")
        depth = _squeeze_2d(arr, path, "depth map").astype(np.float32)
    elif ext == ".exr":
        arr = _read_exr(path)
        if arr.ndim == 3:
            arr = arr[..., 0]  # (H, W): first channel (Z or R)
        depth = _squeeze_2d(arr, path, "depth map").astype(np.float32)
    else:
        opened = _open(path)
        try:
            img = _exif_transpose(opened, path)
            mode = img.mode
            if mode == "F":
                depth = np.asarray(img, dtype=np.float32).copy()
            elif mode in _SIXTEEN_BIT_MODES or mode in ("I", "L"):
                if mode == "L":
                    _warn_once(
                        f"depth8:{path.parent}",
                        f"{path}: 8-bit depth image (only 256 levels); store depth as 16-bit PNG or .npy",
                    )
                depth = (np.asarray(img).astype(np.float64) / float(depth_scale)).astype(np.float32)
            else:
                raise DataError(
                    path,
                    f"depth image must be single-channel (16-bit PNG), got mode {mode!r}; a colour-mapped "
                    "depth visualisation cannot be converted back to metres",
                )
        finally:
            opened.close()
    invalid = ~np.isfinite(depth) | (depth < 0)
    if invalid.any():
        depth = np.where(invalid, np.float32(0.0), depth).astype(np.float32)
    return np.ascontiguousarray(depth, dtype=np.float32)


def read_mask(path: str | Path, color_to_id: Mapping[tuple[int, int, int], int] | None = None) -> np.ndarray:
    """Reads a label mask (semantic class ids or instance ids).

    Args:
        path: an index PNG (``L``, 16-bit ``I;16``, 32-bit ``I``), a palette PNG (``P``: the palette
            *indices* are returned, never the colours), or a ``.npy`` integer array ``(H, W)``.
        color_to_id: for colour (RGB/RGBA) masks only, a map ``(r, g, b) -> id``. Without it a colour
            mask is an error, except when every pixel is grey (r == g == b), which is read as that
            grey value. Colours missing from the map are an error naming them.

    Returns:
        int64 ``(H, W)``.

    Raises:
        DataError: missing/corrupt file, a colour mask without ``color_to_id``, unmapped colours, or
            a float/bool array that is not an integer mask.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = _squeeze_2d(_read_npy(path), path, "mask")
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise DataError(path, f"mask array must hold integers, got dtype {arr.dtype}")
        return np.ascontiguousarray(arr.astype(np.int64))
    opened = _open(path)
    try:
        img = _exif_transpose(opened, path)
        mode = img.mode
        if mode in ("P", "L", "I", "1") or mode in _SIXTEEN_BIT_MODES:
            mask = np.asarray(img).astype(np.int64)  # (H, W); "P" -> palette indices
        elif mode in ("LA", "La", "PA"):
            mask = np.asarray(img)[..., 0].astype(np.int64)  # (H, W): drop alpha
        elif mode in ("RGB", "RGBA", "RGBX"):
            mask = _colour_mask_to_ids(np.asarray(img)[..., :3], path, color_to_id)
        else:
            raise DataError(path, f"unsupported mask mode {mode!r}; save masks as index or palette PNGs")
    finally:
        opened.close()
    return np.ascontiguousarray(mask)


def _colour_mask_to_ids(
    rgb: np.ndarray, path: Path, color_to_id: Mapping[tuple[int, int, int], int] | None
) -> np.ndarray:
    """Maps a uint8 ``(H, W, 3)`` colour mask to int64 ``(H, W)`` ids."""
    if color_to_id is None:
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].astype(np.int64)
        raise DataError(
            path,
            "colour (RGB) mask: class ids are ambiguous; save an index or palette PNG, "
            "or pass a colour -> id map (color_to_id)",
        )
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in color_to_id], dtype=np.int64)
    values = np.array(list(color_to_id.values()), dtype=np.int64)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    pos = np.clip(np.searchsorted(keys, packed), 0, max(len(keys) - 1, 0))
    known = keys[pos] == packed if len(keys) else np.zeros_like(packed, dtype=bool)
    if not known.all():
        bad = np.unique(packed[~known])[:8]
        colours = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in bad]
        raise DataError(path, f"mask colours not in the colour -> id map: {colours}")
    return values[pos]


@dataclass(frozen=True)
class ClassEntry:
    """One entry of ``classes.json``."""

    id: int
    name: str
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ClassTable(Mapping[str, Any]):
    """The parsed ``classes.json``: classes sorted by id, and the ignore value used in label files.

    Also a read-only mapping over the normalised JSON (``table["classes"]`` -> list of
    ``{"id", "name", "color"}`` dicts, ``table["ignore_index"]``), so code that treats
    ``classes.json`` as a dict keeps working.
    """

    classes: tuple[ClassEntry, ...]
    ignore_index: int = 255

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def num_classes(self) -> int:
        """``max id + 1`` (the logit count a model needs; ids need not be contiguous)."""
        return max(self.ids) + 1

    def color_to_id(self) -> dict[tuple[int, int, int], int]:
        """``(r, g, b) -> id`` for the classes that have a colour (for colour masks)."""
        return {c.color: c.id for c in self.classes if c.color is not None}

    def to_json(self) -> dict[str, Any]:
        """The ``classes.json`` content (colours as lists, absent colours omitted)."""
        entries = []
        for c in self.classes:
            entry: dict[str, Any] = {"id": c.id, "name": c.name}
            if c.color is not None:
                entry["color"] = list(c.color)
            entries.append(entry)
        return {"classes": entries, "ignore_index": self.ignore_index}

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(("classes", "ignore_index"))

    def __len__(self) -> int:
        return 2


#: The largest class id a label mask can hold (a 16-bit PNG). A larger id in ``classes.json`` is refused:
#: the id lookup tables and the model's logits are ``max id + 1`` long.
MAX_CLASS_ID = 65535


def _check_int(value: object, path: Path, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, f"{where} must be an integer, got {value!r}")
    return value


def read_classes(path: str | Path) -> ClassTable | None:
    """Parses and validates ``classes.json``.

    Format: ``{"classes": [{"id": 0, "name": "floor", "color": [r, g, b]}, ...], "ignore_index": 255}``
    (``color`` and ``ignore_index`` optional; ignore defaults to 255).

    Args:
        path: the dataset root (``<root>/classes.json`` is read) or the JSON file itself.

    Returns:
        the table, or None when ``path`` is a folder without ``classes.json`` (it is optional).

    Raises:
        DataError: a JSON file path that does not exist, malformed JSON (with line and column), missing or mistyped fields,
            ids outside 0..65535, duplicate ids or names, an id equal to the ignore index.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "classes.json"
        if not path.exists():
            return None
    if not path.is_file():
        raise DataError(path, "class table not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text: {e}") from None
    if not isinstance(data, dict) or "classes" not in data:
        raise DataError(path, 'expected an object {"classes": [...], "ignore_index": 255}')
    entries = data["classes"]
    if not isinstance(entries, list) or not entries:
        raise DataError(path, '"classes" must be a non-empty list')
    ignore_index = _check_int(data.get("ignore_index", 255), path, '"ignore_index"')
    classes: list[ClassEntry] = []
    for k, entry in enumerate(entries):
        where = f"classes[{k}]"
        if not isinstance(entry, dict):
            raise DataError(path, f'{where} must be an object {{"id": ..., "name": ...}}, got {entry!r}')
        for field in ("id", "name"):
            if field not in entry:
                raise DataError(path, f'{where} is missing the field "{field}"')
        cid = _check_int(entry["id"], path, f"{where}.id")
        if not 0 <= cid <= MAX_CLASS_ID:
            raise DataError(
                path, f"{where}.id must be in 0..{MAX_CLASS_ID} (masks hold 8- or 16-bit ids), got {cid}"
            )
        if cid == ignore_index:
            raise DataError(path, f"{where}.id {cid} equals ignore_index {ignore_index}")
        name = entry["name"]
        if not isinstance(name, str) or not name:
            raise DataError(path, f"{where}.name must be a non-empty string, got {name!r}")
        color = entry.get("color")
        if color is not None:
            if (
                not isinstance(color, Sequence)
                or isinstance(color, str)
                or len(color) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
            ):
                raise DataError(path, f"{where}.color must be [r, g, b] with ints in 0..255, got {color!r}")
            color = (int(color[0]), int(color[1]), int(color[2]))
        classes.append(ClassEntry(id=cid, name=name, color=color))
    _check_unique([c.id for c in classes], path, "class ids")
    _check_unique([c.name for c in classes], path, "class names")
    return ClassTable(classes=tuple(sorted(classes, key=lambda c: c.id)), ignore_index=ignore_index)


def _check_unique(values: list[int] | list[str], path: Path, what: str) -> None:
    dup = sorted((v for v, n in Counter(values).items() if n > 1), key=str)
    if dup:
        raise DataError(path, f"duplicate {what}: {dup}")
