"""The files a dense prediction writes, and the report of what was written: torch-free.

Shared by the PyTorch predictor (:func:`anydistill.inference.predict_folder`) and the onnxruntime one
(:mod:`anydistill.runtime`), which must run where torch is not installed, so nothing here imports it.

Depth: ``raw/<name>.npy`` (float32 relative disparity), ``png16/<name>.png`` (scaled per image to
0..65535) and ``color/<name>.png``. Semantic: ``masks/<name>.png`` (class ids, palette PNG) and
``overlay/<name>.png``. Every file is written under a temporary name and renamed into place, so a killed
run never leaves a truncated picture that looks finished.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anydistill.atomic import atomic_path
from anydistill.errors import DataError
from anydistill.viz import colorize_depth, colorize_mask, overlay

__all__ = [
    "PredictReport",
    "check_output_folder",
    "output_names",
    "prepare_output_folder",
    "write_depth",
    "write_semantic",
]

#: Pixels of one band of the 16-bit, colour and overlay pictures (their float64 temporaries are ~100 B/px).
WRITE_BAND_PIXELS = 1 << 18


@dataclass
class PredictReport:
    """What :func:`predict_folder` wrote and what it could not read."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote predictions for {len(self.written)} image(s)"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable image(s):")
            lines += [f"  {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


def _row_bands(height: int, width: int) -> list[tuple[int, int]]:
    """``(y0, y1)`` row ranges of about :data:`WRITE_BAND_PIXELS` pixels each, covering ``height`` rows."""
    rows = max(1, WRITE_BAND_PIXELS // max(1, width))
    return [(y0, min(height, y0 + rows)) for y0 in range(0, height, rows)]


def write_depth(out: Path, name: str, disp: np.ndarray) -> Path:
    """``raw/<name>.npy``, ``png16/<name>.png`` (scaled per image to 0..65535) and ``color/<name>.png``
    (Turbo over the 2nd–98th percentile) for disparity ``disp`` float32 ``(H, W)``. Returns the ``raw`` path.

    Memory: one full-size map at a time. Once ``raw`` is saved, ``disp`` is partitioned in place for
    the percentiles and dropped; the pictures are made band by band from the saved file, into one
    array or image each, freed once saved.
    """
    raw = out / "raw" / f"{name}.npy"
    _save(raw, disp)
    height, width = disp.shape
    low, high = _finite_range(
        disp
    )  # a NaN / inf pixel (an overflowing fp16 graph) must not blank the picture
    span = max(high - low, 1e-8)
    lo, hi = _percentiles(disp)  # reorders disp
    del disp  # the caller keeps no reference: the map's memory is freed here
    png16 = np.empty((height, width), np.uint16)
    for y0, y1, rows in _saved_rows(raw, _row_bands(height, width)):
        scaled = np.nan_to_num((rows - low) / span, nan=0.0, posinf=1.0, neginf=0.0)
        png16[y0:y1] = (scaled.clip(0.0, 1.0) * 65535).round()
    _save_image(Image.fromarray(png16), out / "png16" / f"{name}.png")  # I;16 shares png16's memory
    del png16
    color = Image.new("RGB", (width, height))
    for y0, _, rows in _saved_rows(raw, _row_bands(height, width)):
        color.paste(Image.fromarray(colorize_depth(rows, lo=lo, hi=hi)), (0, y0))
    _save_image(color, out / "color" / f"{name}.png")
    return raw


def _finite_range(disp: np.ndarray) -> tuple[float, float]:
    """The smallest and largest finite values of ``disp`` (``(0, 0)`` if none), band by band."""
    low, high = np.inf, -np.inf
    for y0, y1 in _row_bands(*disp.shape):
        band = disp[y0:y1]
        finite = band[np.isfinite(band)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return (0.0, 0.0) if low > high else (low, high)


def _percentiles(disp: np.ndarray) -> tuple[float, float]:
    """The 2nd and 98th percentiles of the finite values of ``disp`` (``(0, 1)`` if none), the range
    :func:`~anydistill.viz.colorize_depth` picks by itself; ``disp`` is partitioned in place (no copy)
    when all its values are finite."""
    finite = all(np.isfinite(disp[y0:y1]).all() for y0, y1 in _row_bands(*disp.shape))
    values = disp.reshape(-1) if finite else disp[np.isfinite(disp)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98], overwrite_input=True)
    return lo, hi


def _saved_rows(path: Path, bands: list[tuple[int, int]]) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(y0, y1, rows)`` for consecutive ``bands`` of the ``(H, W)`` array that ``np.save`` wrote at
    ``path``, read from the file (a memory map's pages would count as this process's memory)."""
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(f)
        for y0, y1 in bands:
            yield y0, y1, np.fromfile(f, dtype, count=(y1 - y0) * shape[1]).reshape(y1 - y0, shape[1])


def write_semantic(out: Path, name: str, ids: np.ndarray, image: np.ndarray, palette: np.ndarray) -> Path:
    """``masks/<name>.png`` (class ids ``(H, W)`` uint8 as a palette PNG) and ``overlay/<name>.png`` (the
    coloured ids blended over ``image`` uint8 ``(H, W, 3)``). Returns the mask path.

    Memory: the overlay is blended into ``image`` itself, band by band (the caller's image becomes its
    overlay), and ``ids`` are freed before the picture is made.
    """
    mask_path = out / "masks" / f"{name}.png"
    mask = Image.fromarray(ids, mode="P")  # shares ids' memory
    mask.putpalette(palette[:256].flatten().tolist())
    _save_image(mask, mask_path)
    del mask
    for y0, y1 in _row_bands(*ids.shape):
        image[y0:y1] = overlay(image[y0:y1], colorize_mask(ids[y0:y1], palette))  # (b, W, 3)
    del ids  # the caller keeps no reference: freed here
    _save_image(Image.fromarray(image), out / "overlay" / f"{name}.png")
    return mask_path


def output_names(rels: list[Path]) -> dict[Path, str]:
    """The output name (a relative path as text, no extension added yet) of each input ``rel``.

    An input's name is its relative path without the extension (``sub/a.png`` → ``sub/a``) unless that
    name is shared with another input: then it keeps its extension (``sub/a.png``, ``sub/a.jpg``). Repeated
    until no two names are equal (``a.png`` kept whole could meet ``a.png.jpg``'s short name), which
    ends because whole relative paths are distinct. Outputs append their own extension to the name
    (``raw/sub/a.png.npy``), so a dotted stem (``scan.v2.png`` → ``scan.v2.npy``) is never cut either.
    """
    names = {rel: rel.with_suffix("").as_posix() for rel in rels}
    while True:
        counts = Counter(names.values())
        shared = [rel for rel, name in names.items() if counts[name] > 1 and name != rel.as_posix()]
        if not shared:
            return names
        for rel in shared:
            names[rel] = rel.as_posix()


def check_output_folder(out: Path) -> None:
    """Fail early, without creating anything, when ``out`` cannot be a writable folder."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "output folder is an existing file; give a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(out, f"output folder cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(out, f"output folder cannot be written: no write permission in {parent}")


def prepare_output_folder(out: Path) -> None:
    """Create ``out`` and write a probe file there: a read-only file system fails here, not mid-run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise DataError(out, f"output folder cannot be created or written: {exc.strerror or exc}") from None


def _save(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name beside ``path``, then renamed into place (atomic)."""
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:
            np.save(f, array)


def _save_image(image: Any, path: Path) -> None:
    """A PIL image saved to a temporary name beside ``path`` (format from ``path``'s suffix), renamed."""
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
