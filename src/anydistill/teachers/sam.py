"""A Segment Anything model's image encoder as a teacher (MobileSAM-style encoder distillation).

The teacher pass caches its image embeddings (``feat``, ``(256, S/16, S/16)`` fp16) once; a small
student encoder then learns to regress them (:mod:`anydistill.methods.sam_distill`), so the big
encoder never runs during the student's training.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.data.instances import preprocess_shape
from anydistill.teachers.base import Teacher


def sam_resize(images01: Tensor, img_size: int) -> Tensor:
    """SAM's resize for a ``(B, 3, H, W)`` [0, 1] batch: ``(B, 3, h, w)`` in 0..255 with longest side
    ``img_size`` (antialiased bilinear, rounded to integers like a uint8 image, exactly as
    :func:`anydistill.data.instances.resize_longest_side` does for the student's input). Padding is
    left to ``Sam.preprocess`` (after normalisation, as upstream)."""
    height, width = images01.shape[-2:]
    h, w = preprocess_shape(height, width, img_size)
    x = images01 * 255.0  # (B, 3, H, W)
    if (h, w) != (height, width):
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255)  # (B, 3, h, w): the student reads the same uint8 values


class SamTeacher(Teacher):
    """``features(images01 (B, 3, H, W)) -> (B, 256, S/16, S/16)``: the image embedding of a SAM model
    (official segment-anything ``.pth``, or an anydistill promptable checkpoint) on SAM's own
    pre-processing (longest side to ``S = img_size``, normalise, pad).

    Args:
        checkpoint_path: the model, anything :func:`anydistill.promptable.loading.load_promptable` reads.
        device: where to run it.
    """

    task = "features"

    def __init__(self, checkpoint_path: str | Path, device: str | torch.device = "cpu") -> None:
        super().__init__()
        from anydistill.promptable.loading import load_promptable

        self.model = load_promptable(checkpoint_path)
        self.img_size = int(self.model.image_encoder.img_size)
        self.feature_dim = int(self.model.prompt_encoder.embed_dim)
        self.feature_stride = self.img_size // int(self.model.prompt_encoder.image_embedding_size[0])
        self._freeze({"img_size": self.img_size})  # weights + settings, not the file's name
        self.to(device)

    def _features(self, images01: Tensor) -> Tensor:
        x = sam_resize(images01, self.img_size)  # (B, 3, h, w)
        return self.model.image_encoder(self.model.preprocess(x))  # (B, 256, S/16, S/16)
