"""Mask helpers for automatic mask generation: point grids, crop boxes, stability score, boxes, RLE.

Conventions: masks are bool ``(N, H, W)`` (or ``(..., H, W)``); mask logits are float ``(N, H, W)``
thresholded at the model's ``mask_threshold`` (0.0 for SAM); boxes are ``(N, 4)`` XYXY in pixel
*indices* (the right/bottom edge is the last covered pixel, so a one-pixel mask has a zero-size box,
as in segment-anything); a crop box is ``[x0, y0, x1, y1]`` with ``x1``/``y1`` exclusive. RLE means
the COCO compressed form ``{"size": [H, W], "counts": str}`` produced and read by pycocotools.

- [0] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643 (§A, the
  automatic mask generation recipe and the stability score)
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/6f95a3bf51e8fc26b0764deffe3dbcdf6a8aea7d/segment_anything/utils/amg.py

from __future__ import annotations

import math
from itertools import product
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "build_point_grid",
    "build_all_layer_point_grids",
    "generate_crop_boxes",
    "calculate_stability_score",
    "batched_mask_to_box",
    "box_xyxy_to_xywh",
    "is_box_near_crop_edge",
    "uncrop_boxes_xyxy",
    "uncrop_points",
    "uncrop_masks",
    "encode_rle",
    "decode_rle",
    "rle_area",
    "remove_small_regions",
]


def _pycocotools_mask() -> Any:
    try:  # pycocotools and scipy are dependencies; the guards say what to install in a partial environment
        from pycocotools import mask as coco_mask
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "automatic mask generation stores masks as COCO RLE and needs pycocotools: pip install pycocotools"
        ) from err
    return coco_mask


def build_point_grid(n_per_side: int) -> np.ndarray:
    """An evenly spaced ``n_per_side x n_per_side`` grid of cell centres in ``[0, 1]^2``, shape ``(n^2, 2)`` (x, y).

    Rows run over y, so point ``i`` is at column ``i % n``, row ``i // n``.
    """
    if n_per_side < 1:
        raise ValueError(f"a point grid needs at least 1 point per side, got {n_per_side}")
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)  # (n,)
    xs, ys = np.meshgrid(side, side)  # (n, n) each, xs varies along columns
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)  # (n^2, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer ``0..n_layers``; layer ``i`` has ``int(n_per_side / scale_per_layer**i)`` points per side."""
    grids = []
    for i in range(n_layers + 1):
        n = int(n_per_side / (scale_per_layer**i))
        if n < 1:
            raise ValueError(
                f"crop layer {i} would get {n} points per side (points_per_side={n_per_side}, "
                f"crop_n_points_downscale_factor={scale_per_layer}); lower the factor or crop_n_layers"
            )
        grids.append(build_point_grid(n))
    return grids


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes ``[x0, y0, x1, y1]`` over an image of ``im_size = (H, W)`` and the layer of each.

    Layer 0 is the whole image; layer ``i >= 1`` tiles the image with ``2^i x 2^i`` crops that overlap
    by ``int(overlap_ratio * min(H, W) * 2 / 2^i)`` pixels. Crops are ordered x-major within a layer.
    """
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    short_side = min(im_h, im_w)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = crop_len(im_w, n_crops, overlap)
        crop_h = crop_len(im_h, n_crops, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def calculate_stability_score(mask_logits: Tensor, mask_threshold: float, offset: float) -> Tensor:
    """Stability score of mask logits ``(..., H, W)`` -> ``(...)`` float.

    The IoU between the two binary masks obtained by thresholding the same logits at
    ``mask_threshold + offset`` (the strict mask) and ``mask_threshold - offset`` (the loose mask):
    ``|logits > t + o| / |logits > t - o|``. The strict mask lies inside the loose one, so the
    intersection is the strict area and the union the loose area. A score near 1 means the mask
    barely changes when the cut-off moves, i.e. the logits cross the threshold steeply. An empty
    loose mask gives NaN (0/0), which no ``>=`` filter keeps.
    """
    # Row sums fit in int16 (W < 32768), totals in int32: saves memory over an int64 sum of bools.
    inter = (mask_logits > (mask_threshold + offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (mask_logits > (mask_threshold - offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


def batched_mask_to_box(masks: Tensor) -> Tensor:
    """Tight XYXY boxes ``(..., 4)`` int64 around bool masks ``(..., H, W)``; ``[0, 0, 0, 0]`` for an empty mask.

    Right/bottom are the indices of the last covered column/row (inclusive), as in segment-anything.
    """
    h, w = masks.shape[-2:]
    lead = masks.shape[:-2]
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=-1).to(torch.uint8)  # (..., H)
    cols = masks.any(dim=-2).to(torch.uint8)  # (..., W)
    # argmax returns the first maximal index: first covered row/col from each side.
    top = rows.argmax(dim=-1)
    bottom = (h - 1) - rows.flip(-1).argmax(dim=-1)
    left = cols.argmax(dim=-1)
    right = (w - 1) - cols.flip(-1).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)  # (..., 4)
    nonempty = rows.any(dim=-1)  # (...)
    return boxes * nonempty.unsqueeze(-1)


def box_xyxy_to_xywh(boxes: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """``(..., 4)`` XYXY -> XYWH (width = x1 - x0), a new array of the same type."""
    out = boxes.clone() if isinstance(boxes, Tensor) else np.array(boxes, copy=True)
    out[..., 2] = out[..., 2] - out[..., 0]
    out[..., 3] = out[..., 3] - out[..., 1]
    return out


def uncrop_boxes_xyxy(boxes: Tensor, crop_box: list[int]) -> Tensor:
    """Boxes ``(N, 4)`` in crop pixels -> image pixels (shift by the crop's top-left corner)."""
    x0, y0 = crop_box[0], crop_box[1]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: Tensor, crop_box: list[int]) -> Tensor:
    """Points ``(N, 2)`` (x, y) in crop pixels -> image pixels."""
    return points + torch.tensor([crop_box[0], crop_box[1]], device=points.device)


