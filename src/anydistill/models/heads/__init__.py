"""Dense-prediction heads: DPT depth head (Depth Anything), FPN and U-Net segmentation decoders."""

from anydistill.models.heads.dpt import DPTHead, FeatureFusionBlock, ResidualConvUnit, pyramid_factors
from anydistill.models.heads.fpn import FPNDecoder
from anydistill.models.heads.unet import UNetDecoder

__all__ = [
    "DPTHead",
    "FPNDecoder",
    "FeatureFusionBlock",
    "ResidualConvUnit",
    "pyramid_factors",
    "UNetDecoder",
]
