"""Dense-prediction heads: DPT depth head (Depth Anything) and FPN segmentation decoder."""

from anydistill.models.heads.dpt import DPTHead, FeatureFusionBlock, ResidualConvUnit, pyramid_factors
from anydistill.models.heads.fpn import FPNDecoder

__all__ = ["DPTHead", "FPNDecoder", "FeatureFusionBlock", "ResidualConvUnit", "pyramid_factors"]
