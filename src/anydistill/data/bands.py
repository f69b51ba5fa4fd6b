"""Resampling in bands of rows, so a large photo never exists as a full-size float tensor.

A 12000 x 9000 photo is 324 MB as uint8 but 1.3 GB as float32, and its restored ``C``-class logits are
``C`` times that; the model itself only sees a few hundred pixels a side. Two resamplers walk the
large side one band of rows at a time:

* :func:`resize_image_bands`: uint8 ``(H, W, 3)`` → float32 ``(3, h, w)`` in [0, 1], bit for bit what
  ``F.resize`` (bilinear, antialiased) gives on the float image: torch's antialiased resize is
  separable (a width pass, rounded to float32, then a height pass), so the width pass runs on each
  band of rows and only the ``(3, H, w)`` intermediate is kept whole.
* :func:`upsample_bands`: a small ``(C, h, w)`` map → bands ``(C, b, W)`` of its bilinear enlargement
  to ``(H, W)`` (``align_corners=False``: ``F.interpolate``'s source coordinates and weights), equal to
  ``F.interpolate`` to float rounding; :func:`upsample_argmax_bands`, its channel argmax (class ids),
  interpolating only the pixels near class boundaries.

Band heights come from an element budget (``max_elements`` floats per band and channel count), so the
temporaries stay a few tens of MB whatever the image size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as TF
from torch import Tensor
from torchvision.transforms.v2 import functional as F

__all__ = [
    "BAND_ELEMENTS",
    "band_rows",
    "linear_taps",
    "resize_image_bands",
    "upsample_argmax_bands",
    "upsample_bands",
]

#: Default budget of one band's float tensor: 4 Mi elements (16 MB as float32).
BAND_ELEMENTS = 1 << 22


def band_rows(row_elements: int, max_elements: int | None = None) -> int:
    """Rows per band so a band of ``row_elements`` values per row holds at most ``max_elements``
    (default :data:`BAND_ELEMENTS`, read at call time), at least one row."""
    budget = BAND_ELEMENTS if max_elements is None else int(max_elements)
    return max(1, budget // max(1, int(row_elements)))


def _resize_aa(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``(C, H, W)`` → ``(C, *size)``: ``F.resize``'s bilinear antialiased float path."""
    return TF.interpolate(x[None], size, mode="bilinear", align_corners=False, antialias=True)[0]


def resize_image_bands(image: np.ndarray, size: tuple[int, int], max_elements: int | None = None) -> Tensor:
    """Resize a uint8 image without a full-size float copy.

    Args:
        image: uint8 ``(H, W, 3)``.
        size: the output ``(h, w)``.
        max_elements: float elements per band of the width pass (``3 * W`` per row); default
            :data:`BAND_ELEMENTS`.

    Returns:
        float32 ``(3, h, w)`` in [0, 1] (not clamped): equal, bit for bit, to
        ``F.resize(F.to_dtype(image_chw, float32, scale=True), size, BILINEAR, antialias=True)``,
        since torch's antialiased kernel also runs the width pass first, each pass rounded to float32
        (tests/test_predict_streaming.py checks it). Peak memory: the ``(3, H, w)`` intermediate
        plus one band.
    """
    height, width = image.shape[:2]
    h, w = int(size[0]), int(size[1])
    rows = band_rows(3 * width, max_elements)
    narrow = torch.empty(3, height, w, dtype=torch.float32)  # (3, H, w): the width pass, kept whole
    for y0 in range(0, height, rows):
        chunk = image[y0 : y0 + rows]
        if not (chunk.flags.writeable and chunk.flags.c_contiguous):  # torch wants writable, positive strides
            chunk = np.array(chunk)  # (e.g. np.asarray of a PIL image, a mirrored view)
        band = F.to_dtype(torch.from_numpy(chunk).permute(2, 0, 1), torch.float32, scale=True)  # (3, b, W)
        narrow[:, y0 : y0 + rows] = _resize_aa(band, (band.shape[1], w)) if w != width else band
    return _resize_aa(narrow, (h, w)) if h != height else narrow  # (3, h, w)


def linear_taps(n_in: int, n_out: int, device: torch.device | str = "cpu") -> tuple[Tensor, ...]:
    """The two source indices and weights of each output index of a bilinear resize along one axis.

    ``F.interpolate``'s rule for ``align_corners=False`` (torch's ``area_pixel_compute_source_index``
    and ``compute_indices_weights_linear``), in float32 as torch computes it for float32 inputs:
    source ``s = max((i + 0.5) * n_in / n_out - 0.5, 0)``, ``i0 = floor(s)``, ``i1 = min(i0 + 1, n_in - 1)``,
    ``w1 = s - i0``, ``w0 = 1 - w1``.

    Returns:
        ``i0``, ``i1`` int64 ``(n_out,)`` and ``w0``, ``w1`` float32 ``(n_out,)``.
    """
    scale = torch.tensor(float(n_in), dtype=torch.float32) / n_out
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0.0)  # (n_out,)
    i0 = src.long()  # floor: src >= 0
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    w1 = (src - i0).clamp_(0.0, 1.0)
    w0 = 1.0 - w1
    return tuple(t.to(device) for t in (i0, i1, w0, w1))


