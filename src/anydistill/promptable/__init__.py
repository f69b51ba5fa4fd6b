"""Promptable segmentation: a SAM predictor (numpy in, masks out) and its resizing transform."""

from anydistill.promptable.predictor import SamPredictor
from anydistill.promptable.transforms import ResizeLongestSide

__all__ = ["ResizeLongestSide", "SamPredictor"]
