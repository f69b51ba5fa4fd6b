"""Segment Anything: the model (image encoder, prompt encoder, mask decoder), students, checkpoints.

Importing this package registers ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``, ``sam_tiny`` (the
default SAM student) and ``sam_small`` in :data:`anydistill.models.MODELS`. The numpy front end is
:class:`anydistill.promptable.SamPredictor`.
"""

from anydistill.models.sam.checkpoint import (
    anydistill_to_official,
    infer_vit_config,
    load_sam_weights,
    official_to_anydistill,
    read_sam_state_dict,
)
from anydistill.models.sam.from_checkpoint import load_sam_checkpoint
from anydistill.models.sam.image_encoders import SAM_VIT_CONFIGS, SamViTEncoder, StudentImageEncoder
from anydistill.models.sam.mask_decoder import MLP, MaskDecoder
from anydistill.models.sam.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from anydistill.models.sam.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD, Sam
from anydistill.models.sam.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from anydistill.models.sam.zoo import (
    DEFAULT_SAM_STUDENT,
    SAM_STUDENTS,
    sam_small,
    sam_tiny,
    sam_vit_b,
    sam_vit_h,
    sam_vit_l,
)

__all__ = [
    "DEFAULT_SAM_STUDENT",
    "MLP",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SAM_STUDENTS",
    "SAM_VIT_CONFIGS",
    "Attention",
    "MaskDecoder",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "Sam",
    "SamViTEncoder",
    "StudentImageEncoder",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "anydistill_to_official",
    "infer_vit_config",
    "load_sam_checkpoint",
    "load_sam_weights",
    "official_to_anydistill",
    "read_sam_state_dict",
    "sam_small",
    "sam_tiny",
    "sam_vit_b",
    "sam_vit_h",
    "sam_vit_l",
]
