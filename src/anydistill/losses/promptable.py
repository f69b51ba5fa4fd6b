"""Segment Anything's mask loss: focal + dice on the best of several masks, plus IoU-head regression.

For one prompt with M predicted masks (M = 3 for an ambiguous prompt, else 1) and ground truth ``g``:

    L_m = w_focal · FL(m, g) + w_dice · Dice(m, g)                (per mask; SAM: 20 : 1)
    m*  = argmin_m L_m                                            (only the best mask is back-propagated)
    L   = L_{m*} + w_iou · MSE(iou_pred, IoU(m > 0, g))            (SAM: w_iou = 1)

``FL`` is the sigmoid focal loss (α = 0.25, γ = 2) averaged over the valid pixels of the mask, ``Dice``
the soft dice of :func:`~anydistill.losses.dice.dice_loss` (smoothing 1). The IoU target is the
IoU of the *binarised* mask (``logits > 0``) with the ground truth, without gradient; an empty
prediction of an empty ground truth has IoU 1.

Which masks train the IoU head: the SAM paper says only "MSE between the IoU prediction and the
predicted mask's IoU with the ground truth"; SAM 2's training code (by the same authors) supervises
only the selected mask "to be consistent w/ SAM" by default, and its SAM 2.1 fine-tuning configs turn
on ``supervise_all_iou`` (all M masks, averaged). ``iou_supervision="selected"`` (default) is the
former, ``"all"`` the latter; the head ranks the M masks at inference, which argues for ``"all"``.

- [0] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643 (§3, appendix A)
- [1] Ravi et al., "SAM 2", 2024, https://arxiv.org/abs/2408.00714; reference code
  https://github.com/facebookresearch/sam2/blob/1f9c9588890f874be99d0f88619c0ebbaf417b17/training/loss_fns.py (MultiStepMultiMasksAndIous)
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from anydistill.losses.dice import dice_loss
from anydistill.losses.focal import sigmoid_focal_loss

__all__ = ["SamLoss", "SamLossOutput", "mask_ious", "sam_loss"]

IouSupervision = Literal["selected", "all"]


class SamLossOutput(NamedTuple):
    """The terms of :func:`sam_loss`; ``loss``, ``focal``, ``dice`` and ``iou`` are scalars for
    ``reduction="mean"`` and ``(B,)`` for ``"none"``."""

    loss: Tensor  # weighted total
    focal: Tensor  # focal loss of the selected mask (unweighted)
    dice: Tensor  # dice loss of the selected mask (unweighted)
    iou: Tensor  # IoU-head MSE (unweighted)
    best: Tensor  # (B,) index of the selected mask
    actual_iou: Tensor  # (B, M) IoU of every binarised mask with the ground truth (no gradient)


def binary_iou(pred_mask: Tensor, gt_mask: Tensor, empty_value: float = 1.0) -> Tensor:
    """IoU of binary masks, one value per mask: ``|P ∩ G| / |P ∪ G|`` over the last two dimensions.

    Args:
        pred_mask: bool ``(..., H, W)`` (threshold logits yourself, e.g. ``logits > 0`` as SAM).
        gt_mask: bool, same shape.
        empty_value: the IoU when both masks are empty (default 1: nothing to find, nothing found).

    Returns:
        ``(...)`` float32 IoUs.
    """
    if pred_mask.dtype != torch.bool or gt_mask.dtype != torch.bool:
        raise TypeError(
            f"pred_mask and gt_mask must be bool tensors, got {pred_mask.dtype} and {gt_mask.dtype}"
        )
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"pred_mask and gt_mask must have the same shape, got {tuple(pred_mask.shape)} and {tuple(gt_mask.shape)}"
        )
    if pred_mask.dim() < 2:
        raise ValueError(f"masks must be (..., H, W), got {tuple(pred_mask.shape)}")
    inter = (pred_mask & gt_mask).sum(dim=(-2, -1)).float()  # (...)
    union = (pred_mask | gt_mask).sum(dim=(-2, -1)).float()  # (...)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, empty_value))


def mask_ious(mask_logits: Tensor, gt: Tensor, valid: Tensor | None = None, threshold: float = 0.0) -> Tensor:
    """IoU of each binarised mask ``logits > threshold`` with the ground truth, over valid pixels.

    Args:
        mask_logits: ``(B, M, H, W)``.
        gt: ``(B, H, W)`` bool or {0, 1}.
        valid: optional bool ``(B, H, W)``.
        threshold: logit threshold (SAM's ``mask_threshold`` = 0).

    Returns:
        float32 ``(B, M)``, 1 where both masks are empty.
    """
    pred = mask_logits.detach() > threshold  # (B, M, H, W)
    target = (gt > 0)[:, None].expand_as(pred)  # (B, M, H, W)
    if valid is not None:
        keep = valid[:, None].expand_as(pred)
        pred, target = pred & keep, target & keep
    return binary_iou(pred, target)


def sam_loss(
    mask_logits: Tensor,
    gt: Tensor,
    iou_pred: Tensor,
    valid: Tensor | None = None,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    iou_supervision: IouSupervision = "selected",
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    reduction: Literal["mean", "none"] = "mean",
) -> SamLossOutput:
    """SAM's loss for B prompts with M candidate masks each (see the module docstring).

    Args:
        mask_logits: ``(B, M, H, W)`` mask logits at the resolution of ``gt``.
        gt: ``(B, H, W)`` ground-truth masks, bool or {0, 1}.
        iou_pred: ``(B, M)`` IoU-head predictions.
        valid: optional bool ``(B, H, W)``: pixels that count (False on image padding).
        focal_weight, dice_weight, iou_weight: term weights (SAM: 20, 1, 1).
        iou_supervision: ``"selected"`` (IoU loss on the selected mask only) or ``"all"`` (mean over M).
        focal_alpha, focal_gamma: focal-loss parameters (SAM: RetinaNet's 0.25, 2).
        reduction: ``"mean"`` over prompts or ``"none"``.

    Returns:
        a :class:`SamLossOutput`.
    """
    if mask_logits.dim() != 4:
        raise ValueError(f"mask_logits must be (B, M, H, W), got {tuple(mask_logits.shape)}")
    b, m, h, w = mask_logits.shape
    if gt.shape != (b, h, w):
        raise ValueError(f"gt must be (B, H, W) = {(b, h, w)}, got {tuple(gt.shape)}")
    if iou_pred.shape != (b, m):
        raise ValueError(f"iou_pred must be (B, M) = {(b, m)}, got {tuple(iou_pred.shape)}")
    if valid is not None and valid.shape != (b, h, w):
        raise ValueError(f"valid must be (B, H, W) = {(b, h, w)}, got {tuple(valid.shape)}")
    if iou_supervision not in ("selected", "all"):
        raise ValueError(f"iou_supervision must be 'selected' or 'all', got {iou_supervision!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")

    target = (gt > 0).to(mask_logits.dtype)[:, None].expand_as(mask_logits)  # (B, M, H, W)
    keep = valid[:, None].expand_as(mask_logits) if valid is not None else None  # (B, M, H, W)
    focal_map = sigmoid_focal_loss(mask_logits, target, focal_alpha, focal_gamma, "none", keep)
    counted = keep.sum(dim=(-2, -1)).clamp_min(1) if keep is not None else h * w  # (B, M) or int
    focal = focal_map.sum(dim=(-2, -1)) / counted  # (B, M)
    dice = dice_loss(mask_logits, target, keep, reduction="none")  # (B, M)
    per_mask = focal_weight * focal + dice_weight * dice  # (B, M)
    best = per_mask.detach().argmin(dim=1)  # (B,)
    rows = torch.arange(b, device=mask_logits.device)

    actual = mask_ious(mask_logits, gt, valid).to(iou_pred.dtype)  # (B, M)
    iou_err = (iou_pred - actual) ** 2  # (B, M)
    iou_term = iou_err[rows, best] if iou_supervision == "selected" else iou_err.mean(dim=1)  # (B,)
    loss = per_mask[rows, best] + iou_weight * iou_term  # (B,)
    terms = (loss, focal[rows, best], dice[rows, best], iou_term)
    if reduction == "mean":
        terms = tuple(t.mean() for t in terms)
    return SamLossOutput(*terms, best=best, actual_iou=actual)


class SamLoss(nn.Module):
    """SAM's multi-mask loss; see :func:`sam_loss`.

    Shapes: ``mask_logits`` ``(B, M, H, W)``, ``gt`` ``(B, H, W)``, ``iou_pred`` ``(B, M)``, ``valid``
    optional bool ``(B, H, W)``.
    """

    def __init__(
        self,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        iou_supervision: IouSupervision = "selected",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if iou_supervision not in ("selected", "all"):
            raise ValueError(f"iou_supervision must be 'selected' or 'all', got {iou_supervision!r}")
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.iou_weight = iou_weight
        self.iou_supervision: IouSupervision = iou_supervision
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(
        self,
        mask_logits: Tensor,
        gt: Tensor,
        iou_pred: Tensor,
        valid: Tensor | None = None,
        reduction: Literal["mean", "none"] = "mean",
    ) -> SamLossOutput:
        return sam_loss(
            mask_logits,
            gt,
            iou_pred,
            valid,
            self.focal_weight,
            self.dice_weight,
            self.iou_weight,
            self.iou_supervision,
            self.focal_alpha,
            self.focal_gamma,
            reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"focal_weight={self.focal_weight}, dice_weight={self.dice_weight}, "
            f"iou_weight={self.iou_weight}, iou_supervision={self.iou_supervision!r}"
        )
