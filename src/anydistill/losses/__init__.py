"""Losses, one file per family (depth, segmentation, ...); each a plain function plus an ``nn.Module``."""

from anydistill.losses.depth import (
    GradientMatchingLoss,
    ScaleShiftInvariantLoss,
    align_scale_shift,
    gradient_matching_loss,
    normalize_median_mad,
    ssi_loss,
)
from anydistill.losses.distillation import (
    CutMixScaleShiftInvariantLoss,
    FeatureAlignmentLoss,
    KnowledgeDistillationLoss,
    cutmix_ssi_loss,
    feature_alignment_loss,
    kd_loss,
)
from anydistill.losses.segmentation import (
    DiceLoss,
    FocalLoss,
    SegmentationCrossEntropy,
    SoftmaxDiceLoss,
    SoftmaxFocalLoss,
    cross_entropy,
    dice_loss,
    sigmoid_focal_loss,
    softmax_dice_loss,
    softmax_focal_loss,
)

__all__ = [
    "align_scale_shift",
    "normalize_median_mad",
    "ssi_loss",
    "gradient_matching_loss",
    "ScaleShiftInvariantLoss",
    "GradientMatchingLoss",
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
    "feature_alignment_loss",
    "kd_loss",
    "cutmix_ssi_loss",
    "FeatureAlignmentLoss",
    "KnowledgeDistillationLoss",
    "CutMixScaleShiftInvariantLoss",
]
