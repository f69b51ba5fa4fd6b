"""A Segment Anything model's image encoder as a teacher (MobileSAM-style encoder distillation).

The teacher pass caches its image embeddings (``feat``, ``(256, S/16, S/16)`` fp16) once; a small
student encoder then learns to regress them (:mod:`anydistill.methods.sam_distill`), so the big
encoder never runs during the student's training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from anydistill.preprocess import Preprocess
from anydistill.promptable.loading import load_promptable
from anydistill.teachers.base import Teacher


def sam_resize(images01: Tensor, img_size: int) -> Tensor:
    """SAM's resize for a ``(B, 3, H, W)`` [0, 1] batch: ``(B, 3, h, w)`` in 0..255 with longest side
    ``img_size``, rounded to integers like a uint8 image (``Preprocess.sam(img_size).resize_batch``, the
    same rule :func:`anydistill.data.instances.resize_longest_side` applies to the student's input).
    Padding is left to ``Sam.preprocess`` (after normalisation, as upstream)."""
    return Preprocess.sam(img_size).resize_batch(images01)


class SamTeacher(Teacher):
    """``features(images01 (B, 3, H, W)) -> (B, 256, S/16, S/16)``: the image embedding of a SAM model
    (official segment-anything ``.pth``, or an anydistill promptable checkpoint) on SAM's own
    pre-processing (longest side to ``S = img_size``, normalise, pad): ``preprocess``, the model's
    :meth:`~anydistill.models.sam.Sam.preprocess_spec`.

    Args:
        checkpoint_path: the model, anything :func:`anydistill.loading.load_model` reads.
        device: where to run it.
    """

    task = "features"

    def __init__(self, checkpoint_path: str | Path, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.model = load_promptable(checkpoint_path)
        self.img_size = int(self.model.image_encoder.img_size)
        self.preprocess: Preprocess = self.model.preprocess_spec()  # (B, 3, H, W) [0, 1] → (B, 3, S, S)
        self.feature_dim = int(self.model.prompt_encoder.embed_dim)
        self.feature_stride = self.img_size // int(self.model.prompt_encoder.image_embedding_size[0])
        self._freeze({"img_size": self.img_size})  # weights + settings, not the file's name
        self.to(device)

    def _features(self, images01: Tensor) -> Tensor:
        return self.model.image_encoder(self.preprocess(images01))  # (B, 256, S/16, S/16)
