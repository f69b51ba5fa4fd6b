"""A trained anydistill model (a ``best.ckpt``/``last.ckpt``) as a teacher.

The usual first step of the Depth Anything recipe: train a teacher on the labeled images, then let it
pseudo-label the unlabeled ones. Its encoder can also serve as the frozen semantic encoder
(:meth:`AnydistillTeacher.features`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from anydistill.errors import DataError
from anydistill.loading import load_model
from anydistill.preprocess import Preprocess
from anydistill.teachers.base import Teacher, resize


class AnydistillTeacher(Teacher):
    """Wraps the network of an anydistill training checkpoint (:func:`anydistill.loading.load_model`).

    Structure: ``images01 (B, 3, H, W)`` → ``preprocess``: resize (keep aspect, antialiased bilinear) to
    the working size ``(h', w')``, long side ``image_size``, each side a multiple of the model's
    ``input_multiple`` (resize ``"long_side_multiple"``, no padding), normalise with the model's
    ``pixel_mean``/``pixel_std`` → ``model(x)`` ``(B, C, h', w')`` → bilinear back to ``(B, C, H, W)``.

    Args:
        checkpoint_path: an anydistill training checkpoint (``.ckpt``).
        image_size: working long side (default: the size the model was evaluated/trained at).
        device: where to load it.

    Attributes: ``task`` ("depth" or "semantic", from the checkpoint), ``class_names``,
    ``feature_dim``/``feature_stride`` of the deepest backbone map.

    Taps of ``forward_intermediates``: the model's backbone maps (``feature_channels``,
    ``feature_reductions``, relative to the working size); with ``intermediates_only=False`` the
    prediction (exactly :meth:`predict`'s) comes from the same backbone pass.
    """

    def __init__(
        self,
        checkpoint_path: str | Path,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        student = load_model(checkpoint_path, device="cpu")
        if student.task not in ("depth", "semantic"):
            raise DataError(
                checkpoint_path, f"is a {student.task!r} model; this teacher takes a depth or semantic one"
            )
        self.model = student.model
        self.task = "depth" if student.task == "depth" else "semantic"
        self.class_names = list(student.classes.names)
        self.multiple = int(self.model.input_multiple)
        self.image_size = int(image_size or student.image_size)
        self.feature_dim = int(self.model.feature_channels[-1])
        self.feature_stride = int(self.model.feature_reductions[-1])
        stats = self.model.preprocess_spec(self.image_size)  # the model's own (fingerprinted) mean/std
        self.preprocess = Preprocess(
            size=self.image_size, mean=stats.mean, std=stats.std, resize="long_side_multiple", pad="none",
            multiple=self.multiple, interpolation="bilinear", antialias=True,
        )  # fmt: skip
        self._freeze(
            {
                "model": student.record["arch"],
                "image_size": self.image_size,
                "multiple": self.multiple,
            }
        )
        self.to(device)

    def _predict(self, images01: Tensor) -> Tensor:
        size = images01.shape[-2:]
        out = self.model(self.preprocess(images01))  # (B, C, h', w')
        return resize(out, size, antialias=False)  # (B, C, H, W)

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each tap (backbone map) of ``forward_intermediates``; the last is ``feature_dim``."""
        return list(self.model.feature_channels)

    @property
    def feature_reductions(self) -> list[int]:
        """Stride of each tap relative to the working size; the last is ``feature_stride``."""
        return list(self.model.feature_reductions)

    def _forward_intermediates(
        self, images01: Tensor, take: list[int], final: bool
    ) -> tuple[Tensor | None, list[Tensor]]:
        size = images01.shape[-2:]
        x = self.preprocess(images01)  # (B, 3, h', w') normalised
        if not final:
            return None, self.model.forward_intermediates(x, indices=take, intermediates_only=True)
        out, maps = self.model.forward_intermediates(x, indices=take)  # (B, C, h', w'), [(B, C_i, h_i, w_i)]
        return resize(out, size, antialias=False), maps  # (B, C, H, W) as _predict
