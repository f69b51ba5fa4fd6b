"""Evaluation: depth and segmentation metrics (torchmetrics-based, usable from Lightning), the interactive
protocol for promptable models, and checkpoint evaluation (:mod:`anydistill.eval.evaluate`)."""

from anydistill.eval.metrics import (
    DEPTH_METRIC_NAMES,
    DepthMetrics,
    SegmentationMetrics,
    binary_iou,
    depth_metrics,
    iou_from_confusion,
    per_image_depth_metrics,
)

__all__ = [
    "DEPTH_METRIC_NAMES",
    "per_image_depth_metrics",
    "depth_metrics",
    "DepthMetrics",
    "iou_from_confusion",
    "SegmentationMetrics",
    "binary_iou",
]
