"""The candidate masks of :class:`~anydistill.promptable.amg.AutomaticMaskGenerator` between its steps.

Masks are kept as COCO RLE with their boxes, predicted IoUs, prompt points, stability scores and crop
boxes as parallel fields; the steps select rows (filters, NMS) and concatenate batches and crops.
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/276024136981fecaf22e2620414831582e30fc13/segment_anything/automatic_mask_generator.py

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchvision.ops.boxes import batched_nms


@dataclass
class _Candidates:
    """Kept masks as parallel fields; ``rles`` is a list, the rest ``(N, ...)`` CPU tensors."""

    rles: list[dict[str, Any]] = field(default_factory=list)
    boxes: Tensor = field(
        default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64)
    )  # (N, 4) XYXY image px
    iou_preds: Tensor = field(default_factory=lambda: torch.zeros(0))  # (N,)
    points: Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64))  # (N, 2) image px
    stability: Tensor = field(default_factory=lambda: torch.zeros(0))  # (N,)
    crop_boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64))  # (N, 4) XYXY

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, keep: Tensor) -> _Candidates:
        """Rows ``keep`` (int indices, in that order)."""
        keep = keep.cpu()
        return _Candidates(
            rles=[self.rles[i] for i in keep.tolist()],
            boxes=self.boxes[keep],
            iou_preds=self.iou_preds[keep],
            points=self.points[keep],
            stability=self.stability[keep],
            crop_boxes=self.crop_boxes[keep],
        )

    @staticmethod
    def cat(parts: list[_Candidates]) -> _Candidates:
        if not parts:
            return _Candidates()
        return _Candidates(
            rles=[r for p in parts for r in p.rles],
            boxes=torch.cat([p.boxes for p in parts]),
            iou_preds=torch.cat([p.iou_preds for p in parts]),
            points=torch.cat([p.points for p in parts]),
            stability=torch.cat([p.stability for p in parts]),
            crop_boxes=torch.cat([p.crop_boxes for p in parts]),
        )


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Class-agnostic NMS: indices kept, by decreasing score."""
    return batched_nms(boxes.float(), scores, torch.zeros(len(boxes), dtype=torch.int64), iou_threshold)
