"""Focal losses [0] (sigmoid for binary / multi-label masks, softmax for multi-class), with the
conventions of :mod:`anydistill.losses.segmentation`.

- [0] Lin et al., "Focal Loss for Dense Object Detection" (RetinaNet), ICCV 2017,
  https://arxiv.org/abs/1708.02002
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from anydistill.losses.segmentation import Reduction, _check_binary, _check_multiclass, _reduce, _upcast

__all__ = [
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "FocalLoss",
    "SoftmaxFocalLoss",
]


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
    valid: Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss of RetinaNet [0] for binary / multi-label masks, with an optional valid mask.

        FL(p_t) = −α_t (1 − p_t)^γ log(p_t),   p_t = p if y = 1 else 1 − p,  α_t = α if y = 1 else 1 − α

    with ``p = sigmoid(logits)``; ``alpha = -1`` disables the α weighting. A thin wrapper of
    ``torchvision.ops.sigmoid_focal_loss`` that zeroes the elements outside ``valid``; ``"mean"`` divides
    by the number of valid elements (all elements when ``valid`` is None, i.e. exactly torchvision).

    Args:
        logits: any shape, e.g. ``(B, N, H, W)`` mask logits.
        targets: float in {0, 1} (soft targets allowed), same shape.
        alpha: positive-class weight in [0, 1], or -1.
        gamma: focusing exponent (>= 0).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (elementwise, 0 outside ``valid``).
        valid: optional bool, same shape; False elements count nowhere.

    Returns:
        scalar loss, or the elementwise loss for ``reduction="none"``.
    """
    _check_binary(logits, targets, valid)
    logits = _upcast(logits)
    loss = torchvision.ops.sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma)
    if valid is not None:
        loss = torch.where(valid, loss, loss.new_zeros(()))
    return _reduce(loss, valid, reduction)


def _focal_factor(base: Tensor, gamma: float) -> Tensor:
    """``base ** gamma`` with finite gradients at ``base = 0`` for any ``gamma >= 0``."""
    if gamma == 0:
        return torch.ones_like(base)
    saturated = base == 0
    # d/dx x^γ is inf at 0 for γ < 1; the factor is 0 there and carries no useful gradient.
    return torch.where(saturated, base.detach().pow(gamma), base.masked_fill(saturated, 1.0).pow(gamma))


def softmax_focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float | Tensor | None = None,
    gamma: float = 2.0,
    ignore_index: int = 255,
    reduction: Reduction = "mean",
) -> Tensor:
    """Multi-class focal loss [0] on softmax probabilities, with an ignore index.

        FL_i = −α_{y_i} (1 − p_{i,y_i})^γ log p_{i,y_i},   p_i = softmax(z_i)

    ``alpha``: None → 1 for every class; a float → the same constant for every class; a tensor
    ``(C,)`` → per-class weights. ``"mean"`` averages over the non-ignored pixels (not weighted by α).

    Hand-written because kornia's ``focal_loss`` gives a scalar α the background meaning (class 0
    gets 1 − α) and its mean also counts ignored pixels.

    Args:
        logits: ``(B, C, H, W)``.
        target: ``(B, H, W)`` class ids, ``ignore_index`` skipped.
        alpha: see above.
        gamma: focusing exponent (>= 0); 0 gives (α-weighted) cross-entropy.
        ignore_index: id of the pixels to skip.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B, H, W)``, 0 on ignored pixels).

    Returns:
        scalar loss, or ``(B, H, W)`` for ``reduction="none"``.
    """
    _check_multiclass(logits, target)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    counted = target != ignore_index  # (B, H, W)
    safe_target = torch.where(counted, target, torch.zeros_like(target)).long()  # (B, H, W)
    log_p = F.log_softmax(_upcast(logits), dim=1)  # (B, C, H, W)
    log_pt = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)  # (B, H, W)
    loss = -_focal_factor((1.0 - log_pt.exp()).clamp_min(0.0), gamma) * log_pt  # (B, H, W)
    if isinstance(alpha, Tensor):
        if alpha.shape != (logits.shape[1],):
            raise ValueError(f"alpha tensor must be (C,) = ({logits.shape[1]},), got {tuple(alpha.shape)}")
        loss = alpha.to(loss)[safe_target] * loss
    elif alpha is not None:
        loss = float(alpha) * loss
    loss = torch.where(counted, loss, loss.new_zeros(()))
    return _reduce(loss, counted, reduction)


class FocalLoss(nn.Module):
    """Sigmoid focal loss for binary / multi-label masks; see :func:`sigmoid_focal_loss`.

    Shapes: ``logits`` and ``targets`` any shape, e.g. ``(B, N, H, W)``; ``valid`` optional bool, same shape.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, self.reduction, valid)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class SoftmaxFocalLoss(nn.Module):
    """Multi-class focal loss with an ignore index; see :func:`softmax_focal_loss`.

    Shapes: ``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` int64.
    """

    def __init__(
        self,
        alpha: float | Tensor | None = None,
        gamma: float = 2.0,
        ignore_index: int = 255,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self.scalar_alpha = None if isinstance(alpha, Tensor) else alpha
        self.register_buffer("alpha", alpha if isinstance(alpha, Tensor) else None, persistent=False)
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        alpha = self.alpha if self.alpha is not None else self.scalar_alpha
        return softmax_focal_loss(logits, target, alpha, self.gamma, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
