"""The files a detection prediction writes: COCO results JSON and overlays; torch-free.

Shared by the PyTorch path (:func:`anydistill.eval.detection.predict_detections`) and the onnxruntime one
(:func:`anydistill.runtime.detect.predict_detections_onnx`), which must run where torch is not installed.

``detections.json`` is COCO's format: ``images`` (``file_name`` relative to the input folder, ``height``,
``width``), ``categories`` (ids ``1 … K``) and ``annotations`` with ``bbox = [x, y, w, h]`` in each image's
own pixels, a ``score`` and, for instance masks, ``segmentation`` as COCO RLE (pycocotools). Overlays are
``overlays/<image>.png``: the image with its masks tinted, its boxes and their labels. Every file is
written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image, ImageDraw

from anydistill.atomic import atomic_path
from anydistill.viz import default_palette

__all__ = [
    "DETECTION_MIN_SCORE",
    "CocoResults",
    "DetectionPredictions",
    "inside_image",
    "save_detection_overlay",
]

#: ``predict``'s default lowest score for a detection to be written (both runtimes).
DETECTION_MIN_SCORE = 0.3


def inside_image(boxes: np.ndarray) -> np.ndarray:
    """Bool ``(N,)``: the boxes (xyxy, already clipped to the image) that kept a positive area; a box
    that lay wholly in the padding of the model's square frame clips to zero width or height."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


@dataclass
class DetectionPredictions:
    """What a detection ``predict`` wrote (``detections.json`` first, then the overlays) and what it could
    not read; both runtimes return it."""

    written: list[Path] = field(default_factory=list)
    images: int = 0
    detections: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.detections} detection(s) in {self.images} image(s): {self.written[0] if self.written else '-'}"
                 + (f" and {len(self.written) - 1} overlay(s)" if len(self.written) > 1 else "")]  # fmt: skip
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable image(s):")
            lines += [f"  {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


class CocoResults:
    """Accumulates detections image by image; :meth:`write` saves ``detections.json`` atomically.

    Args:
        class_names: the K names of labels ``0 … K-1`` (category ids ``1 … K``).
    """

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        self.record: dict[str, Any] = {
            "images": [],
            "annotations": [],
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(self.class_names)],
        }

    def add(
        self,
        file_name: str,
        height: int,
        width: int,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        masks: np.ndarray | None = None,
    ) -> None:
        """One image's detections: ``boxes`` float ``(N, 4)`` xyxy in its pixels, ``scores (N,)``, ``labels``
        int ``(N,)`` in ``0 … K-1``, optional bool ``masks (N, H, W)``."""
        image_id = len(self.record["images"]) + 1
        self.record["images"].append(
            {"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}
        )
        rles: list[Any] = [None] * len(boxes)
        if masks is not None and len(masks):
            rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0)))
        for box, score, label, rle in zip(np.asarray(boxes, float).tolist(), np.asarray(scores, float).tolist(),
                                          np.asarray(labels).tolist(), rles, strict=True):  # fmt: skip
            annotation: dict[str, Any] = {
                "id": len(self.record["annotations"]) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)],
                "area": round((box[2] - box[0]) * (box[3] - box[1]), 2), "score": round(float(score), 5), "iscrowd": 0,
            }  # fmt: skip
            if rle is not None:
                annotation["segmentation"] = {
                    "size": list(rle["size"]),
                    "counts": rle["counts"].decode("ascii"),
                }
            self.record["annotations"].append(annotation)

    @property
    def detections(self) -> int:
        return len(self.record["annotations"])

    def write(self, path: Path) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.record, indent=1))
        return path


def save_detection_overlay(
    path: Path,
    image: np.ndarray,
    boxes: np.ndarray,
    labels: list[str],
    masks: np.ndarray | None = None,
    alpha: float = 0.4,
) -> Path:
    """``image`` uint8 ``(H, W, 3)`` with each mask tinted (one colour per detection, ``alpha``), each
    box outlined in red and its text above it, saved to ``path`` (PNG) atomically."""
    canvas = np.asarray(image, np.uint8).copy()
    if masks is not None and len(masks):
        palette = default_palette(max(2, len(masks) + 1))[1:]  # (N, 3); colour 0 is the background's
        for mask, colour in zip(np.asarray(masks, bool), palette, strict=False):
            canvas[mask] = ((1 - alpha) * canvas[mask] + alpha * colour).astype(np.uint8)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for box, text in zip(np.asarray(boxes, float).tolist(), labels, strict=True):
        draw.rectangle(box, outline=(255, 0, 0), width=2)
        draw.text((box[0] + 2, max(0.0, box[1] - 11)), text, fill=(255, 0, 0))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
