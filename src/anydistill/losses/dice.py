"""Soft dice losses [1] (sigmoid for binary / multi-label masks, softmax for multi-class), with the
conventions of :mod:`anydistill.losses.segmentation`.

- [1] Milletari et al., "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
  Segmentation", 3DV 2016, https://arxiv.org/abs/1606.04797
- [2] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643 (focal:dice = 20:1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.losses.segmentation import Reduction, _check_binary, _check_multiclass, _reduce, _upcast

__all__ = [
    "dice_loss",
    "softmax_dice_loss",
    "DiceLoss",
    "SoftmaxDiceLoss",
]


def dice_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor | None = None,
    eps: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Soft dice loss [1] on sigmoid probabilities, in Segment Anything's [2] form.

        L = 1 − (2 Σ_i p_i g_i + eps) / (Σ_i p_i + Σ_i g_i + eps),   p = sigmoid(logits)

    computed per mask (sums over the last two dimensions, restricted to ``valid``), then reduced over
    masks. ``eps`` (1, like SAM) keeps empty masks finite: an empty target with ``p → 0`` gives ``L → 0``.
    Since ``p`` never reaches exactly 0 or 1, a perfect prediction gives ``L ≈ 0`` (below 1e-6 for
    logits of magnitude ≥ 20 on a few hundred pixels), not exactly 0.

    Args:
        logits: ``(..., H, W)``, e.g. ``(B, H, W)`` or ``(B, N, H, W)``.
        targets: float in {0, 1}, same shape.
        valid: optional bool, same shape.
        eps: smoothing constant (> 0).
        reduction: ``"mean"`` / ``"sum"`` over masks, or ``"none"`` → ``(...)`` one value per mask.

    Returns:
        scalar loss, or one loss per mask.
    """
    # Adapted from https://github.com/facebookresearch/detr/blob/9a4b93a79b6ddaf2636d8e9bb12420e61b7ebdfc/models/segmentation.py (dice_loss, used by SAM)
    _check_binary(logits, targets, valid)
    if logits.dim() < 2:
        raise ValueError(f"logits must be (..., H, W), got {tuple(logits.shape)}")
    p = _upcast(logits).sigmoid()
    g = targets.to(p.dtype)
    if valid is not None:
        p = torch.where(valid, p, p.new_zeros(()))
        g = torch.where(valid, g, g.new_zeros(()))
    inter = (p * g).sum(dim=(-2, -1))  # (...)
    denom = p.sum(dim=(-2, -1)) + g.sum(dim=(-2, -1))  # (...)
    loss = 1.0 - (2.0 * inter + eps) / (denom + eps)  # (...)
    return _reduce(loss, None, reduction)


def softmax_dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    eps: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Multi-class soft dice [1] on softmax probabilities, with an ignore index.

        L_{b,c} = 1 − (2 Σ_i p_{b,i,c} g_{b,i,c} + eps) / (Σ_i p_{b,i,c} + Σ_i g_{b,i,c} + eps)

    with ``p = softmax(logits)`` over classes, ``g`` the one-hot target, and sums over the non-ignored
    pixels of image ``b``. ``"mean"`` averages over every (image, class) pair; a class absent from an
    image and predicted nowhere gives ≈ 0 there thanks to ``eps``. Zero only approximately for a perfect
    prediction (softmax never reaches 1).

    Args:
        logits: ``(B, C, H, W)``.
        target: ``(B, H, W)`` class ids, ``ignore_index`` skipped.
        ignore_index: id of pixels to skip.
        eps: smoothing constant (> 0).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` → ``(B, C)``.

    Returns:
        scalar loss, or ``(B, C)`` for ``reduction="none"``.
    """
    _check_multiclass(logits, target)
    num_classes = logits.shape[1]
    counted = (target != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    safe_target = torch.where(target != ignore_index, target, torch.zeros_like(target)).long()  # (B, H, W)
    p = _upcast(logits).softmax(dim=1)  # (B, C, H, W)
    p = torch.where(counted, p, p.new_zeros(()))
    g = F.one_hot(safe_target, num_classes).movedim(-1, 1).to(p.dtype) * counted  # (B, C, H, W)
    dims = tuple(range(2, logits.dim()))
    inter = (p * g).sum(dim=dims)  # (B, C)
    denom = p.sum(dim=dims) + g.sum(dim=dims)  # (B, C)
    loss = 1.0 - (2.0 * inter + eps) / (denom + eps)  # (B, C)
    return _reduce(loss, None, reduction)


class DiceLoss(nn.Module):
    """Binary soft dice loss on sigmoid probabilities (SAM's form); see :func:`dice_loss`.

    Shapes: ``logits`` and ``targets`` ``(..., H, W)``; ``valid`` optional bool, same shape.
    """

    def __init__(self, eps: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.eps = eps
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
        return dice_loss(logits, targets, valid, self.eps, self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"


class SoftmaxDiceLoss(nn.Module):
    """Multi-class soft dice with an ignore index; see :func:`softmax_dice_loss`.

    Shapes: ``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` int64.
    """

    def __init__(self, ignore_index: int = 255, eps: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.eps = eps
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return softmax_dice_loss(logits, target, self.ignore_index, self.eps, self.reduction)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, eps={self.eps}, reduction={self.reduction!r}"
