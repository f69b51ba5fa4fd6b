"""Students and their parts: a timm backbone adapter, dense heads, task models and named builders."""

from anydistill.models import cifar_resnet, sam  # noqa: F401  (register resnet*_cifar with timm, sam_* in MODELS)
from anydistill.models.backbones import TimmBackbone
from anydistill.models.classifier import DEFAULT_CLASSIFY_STUDENT, TimmClassifier, build_classifier
from anydistill.models.heads import DPTHead, FPNDecoder
from anydistill.models.task_models import DepthModel, SegmentationModel
from anydistill.models.zoo import (
    DEFAULT_DEPTH_STUDENT,
    MODELS,
    build_model,
    list_models,
    load_model_weights,
)

__all__ = [
    "DEFAULT_CLASSIFY_STUDENT",
    "DEFAULT_DEPTH_STUDENT",
    "MODELS",
    "DPTHead",
    "DepthModel",
    "FPNDecoder",
    "SegmentationModel",
    "TimmBackbone",
    "TimmClassifier",
    "build_classifier",
    "build_model",
    "list_models",
    "load_model_weights",
]
