"""Losses, a file per family while it stays small (depth, ...), a file per loss once it grows (focal,
dice, kd, ...); each a plain function plus an ``nn.Module``."""

from anydistill.losses.classify_kd import ClassificationKDLoss, classification_kd_loss, soft_targets
from anydistill.losses.clip import CLIPLoss, clip_loss
from anydistill.losses.contrastive import (
    InfoNCELoss,
    KeyQueue,
    NTXentLoss,
    gather_keys,
    info_nce_loss,
    nt_xent_loss,
)
from anydistill.losses.cutmix import CutMixScaleShiftInvariantLoss, cutmix_ssi_loss
from anydistill.losses.depth import (
    GradientMatchingLoss,
    ScaleShiftInvariantLoss,
    align_scale_shift,
    depth_to_disparity,
    gradient_matching_loss,
    normalize_median_mad,
    ssi_loss,
)
from anydistill.losses.detection import DenseClassificationLoss, dense_classification_loss
from anydistill.losses.dice import DiceLoss, SoftmaxDiceLoss, dice_loss, softmax_dice_loss
from anydistill.losses.dino import DINOLoss, dino_loss
from anydistill.losses.feature_alignment import FeatureAlignmentLoss, feature_alignment_loss
from anydistill.losses.focal import FocalLoss, SoftmaxFocalLoss, sigmoid_focal_loss, softmax_focal_loss
from anydistill.losses.kd import KnowledgeDistillationLoss, kd_loss
from anydistill.losses.mae import MAELoss, mae_loss, patchify, unpatchify
from anydistill.losses.metric import MarginContrastiveLoss, TripletLoss, margin_contrastive_loss, triplet_loss
from anydistill.losses.segmentation import SegmentationCrossEntropy, cross_entropy

__all__ = [
    "DenseClassificationLoss",
    "dense_classification_loss",
    "align_scale_shift",
    "depth_to_disparity",
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
    "classification_kd_loss",
    "soft_targets",
    "cutmix_ssi_loss",
    "FeatureAlignmentLoss",
    "KnowledgeDistillationLoss",
    "ClassificationKDLoss",
    "CutMixScaleShiftInvariantLoss",
    "nt_xent_loss",
    "info_nce_loss",
    "gather_keys",
    "dino_loss",
    "patchify",
    "unpatchify",
    "mae_loss",
    "margin_contrastive_loss",
    "triplet_loss",
    "clip_loss",
    "NTXentLoss",
    "InfoNCELoss",
    "KeyQueue",
    "DINOLoss",
    "MAELoss",
    "MarginContrastiveLoss",
    "TripletLoss",
    "CLIPLoss",
]
