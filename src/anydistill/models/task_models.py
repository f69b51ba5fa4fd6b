"""Task models that are handed their parts (segment-anything's ``Sam(image_encoder, ...)`` pattern).

``forward`` takes an already normalised batch and does no pre-processing; ``normalize`` turns a
[0, 1] image batch into that input with the model's own ``pixel_mean`` / ``pixel_std`` buffers, so the
constants travel with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn


class Backbone(Protocol):
    """What a task model needs from its backbone (e.g. :class:`~anydistill.models.TimmBackbone`)."""

    channels: list[int]
    reductions: list[int]
    input_multiple: int

    def __call__(self, x: Tensor) -> list[Tensor]: ...


class _PyramidTaskModel(nn.Module):
    """Shared part: backbone + per-pixel head, normalisation buffers, feature access."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        pixel_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        pixel_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1))

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this (patch size or coarsest CNN stride)."""
        return int(self.backbone.input_multiple)

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each map returned by :meth:`forward_features`."""
        return list(self.backbone.channels)

    @property
    def feature_reductions(self) -> list[int]:
        """Stride of each map returned by :meth:`forward_features`."""
        return list(self.backbone.reductions)

    def normalize(self, x01: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] → ``(x - pixel_mean) / pixel_std``, the input of :meth:`forward`."""
        return (x01 - self.pixel_mean) / self.pixel_std

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Backbone maps ``[(B, C_i, H / r_i, W / r_i)]`` of a normalised batch (for feature distillation)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x), x.shape[-2:])


class DepthModel(_PyramidTaskModel):
    """Monocular relative-depth model: ``disparity = head(backbone(x))``.

    Args:
        backbone: multi-scale feature extractor (``channels``, ``reductions``, ``input_multiple``).
        head: maps the backbone's list of maps and the image size to (B, 1, H, W), e.g. ``DPTHead``.
        pixel_mean, pixel_std: normalisation on the [0, 1] scale (ImageNet by default), stored as buffers.

    ``forward(x (B, 3, H, W) normalised) -> disparity (B, 1, H, W) ≥ 0`` (relative, affine-invariant).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        pixel_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        pixel_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__(backbone, head, pixel_mean, pixel_std)


class SegmentationModel(_PyramidTaskModel):
    """Semantic segmentation model: ``logits = decoder(backbone(x))``.

    Args:
        backbone: multi-scale feature extractor (``channels``, ``reductions``, ``input_multiple``).
        decoder: maps the backbone's list of maps and the image size to (B, K, H, W), e.g. ``FPNDecoder``.
        pixel_mean, pixel_std: normalisation on the [0, 1] scale (ImageNet by default), stored as buffers.

    ``forward(x (B, 3, H, W) normalised) -> logits (B, K, H, W)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder: nn.Module,
        pixel_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        pixel_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__(backbone, decoder, pixel_mean, pixel_std)

    @property
    def decoder(self) -> nn.Module:
        return self.head

    @property
    def num_classes(self) -> int:
        return int(self.head.num_classes)
