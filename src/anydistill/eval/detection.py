"""COCO box mAP of a detector, in each source image's own pixels.

torchmetrics' ``MeanAveragePrecision`` (pycocotools underneath: the COCO evaluation itself) does the
matching and averaging; what is ours is putting predictions and ground truth back into the source
image's frame first (the model saw the image resized to its input size), so that COCO's small / medium /
large area ranges (32², 96² pixels) mean what they mean on the user's images, and passing crowd flags
through (detections on crowd regions are ignored, not counted as false positives).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

__all__ = ["DETECTION_KEYS", "DetectionMetrics", "to_source_frame"]

#: The figures :meth:`DetectionMetrics.compute` returns (COCO's names; -1 where a size has no object).
DETECTION_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def to_source_frame(boxes: Tensor, scale: Tensor) -> Tensor:
    """``boxes (N, 4)`` xyxy in the model's frame → the source image's pixels; ``scale (2,)`` is
    ``(h / H, w / W)`` of :class:`~anydistill.data.detection.DetectionDataset`."""
    sy, sx = float(scale[0]), float(scale[1])
    return boxes / boxes.new_tensor([sx, sy, sx, sy])


class DetectionMetrics:
    """Accumulates a detector's predictions over batches; :meth:`compute` gives COCO mAP@[.5:.95], mAP50,
    mAP75, AP by object size and AR@100 (and per-class AP with ``class_metrics``).

    Args:
        class_metrics: also per-class AP (``map/<class name>``).
        class_names: names of labels ``0 … K-1`` (for the per-class keys).
    """

    def __init__(self, class_metrics: bool = False, class_names: list[str] | None = None) -> None:
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=class_metrics)
        self.class_names = class_names

    def reset(self) -> None:
        self.metric.reset()

    def update(self, predictions: list[dict[str, Tensor]], batch: dict[str, Any]) -> None:
        """``predictions``: the model's eval output for ``batch`` (a :func:`collate_detection` batch)."""
        preds, targets = [], []
        for pred, target, scale in zip(predictions, batch["targets"], batch["scale"], strict=True):
            preds.append({"boxes": to_source_frame(pred["boxes"].detach().float().cpu(), scale),
                          "scores": pred["scores"].detach().float().cpu(), "labels": pred["labels"].cpu()})  # fmt: skip
            targets.append({"boxes": to_source_frame(target["boxes"].float().cpu(), scale),
                            "labels": target["labels"].cpu(), "iscrowd": target["iscrowd"].cpu().long()})  # fmt: skip
        self.metric.update(preds, targets)

    def compute(self) -> dict[str, float]:
        out = self.metric.compute()
        figures = {k: float(out[k]) for k in DETECTION_KEYS}
        per_class = out.get("map_per_class")
        if self.metric.class_metrics and per_class is not None and per_class.numel() > 1:
            for label, ap in zip(out["classes"].tolist(), per_class.tolist(), strict=True):
                name = (
                    self.class_names[label]
                    if self.class_names and label < len(self.class_names)
                    else str(label)
                )
                figures[f"map/{name}"] = float(ap)
        return figures