def upsample_bands(
    x: Tensor, size: tuple[int, int], max_elements: int | None = None
) -> Iterator[tuple[int, int, Tensor]]:
    """Bilinear resize (``align_corners=False``, no antialiasing) of ``x`` to ``size``, one band of output
    rows at a time.

    Written by hand because ``F.interpolate`` cannot produce some output rows only: its source
    coordinates depend on the whole output size, and a band's first row generally maps to a fractional
    source row, so calling it on a crop would shift the grid. Each band takes only the source rows its
    output rows read, runs the width pass on them, then the height pass, in ``F.interpolate``'s order
    (``(x00 w0 + x01 w1) v0 + (x10 w0 + x11 w1) v1``), so results equal it to float rounding.

    Args:
        x: ``(C, h, w)`` float.
        size: the output ``(H, W)``; meant for enlarging (for shrinking, bilinear without antialiasing
            aliases: use ``F.resize`` with ``antialias=True``).
        max_elements: elements of one band ``(C, b, W)`` (default :data:`BAND_ELEMENTS`); the
            temporaries are a few of those.

    Yields:
        ``(y0, y1, band)``: output rows ``y0:y1`` as ``(C, y1 - y0, W)``, top to bottom.
    """
    channels, h, w = x.shape
    height, width = int(size[0]), int(size[1])
    iy0, iy1, vy0, vy1 = linear_taps(h, height, x.device)
    ix0, ix1, wx0, wx1 = linear_taps(w, width, x.device)
    rows = band_rows(channels * width, max_elements)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        r0, r1 = int(iy0[y0]), int(iy1[y1 - 1]) + 1  # the source rows this band reads
        src = x[:, r0:r1]  # (C, n, w)
        wide = src.index_select(2, ix0).mul_(wx0)  # (C, n, W)
        wide.add_(src.index_select(2, ix1).mul_(wx1))
        band = wide.index_select(1, iy0[y0:y1] - r0).mul_(vy0[y0:y1, None])  # (C, b, W)
        band.add_(wide.index_select(1, iy1[y0:y1] - r0).mul_(vy1[y0:y1, None]))
        yield y0, y1, band


def upsample_argmax_bands(
    x: Tensor, size: tuple[int, int], max_elements: int | None = None
) -> Iterator[tuple[int, int, Tensor]]:
    """The channel argmax of :func:`upsample_bands`, one band of output rows at a time, interpolating
    only where it matters.

    Each output pixel is a convex combination of its 2 x 2 source pixels; where those four share the
    argmax ``k``, so does the combination (``k`` is the largest entry of each, so of any mix with
    non-negative weights). Only the output pixels between source pixels of different argmax (class
    boundaries: usually a small share of a photo) are interpolated over all ``C`` channels, with
    :func:`upsample_bands`' arithmetic; the rest copy the source argmax. Equal to
    ``upsample_bands(x, size)``'s ``band.argmax(0)`` except where two channels tie to float rounding.

    Args:
        x: ``(C, h, w)`` float (class logits or scores).
        size: the output ``(H, W)``, at least ``(h, w)`` (enlarging).
        max_elements: elements of the ``(C, n)`` values interpolated at once; a band's ``(b, W)`` maps
            hold a quarter as many pixels. Default :data:`BAND_ELEMENTS`.

    Yields:
        ``(y0, y1, ids)``: int64 ``(y1 - y0, W)`` channel indices of output rows ``y0:y1``.
    """
    channels, h, w = x.shape
    height, width = int(size[0]), int(size[1])
    iy0, iy1, vy0, vy1 = linear_taps(h, height, x.device)
    ix0, ix1, wx0, wx1 = linear_taps(w, width, x.device)
    low = x.argmax(0)  # (h, w)
    left, right = low[:, ix0], low[:, ix1]  # (h, W) each: the argmax of each output column's two taps
    flat = x.reshape(channels, h * w)  # (C, h * w): one index_select per tap
    budget = BAND_ELEMENTS if max_elements is None else int(max_elements)
    rows = band_rows(width, budget // 4)  # (b, W) int64 maps of budget / 4 pixels: ~30 bytes a pixel
    chunk = max(1, budget // channels)  # boundary pixels interpolated at once: (C, chunk) values
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        ya, yb = iy0[y0:y1], iy1[y0:y1]  # (b,) source rows of the band's output rows
        ids = left.index_select(0, ya)  # (b, W)
        mixed = (ids != right.index_select(0, ya)) | (ids != left.index_select(0, yb))
        mixed |= ids != right.index_select(0, yb)
        near = mixed.view(-1).nonzero().squeeze(1)  # (n,) flat band positions near a boundary
        for where in near.split(chunk):
            r, c = where // width, where % width
            sa, sb, c0, c1 = ya[r] * w, yb[r] * w, ix0[c], ix1[c]
            top = flat.index_select(1, sa + c0).mul_(wx0[c]).add_(flat.index_select(1, sa + c1).mul_(wx1[c]))
            bottom = (
                flat.index_select(1, sb + c0).mul_(wx0[c]).add_(flat.index_select(1, sb + c1).mul_(wx1[c]))
            )
            mix = top.mul_(vy0[y0 + r]).add_(bottom.mul_(vy1[y0 + r]))  # (C, n)
            ids.view(-1).index_copy_(0, where, mix.argmax(0))
        yield y0, y1, ids
