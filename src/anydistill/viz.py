"""Pictures for people: colour-mapped depth, coloured masks and image grids (numpy + PIL only).

Hand-written rather than importing matplotlib only for its colormaps: the Turbo map is a short
polynomial (Mikhailov, Google AI 2019), and matplotlib would be a heavy dependency for one lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Adapted from https://gist.github.com/mikhailov-work/0d177465a8151eb6ede1768d51d476c7 (polynomial fit)
_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def turbo(x: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape ``S``) to RGB uint8 of shape ``S + (3,)``."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([x**i for i in range(6)], axis=-1)  # S + (6,)
    rgb = np.stack([powers @ np.array(c) for c in (_TURBO_R, _TURBO_G, _TURBO_B)], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def colorize_depth(
    values: np.ndarray, valid: np.ndarray | None = None, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    """Colour-map a depth or disparity map ``(H, W)`` to RGB ``(H, W, 3)``; invalid pixels are black.

    The range defaults to the 2nd–98th percentile of the valid values, so one outlier does not wash
    the picture out. Pass ``lo``/``hi`` to put several maps on one scale.
    """
    values = np.asarray(values, dtype=np.float32)
    if valid is None:
        valid = np.isfinite(values)
    valid = valid & np.isfinite(values)
    if lo is None or hi is None:
        if valid.any():
            p_lo, p_hi = np.percentile(values[valid], [2, 98])
        else:
            p_lo, p_hi = 0.0, 1.0
        lo = p_lo if lo is None else lo
        hi = p_hi if hi is None else hi
    scaled = (values - lo) / max(hi - lo, 1e-8)
    rgb = turbo(np.where(valid, scaled, 0.0))
    rgb[~valid] = 0
    return rgb


def default_palette(num_classes: int) -> np.ndarray:
    """A fixed, distinct-looking palette ``(num_classes, 3)`` uint8 (PASCAL VOC's bit trick)."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def colorize_mask(
    mask: np.ndarray, palette: np.ndarray | Sequence[Sequence[int]], ignore_index: int = 255
) -> np.ndarray:
    """Class ids ``(H, W)`` → RGB ``(H, W, 3)``; ignored and unknown ids are black."""
    palette = np.asarray(palette, dtype=np.uint8)
    mask = np.asarray(mask).astype(np.int64)
    known = (mask >= 0) & (mask < len(palette)) & (mask != ignore_index)
    rgb = np.zeros(mask.shape + (3,), dtype=np.uint8)
    rgb[known] = palette[mask[known]]
    return rgb


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour map over an RGB image, both ``(H, W, 3)`` uint8."""
    out = image.astype(np.float32) * (1 - alpha) + colors.astype(np.float32) * alpha
    return out.round().clip(0, 255).astype(np.uint8)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None, pad: int = 2
) -> np.ndarray:
    """Tile RGB tiles ``(H, W, 3)`` (all the same size) into one picture, with optional column titles."""
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one tile")
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    title_h = 14 if titles else 0
    grid = np.full((title_h + len(rows) * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if tile.shape[:2] != (h, w):
                raise ValueError(f"tile ({i}, {j}) has shape {tile.shape[:2]}, expected {(h, w)}")
            y, x = title_h + pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = tile[..., :3]
    if titles:
        pil = Image.fromarray(grid)
        draw = ImageDraw.Draw(pil)
        for j, title in enumerate(titles):
            draw.text((pad + j * (w + pad) + 2, 1), title, fill=(0, 0, 0))
        grid = np.asarray(pil)
    return grid


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Save an RGB/greyscale uint8 or uint16 array as PNG, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
