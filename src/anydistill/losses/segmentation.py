"""Segmentation losses: cross-entropy, focal (sigmoid and softmax) and dice (binary and multi-class).

Conventions: multi-class logits are ``(B, C, H, W)`` with integer targets ``(B, H, W)`` where
``ignore_index`` (255) marks pixels that count nowhere; binary / multi-label mask logits have any
shape (``(B, H, W)``, ``(B, N, H, W)``) with float targets in {0, 1} of the same shape and an optional
bool ``valid`` mask. Every "mean" divides by the number of counted pixels and is 0 (never NaN) when
nothing is counted.

- [0] Lin et al., "Focal Loss for Dense Object Detection" (RetinaNet), ICCV 2017,
  https://arxiv.org/abs/1708.02002
- [1] Milletari et al., "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
  Segmentation", 3DV 2016, https://arxiv.org/abs/1606.04797
- [2] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643 (focal:dice = 20:1)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

__all__ = [
    "cross_entropy",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "dice_loss",
    "softmax_dice_loss",
    "SegmentationCrossEntropy",
    "FocalLoss",
    "SoftmaxFocalLoss",
    "DiceLoss",
    "SoftmaxDiceLoss",
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
    # Adapted from https://github.com/facebookresearch/detr/blob/main/models/segmentation.py (dice_loss, used by SAM)
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


