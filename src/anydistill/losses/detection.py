"""Classification losses of dense one-stage detectors, for the focal-loss claim of RetinaNet [0].

A one-stage detector scores every anchor (~10⁴–10⁵ per image) against K classes; almost all anchors
are easy background. With ``A`` anchors, logits ``z (A, K)``, one-hot targets ``y (A, K)`` (all zero for a
background anchor) and ``valid (A,)`` (False for anchors between the matcher's IoU thresholds, or on a
crowd box), the three losses, each summed over valid anchors and classes (the detector divides the sum
by the number of positive anchors, RetinaNet's normalisation):

- ``"focal"``: FL(p_t) = −α_t (1 − p_t)^γ log p_t (α = 0.25, γ = 2): down-weights the easy anchors;
- ``"ce"``: binary cross-entropy −log p_t on every valid anchor (γ = 0, no α): the flood of easy
  negatives at full weight, the baseline the focal loss replaces;
- ``"ce_hard_negatives"``: binary cross-entropy on the positive anchors and only the
  ``neg_pos_ratio × #positives`` negative anchors of highest loss (online hard-example mining as in
  SSD [1], 3:1), the fix for the imbalance before the focal loss.

- [0] Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, https://arxiv.org/abs/1708.02002
- [1] Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, https://arxiv.org/abs/1512.02325
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.losses.focal import sigmoid_focal_loss

__all__ = ["DENSE_LOSSES", "DenseClassificationLoss", "dense_classification_loss"]

DenseLossKind = Literal["focal", "ce", "ce_hard_negatives"]
DENSE_LOSSES: tuple[str, ...] = ("focal", "ce", "ce_hard_negatives")


def dense_classification_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor,
    kind: DenseLossKind = "focal",
    alpha: float = 0.25,
    gamma: float = 2.0,
    neg_pos_ratio: float = 3.0,
) -> Tensor:
    """Summed classification loss of one image's anchors (see the module docstring for the formulas).

    Args:
        logits: ``(A, K)`` per-anchor, per-class logits.
        targets: ``(A, K)`` in {0, 1}; a positive anchor has a single 1.
        valid: ``(A,)`` bool; False anchors count nowhere.
        kind: ``"focal"``, ``"ce"`` or ``"ce_hard_negatives"``.
        alpha, gamma: the focal loss's (``"focal"`` only; ``alpha = -1``: no α weighting).
        neg_pos_ratio: negatives kept per positive (``"ce_hard_negatives"``; at least one negative is kept
            in an image without positives).

    Returns:
        scalar: the sum over the counted anchors and all K classes.
    """
    if logits.shape != targets.shape or logits.ndim != 2 or valid.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits and targets (A, K) and valid (A,), got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}, {tuple(valid.shape)}"
        )
    if kind == "focal":
        return sigmoid_focal_loss(logits[valid], targets[valid], alpha=alpha, gamma=gamma, reduction="sum")
    per_anchor = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").sum(
        1
    )  # (A,)
    if kind == "ce":
        return per_anchor[valid].sum()
    if kind != "ce_hard_negatives":
        raise ValueError(f"kind must be one of {', '.join(DENSE_LOSSES)}, got {kind!r}")
    if neg_pos_ratio <= 0:
        raise ValueError(f"neg_pos_ratio must be > 0, got {neg_pos_ratio}")
    positive = valid & (targets.sum(1) > 0)  # (A,)
    negative = valid & ~positive
    n_neg = min(int(negative.sum()), max(1, round(neg_pos_ratio * int(positive.sum()))))
    hardest = per_anchor.detach().masked_fill(~negative, float("-inf")).topk(n_neg).indices  # (n_neg,)
    return per_anchor[positive].sum() + per_anchor[hardest].sum()


class DenseClassificationLoss(nn.Module):
    """:func:`dense_classification_loss` as a module: ``(logits (A, K), targets (A, K), valid (A,)) →
    scalar sum``, the callable :meth:`anydistill.models.detection.DetectionModel.set_classification_loss`
    takes."""

    def __init__(
        self,
        kind: DenseLossKind = "focal",
        alpha: float = 0.25,
        gamma: float = 2.0,
        neg_pos_ratio: float = 3.0,
    ) -> None:
        super().__init__()
        if kind not in DENSE_LOSSES:
            raise ValueError(f"kind must be one of {', '.join(DENSE_LOSSES)}, got {kind!r}")
        self.kind, self.alpha, self.gamma, self.neg_pos_ratio = kind, alpha, gamma, neg_pos_ratio

    def forward(self, logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        return dense_classification_loss(
            logits, targets, valid, self.kind, self.alpha, self.gamma, self.neg_pos_ratio
        )

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, alpha={self.alpha}, gamma={self.gamma}, neg_pos_ratio={self.neg_pos_ratio}"
        )
