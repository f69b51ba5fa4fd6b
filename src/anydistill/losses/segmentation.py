"""Segmentation losses: cross-entropy here, focal (sigmoid and softmax) in :mod:`anydistill.losses.focal`
and dice (binary and multi-class) in :mod:`anydistill.losses.dice`; this module also holds their shared
checks and reduction.

Conventions: multi-class logits are ``(B, C, H, W)`` with integer targets ``(B, H, W)`` where
``ignore_index`` (255) marks pixels that count nowhere; binary / multi-label mask logits have any
shape (``(B, H, W)``, ``(B, N, H, W)``) with float targets in {0, 1} of the same shape and an optional
bool ``valid`` mask. Every "mean" divides by the number of counted pixels and is 0 (never NaN) when
nothing is counted.

The references ([0] focal loss, [1] soft dice, [2] Segment Anything) are listed in those modules.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "cross_entropy",
    "SegmentationCrossEntropy",
]

Reduction = Literal["mean", "sum", "none"]


def _check_multiclass(logits: Tensor, target: Tensor) -> None:
    if logits.dim() < 2:
        raise ValueError(f"logits must be (B, C, ...), got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target must be (B, H, W) matching logits (B, C, H, W) = {tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class ids, got {target.dtype}")


def _check_binary(logits: Tensor, targets: Tensor, valid: Tensor | None) -> None:
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if valid is not None:
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
        if valid.shape != logits.shape:
            raise ValueError(
                f"valid must have the shape of logits {tuple(logits.shape)}, got {tuple(valid.shape)}"
            )


def _upcast(x: Tensor) -> Tensor:
    """float32 for half-precision inputs (autocast): sums over many pixels lose too much in fp16/bf16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _reduce(loss: Tensor, counted: Tensor | None, reduction: str) -> Tensor:
    """Reduces an elementwise loss; ``counted`` (bool, same shape) marks the elements of the mean."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        if counted is None:
            return loss.mean()
        return loss.sum() / counted.sum().clamp_min(1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Pixel-wise cross-entropy ``−Σ_i w_{y_i} log softmax(z_i)_{y_i} / Σ_i w_{y_i}`` over non-ignored pixels.

    Same value as ``F.cross_entropy(..., reduction="mean")`` whenever one pixel is counted, but 0 (with
    a graph) instead of NaN when every pixel is ``ignore_index``.

    Args:
        logits: ``(B, C, H, W)`` (any ``(B, C, ...)``).
        target: ``(B, H, W)`` int64 class ids; ``ignore_index`` is skipped.
        ignore_index: the id of pixels to skip.
        label_smoothing: as in ``F.cross_entropy``.
        weight: optional per-class weights ``(C,)``.

    Returns:
        scalar loss.
    """
    _check_multiclass(logits, target)
    target = target.long()
    total = F.cross_entropy(
        logits,
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    counted = target != ignore_index  # (B, H, W)
    if weight is None:
        denom = counted.sum().to(total.dtype)
    else:
        safe_target = torch.where(
            counted, target, torch.zeros_like(target)
        )  # (B, H, W), no out-of-range gather
        denom = (weight.to(total.dtype)[safe_target] * counted).sum()
    # With nothing counted the summed loss is exactly 0, so dividing by eps keeps 0 (and a graph).
    return total / denom.clamp_min(torch.finfo(total.dtype).tiny)


class SegmentationCrossEntropy(nn.Module):
    """Pixel-wise cross-entropy with an ignore index; see :func:`cross_entropy`.

    Shapes: ``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` int64.
    """

    def __init__(
        self, ignore_index: int = 255, label_smoothing: float = 0.0, weight: Tensor | None = None
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(logits, target, self.ignore_index, self.label_smoothing, self.weight)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"
