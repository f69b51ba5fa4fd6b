"""A trained anydistill model (a ``best.ckpt``/``last.ckpt``) as a teacher.

The usual first step of the Depth Anything recipe: train a teacher on the labeled images, then let it
pseudo-label the unlabeled ones. Its encoder can also serve as the frozen semantic encoder
(:meth:`AnydistillTeacher.features`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from anydistill.inference import load_student
from anydistill.teachers.base import Teacher, fit_to_multiple, resize


class AnydistillTeacher(Teacher):
    """Wraps the network of an anydistill training checkpoint (:func:`anydistill.inference.load_student`).

    Structure: ``images01 (B, 3, H, W)`` → resize (keep aspect, antialiased bilinear) to the working size
    ``(h', w')``, long side ``image_size``, each side a multiple of the model's ``input_multiple`` →
    ``model(normalize(x))`` ``(B, C, h', w')`` → bilinear back to ``(B, C, H, W)``. No padding.

    Args:
        checkpoint_path: an anydistill training checkpoint (``.ckpt``).
        image_size: working long side (default: the size the model was evaluated/trained at).
        device: where to load it.

    Attributes: ``task`` ("depth" or "semantic", from the checkpoint), ``class_names``,
    ``feature_dim``/``feature_stride`` of the deepest backbone map.
    """

    def __init__(
        self,
        checkpoint_path: str | Path,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        student = load_student(checkpoint_path, device="cpu")
        self.model = student.module.model
        self.task = "depth" if student.task == "depth" else "semantic"
        self.class_names = list(student.classes.names)
        self.multiple = int(self.model.input_multiple)
        self.image_size = int(image_size or student.image_size)
        self.feature_dim = int(self.model.feature_channels[-1])
        self.feature_stride = int(self.model.feature_reductions[-1])
        self._freeze(
            {
                "hyper_parameters": dict(student.module.hparams),
                "image_size": self.image_size,
                "multiple": self.multiple,
            }
        )
        self.to(device)

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network sees for an ``height x width`` input (long side ≈ ``image_size``)."""
        return fit_to_multiple(height, width, self.multiple, self.image_size)

    def _predict(self, images01: Tensor) -> Tensor:
        size = images01.shape[-2:]
        x = resize(images01, self.working_size(*size))  # (B, 3, h', w')
        out = self.model(self.model.normalize(x))  # (B, C, h', w')
        return resize(out, size, antialias=False)  # (B, C, H, W)

    def _features(self, images01: Tensor) -> Tensor:
        x = resize(images01, self.working_size(*images01.shape[-2:]))  # (B, 3, h', w')
        return self.model.forward_features(self.model.normalize(x))[-1]  # (B, C, h' / r, w' / r)
