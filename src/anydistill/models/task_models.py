"""Task models that are handed their parts (segment-anything's ``Sam(image_encoder, ...)`` pattern).

``forward`` takes an already normalised batch and does no pre-processing; ``normalize`` turns a
[0, 1] image batch into that input with the model's own ``pixel_mean`` / ``pixel_std`` buffers, so the
constants travel with the weights.

Feature API (shared with the SAM image encoders and the teachers): timm's ``forward_intermediates``.
A model has a fixed list of *taps* (here: the backbone's maps), described by ``feature_channels`` and
``feature_reductions``; :func:`take_indices` picks some of them exactly as timm's
``feature_take_indices`` does (``None`` = all, ``n`` = the last ``n``, a sequence = those indices,
negative ones counted from the end; returned in tap order, each once) and :func:`format_taps` lays
them out as maps ``(B, C, h, w)`` ("NCHW") or tokens ``(B, h * w, C)`` ("NLC").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from anydistill.preprocess import Preprocess


class Backbone(Protocol):
    """What a task model needs from its backbone (e.g. :class:`~anydistill.models.TimmBackbone`)."""

    channels: list[int]
    reductions: list[int]
    input_multiple: int

    def __call__(self, x: Tensor) -> list[Tensor]: ...


#: ``indices`` of ``forward_intermediates``: None (all taps), n (the last n), or tap indices.
FeatureIndices: TypeAlias = int | Sequence[int] | None
OUTPUT_FORMATS = ("NCHW", "NLC")


def take_indices(num_taps: int, indices: FeatureIndices = None) -> list[int]:
    """The taps ``indices`` selects out of ``num_taps``, as ascending absolute indices without repeats.

    Same selection as timm's ``feature_take_indices`` (``None`` → all, an int ``n`` → the last ``n``,
    a sequence → those indices, negative ones from the end) and the same order as timm's
    ``forward_intermediates`` returns them (tap order, whatever the order of ``indices``). Out-of-range
    or empty selections raise a ValueError (timm: an assertion).
    """
    if indices is None:
        return list(range(num_taps))
    if isinstance(indices, int):
        if not 0 < indices <= num_taps:
            raise ValueError(f"last-n indices={indices} is out of range (1 to {num_taps} taps)")
        return list(range(num_taps - indices, num_taps))
    take: set[int] = set()
    for i in indices:
        idx = num_taps + int(i) if i < 0 else int(i)
        if not 0 <= idx < num_taps:
            raise ValueError(f"tap index {i} is out of range ({-num_taps} to {num_taps - 1})")
        take.add(idx)
    if not take:
        raise ValueError("indices is an empty sequence; pass None for all taps")
    return sorted(take)


def check_output_fmt(output_fmt: str) -> None:
    """Raise a ValueError unless ``output_fmt`` is "NCHW" or "NLC"."""
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")


def format_taps(maps: Sequence[Tensor], output_fmt: str = "NCHW") -> list[Tensor]:
    """Maps ``[(B, C, h, w)]`` as they are ("NCHW") or as tokens ``[(B, h * w, C)]``, row-major ("NLC")."""
    check_output_fmt(output_fmt)
    if output_fmt == "NCHW":
        return list(maps)
    return [m.flatten(2).transpose(1, 2) for m in maps]  # (B, h * w, C)


def pooled_embedding(feature_map: Tensor) -> Tensor:
    """Global average of a map ``(B, C, h, w)`` → ``(B, C)``: the ``forward_embedding`` of every model."""
    return feature_map.mean(dim=(-2, -1))


class _PyramidTaskModel(nn.Module):
    """Shared part: backbone + per-pixel head, normalisation buffers, feature access.

    Feature API (timm's): the taps are the backbone's maps ``(B, C_i, H / r_i, W / r_i)`` with
    ``C_i = feature_channels[i]``, ``r_i = feature_reductions[i]``;
    ``pred, [deepest] = model.forward_intermediates(x, indices=1)`` gives the prediction and the
    deepest map from one backbone pass; :meth:`forward_embedding` pools the deepest map to ``(B, C)``.
    """

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
        """Channels of each tap (backbone map) of :meth:`forward_intermediates`, shallow to deep."""
        return list(self.backbone.channels)

    @property
    def feature_reductions(self) -> list[int]:
        """Stride (input size / map size) of each tap of :meth:`forward_intermediates`."""
        return list(self.backbone.reductions)

    def preprocess_spec(self, size: int) -> Preprocess:
        """How images become this model's input at long side ``size``: resize keeping the aspect, pad
        bottom/right with black to ``size x size``, normalise with this model's ``pixel_mean``/``pixel_std``
        (what :func:`~anydistill.data.transforms.eval_transforms` + :meth:`normalize` do)."""
        return Preprocess(
            size=int(size), mean=tuple(self.pixel_mean.flatten().tolist()), std=tuple(self.pixel_std.flatten().tolist()),
            resize="long_side", pad="square", multiple=self.input_multiple, pad_before_normalize=True,
        )  # fmt: skip

    def normalize(self, x01: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] → ``(x - pixel_mean) / pixel_std``, the input of :meth:`forward`."""
        return (x01 - self.pixel_mean) / self.pixel_std

    def forward_intermediates(
        self,
        x: Tensor,
        indices: FeatureIndices = None,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """One backbone pass → the head's prediction and the selected backbone maps (timm's API).

        Args:
            x: ``(B, 3, H, W)`` normalised, as :meth:`forward`.
            indices: taps to return (see :func:`take_indices`): None = all, n = the last n, or indices.
            output_fmt: "NCHW" → ``(B, C_i, H / r_i, W / r_i)``; "NLC" → ``(B, H / r_i * W / r_i, C_i)``.
            intermediates_only: return only the list of maps (the head does not run).

        Returns:
            ``[maps]`` if ``intermediates_only`` else ``(prediction, [maps])``, the prediction being
            exactly :meth:`forward`'s: ``(B, 1, H, W)`` disparity or ``(B, K, H, W)`` logits.
        """
        take = take_indices(len(self.feature_channels), indices)
        check_output_fmt(output_fmt)
        feats = self.backbone(x)  # [(B, C_i, H / r_i, W / r_i)]
        taps = format_taps([feats[i] for i in take], output_fmt)
        if intermediates_only:
            return taps
        return self.head(feats, x.shape[-2:]), taps

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """All backbone maps ``[(B, C_i, H / r_i, W / r_i)]`` of a normalised batch (for feature
        distillation): ``forward_intermediates(x, intermediates_only=True)``."""
        return self.forward_intermediates(x, intermediates_only=True)

    def forward_embedding(self, x: Tensor) -> Tensor:
        """``x (B, 3, H, W)`` normalised → ``(B, C)``: the global average of the deepest backbone map."""
        return pooled_embedding(self.forward_intermediates(x, indices=1, intermediates_only=True)[-1])

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
