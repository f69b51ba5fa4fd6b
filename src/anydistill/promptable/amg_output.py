"""Writers for the mask records of :class:`~anydistill.promptable.amg.AutomaticMaskGenerator`.

- :func:`masks_to_coco_json` / :func:`save_coco_json`: a COCO-style dict / JSON file (compressed RLE).
- :func:`overlay_masks` / :func:`save_overlay`: the image with every mask blended in its own colour
  (as an array / a PNG).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anydistill.promptable.mask_utils import decode_rle, encode_rle
from anydistill.viz import default_palette, overlay, save_png

__all__ = ["masks_to_coco_json", "overlay_masks", "save_coco_json", "save_overlay"]


def _rle_of(segmentation: np.ndarray | dict[str, Any]) -> dict[str, Any]:
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        return {
            "size": list(segmentation["size"]),
            "counts": counts.decode() if isinstance(counts, bytes) else counts,
        }
    return encode_rle(torch.from_numpy(np.asarray(segmentation, dtype=bool))[None])[0]


def _size_of(segmentation: np.ndarray | dict[str, Any]) -> tuple[int, int]:
    if isinstance(segmentation, dict):
        h, w = segmentation["size"]
        return int(h), int(w)
    h, w = np.asarray(segmentation).shape
    return int(h), int(w)


def masks_to_coco_json(
    records: list[dict[str, Any]],
    image_id: int = 0,
    file_name: str | None = None,
    size: tuple[int, int] | None = None,
    category_id: int = 1,
) -> dict[str, Any]:
    """COCO-style dict (``images``, ``annotations``, ``categories``) for the records of one image.

    Each annotation has ``segmentation`` as compressed RLE ``{"size": [H, W], "counts": str}``,
    ``area``, ``bbox`` (XYWH), ``iscrowd`` 0, ``score`` (= predicted IoU, as COCO results expect) and
    SAM's ``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``. All masks get the one
    class-agnostic ``category_id``. ``size = (H, W)`` defaults to the masks' size; it is required
    when there are no records.
    """
    sizes = {_size_of(r["segmentation"]) for r in records}
    if size is None:
        if not sizes:
            raise ValueError("masks_to_coco_json: no records, so the image size must be given")
        if len(sizes) > 1:
            raise ValueError(f"masks_to_coco_json: records have different mask sizes {sorted(sizes)}")
        size = next(iter(sizes))
    h, w = int(size[0]), int(size[1])
    if sizes - {(h, w)}:
        raise ValueError(f"masks_to_coco_json: mask sizes {sorted(sizes)} do not match size {(h, w)}")
    annotations = []
    for i, r in enumerate(records):
        annotations.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": _rle_of(r["segmentation"]),
                "area": int(r["area"]),
                "bbox": [float(v) for v in r["bbox"]],
                "iscrowd": 0,
                "score": float(r["predicted_iou"]),
                "predicted_iou": float(r["predicted_iou"]),
                "stability_score": float(r["stability_score"]),
                "point_coords": [[float(v) for v in p] for p in r["point_coords"]],
                "crop_box": [float(v) for v in r["crop_box"]],
            }
        )
    image = {"id": image_id, "height": h, "width": w}
    if file_name is not None:
        image["file_name"] = file_name
    return {
        "images": [image],
        "annotations": annotations,
        "categories": [{"id": category_id, "name": "object"}],
    }


def save_coco_json(records: list[dict[str, Any]], path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`masks_to_coco_json` (same keyword arguments) to ``path``, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(masks_to_coco_json(records, **kwargs)))
    return path


def save_overlay(
    image: np.ndarray, records: list[dict[str, Any]], path: str | Path, alpha: float = 0.5
) -> Path:
    """Write :func:`overlay_masks` (the image with each mask blended in its own colour) as a PNG."""
    return save_png(overlay_masks(image, records, alpha), path)


def overlay_masks(image: np.ndarray, records: list[dict[str, Any]], alpha: float = 0.5) -> np.ndarray:
    """The RGB image ``(H, W, 3)`` uint8 with each record's mask blended in its own palette colour.

    Larger masks are painted first so smaller ones stay visible on top; pixels under no mask keep
    the image's colour. Records need ``segmentation`` (bool array or RLE) and ``area``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"save_overlay: image must be (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    ids = np.zeros((h, w), dtype=np.int64)  # 0 = no mask, k = k-th mask (by decreasing area)
    order = sorted(range(len(records)), key=lambda i: -int(records[i]["area"]))
    for k, i in enumerate(order, start=1):
        seg = records[i]["segmentation"]
        mask = decode_rle(_rle_of(seg)) if isinstance(seg, dict) else np.asarray(seg, dtype=bool)
        if mask.shape != (h, w):
            raise ValueError(f"save_overlay: mask {i} has shape {mask.shape}, image is {(h, w)}")
        ids[mask] = k
    # Palette entry 0 is black; skip it and cycle through 255 colours.
    palette = default_palette(256)[1:]
    colors = palette[(ids - 1) % len(palette)]  # (H, W, 3)
    blended = np.where((ids > 0)[..., None], overlay(image.astype(np.uint8), colors, alpha), image)
    return blended.astype(np.uint8)