def uncrop_masks(masks: Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> Tensor:
    """Masks ``(N, h, w)`` of a crop -> ``(N, orig_h, orig_w)``, zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)  # left, right, top, bottom
    return torch.nn.functional.pad(masks, pad, value=0)


def is_box_near_crop_edge(
    boxes: Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> Tensor:
    """``(N,)`` bool: a box (XYXY, crop pixels) lies within ``atol`` px of a crop edge that is not an image edge.

    Such masks are likely cut by the crop, so they are dropped; the larger crop (or the full image)
    sees the whole object.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop[None, :], atol=atol, rtol=0)  # (N, 4)
    near_image = torch.isclose(boxes, orig[None, :], atol=atol, rtol=0)  # (N, 4)
    return (near_crop & ~near_image).any(dim=1)


def encode_rle(masks: Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Bool masks ``(N, H, W)`` -> ``N`` COCO RLEs ``{"size": [H, W], "counts": str}`` (pycocotools, one C call)."""
    coco_mask = _pycocotools_mask()
    masks = torch.as_tensor(masks)
    n, h, w = masks.shape
    if n == 0:
        return []
    # pycocotools wants Fortran-ordered (H, W, N) uint8: a C-contiguous (N, W, H) transposed is exactly that.
    fortran = masks.transpose(1, 2).to(torch.uint8).contiguous().cpu().numpy().T  # (H, W, N), F-order
    rles = coco_mask.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")  # str, so the RLE is JSON-serialisable
    return rles


def decode_rle(rles: list[dict[str, Any]] | dict[str, Any]) -> np.ndarray:
    """COCO RLE(s) -> bool masks ``(N, H, W)`` (or ``(H, W)`` for a single RLE dict)."""
    coco_mask = _pycocotools_mask()
    if isinstance(rles, dict):
        return coco_mask.decode(rles).astype(bool)
    if len(rles) == 0:
        return np.zeros((0, 0, 0), dtype=bool)
    return np.ascontiguousarray(coco_mask.decode(list(rles)).transpose(2, 0, 1)).astype(bool)  # (N, H, W)


def rle_area(rles: list[dict[str, Any]]) -> list[int]:
    """Pixel count of each RLE."""
    if len(rles) == 0:
        return []
    return [int(a) for a in _pycocotools_mask().area(list(rles))]


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: Literal["holes", "islands"]
) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh`` px in a bool mask ``(H, W)``.

    Regions are 8-connected. If every island is small, the largest is kept. Returns the new mask and
    whether anything changed. Uses ``scipy.ndimage.label`` where segment-anything uses OpenCV's
    ``connectedComponentsWithStats``; the components are the same, but when islands tie for largest
    the kept one may differ, so results can differ slightly from upstream for ``min_mask_region_area``.
    """
    try:  # see _pycocotools_mask
        from scipy import ndimage
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("min_mask_region_area > 0 needs scipy: pip install scipy") from err
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = mask ^ holes  # holes: label the background; islands: label the foreground
    labels, n = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))  # (H, W) int, 0 = not working
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # (n,)
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if holes:
        fill = np.concatenate([[False], small])  # (n + 1,) lookup: small background regions become foreground
        return mask | fill[labels], True
    keep = np.concatenate([[False], ~small])
    if not keep.any():
        keep[int(np.argmax(sizes)) + 1] = True
    return keep[labels], True
