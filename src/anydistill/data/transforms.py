"""Joint geometric transforms: the image and every target move together, pixel for pixel.

The transform classes (random resized crop, horizontal flip, resize, pad), the pipelines built from
them (:func:`train_transforms`, :func:`eval_transforms`, :func:`preprocess_transforms`), the inverse for
predictions (:func:`restore_prediction`; :func:`restore_prediction_bands` for large images, one band of
rows at a time) and batching (:func:`collate_samples`). The sample format, the raw -> tensor
conversion (:class:`~anydistill.data.sample_ops.ToTensorSample`) and how every target is resized,
cropped, padded and flipped (with the intrinsics ``K``) are in :mod:`anydistill.data.sample_ops`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from anydistill.data.bands import upsample_argmax_bands, upsample_bands
from anydistill.data.sample_ops import (
    Sample,
    ToTensorSample,
    _crop,
    _hflip,
    _pad,
    _resize,
    _size,
    _tensor_sample,
)
from anydistill.errors import ConfigError
from anydistill.preprocess import Preprocess, long_side_shape

__all__ = [
    "Compose",
    "PadToMultiple",
    "PadToSize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ResizeToMultiple",
    "collate_samples",
    "eval_transforms",
    "restore_prediction",
    "restore_prediction_bands",
    "train_transforms",
]

#: Chains sample transforms; torchvision's own Compose works on any callables, including ours.
Compose = v2.Compose


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ConfigError(f"{name} must be a positive int or (h, w), got {size!r}")
    return int(pair[0]), int(pair[1])


# ---------------------------------------------------------------------------------- transforms
class RandomResizedCrop:
    """Crop a random area fraction ``scale`` with aspect ratio in ``ratio``, resize it to ``size``.

    The crop box is drawn by torchvision's ``v2.RandomResizedCrop`` (same distribution and fallback),
    from torch's global RNG (so DataLoader worker seeding applies).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size = _pair(size, "size")
        self._sampler = v2.RandomResizedCrop(self.size, scale=scale, ratio=ratio, antialias=True)

    def __call__(self, sample: Sample) -> Sample:
        sample = _tensor_sample(sample)
        box = self._sampler.make_params([sample["image"]])
        sample = _crop(sample, box["top"], box["left"], box["height"], box["width"])
        return _resize(sample, self.size)

    def __repr__(self) -> str:
        return (
            f"RandomResizedCrop(size={self.size}, scale={self._sampler.scale}, ratio={self._sampler.ratio})"
        )


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` (image, targets, ``K``'s cx, and ``pad``)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        sample = _tensor_sample(sample)
        if torch.rand(()) < self.p:
            return _hflip(sample)
        return sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Resize:
    """Resize keeping the aspect ratio so that the ``side`` ("long" or "short") equals ``size``."""

    def __init__(self, size: int, side: Literal["long", "short"] = "long") -> None:
        if side not in ("long", "short"):
            raise ConfigError(f'side must be "long" or "short", got {side!r}')
        self.size, self.side = _pair(size, "size")[0], side

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.side == "long":  # the one long-side rule (Preprocess's, segment-anything's: halves round up)
            return long_side_shape(height, width, self.size)
        scale = self.size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, sample: Sample) -> Sample:
        sample = _tensor_sample(sample)
        return _resize(sample, self.output_size(*_size(sample)))

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, side={self.side!r})"


class ResizeToMultiple:
    """Resize each side to a multiple of ``multiple`` (rounded as asked, at least one multiple).

    The aspect ratio changes slightly (by under ``multiple / 2`` pixels per side with "round").
    """

    def __init__(self, multiple: int, rounding: Literal["round", "floor", "ceil"] = "round") -> None:
        if rounding not in ("round", "floor", "ceil"):
            raise ConfigError(f'rounding must be "round", "floor" or "ceil", got {rounding!r}')
        self.multiple, self.rounding = _pair(multiple, "multiple")[0], rounding

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        fn = {"round": round, "floor": math.floor, "ceil": math.ceil}[self.rounding]
        m = self.multiple
        return max(m, int(fn(height / m)) * m), max(m, int(fn(width / m)) * m)

    def __call__(self, sample: Sample) -> Sample:
        sample = _tensor_sample(sample)
        return _resize(sample, self.output_size(*_size(sample)))

    def __repr__(self) -> str:
        return f"ResizeToMultiple(multiple={self.multiple}, rounding={self.rounding!r})"


class PadToSize:
    """Pad to ``(height, width)`` at the bottom/right (or evenly with ``center=True``).

    Records ``pad`` = (top, left, bottom, right) (added to any earlier pad) and ``orig_size``.
    A sample larger than the target is an error (resize first).
    """

    def __init__(self, height: int, width: int, center: bool = False) -> None:
        self.height, self.width = _pair((height, width), "(height, width)")
        self.center = center

    def __call__(self, sample: Sample) -> Sample:
        sample = _tensor_sample(sample)
        h, w = _size(sample)
        if h > self.height or w > self.width:
            raise ValueError(f"sample {h}x{w} is larger than the pad target {self.height}x{self.width}")
        return _pad(sample, *_split(self.height - h, self.width - w, self.center))

    def __repr__(self) -> str:
        return f"PadToSize(height={self.height}, width={self.width}, center={self.center})"


class PadToMultiple:
    """Pad the bottom/right (or evenly) up to the next multiple of ``multiple``; records ``pad``."""

    def __init__(self, multiple: int, center: bool = False) -> None:
        self.multiple = _pair(multiple, "multiple")[0]
        self.center = center

    def __call__(self, sample: Sample) -> Sample:
        sample = _tensor_sample(sample)
        h, w = _size(sample)
        m = self.multiple
        return _pad(sample, *_split(-h % m, -w % m, self.center))

    def __repr__(self) -> str:
        return f"PadToMultiple(multiple={self.multiple}, center={self.center})"


def _split(extra_h: int, extra_w: int, center: bool) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) for the given extra rows/columns."""
    if not center:
        return 0, 0, extra_h, extra_w
    return extra_h // 2, extra_w // 2, extra_h - extra_h // 2, extra_w - extra_w // 2


# ------------------------------------------------------------------------------------ builders
def _check_multiple(size: int, multiple: int) -> None:
    if multiple < 1 or size < 1 or size % multiple:
        raise ConfigError(f"size {size} must be a positive multiple of {multiple} (the model's patch size)")


def train_transforms(
    size: int, multiple: int, scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True
) -> v2.Compose:
    """Training pipeline: to tensors -> random resized square crop ``size x size`` -> random h-flip."""
    _check_multiple(size, multiple)
    steps: list[Any] = [ToTensorSample(), RandomResizedCrop(size, scale=scale)]
    if hflip:
        steps.append(RandomHorizontalFlip(0.5))
    return Compose(steps)


def eval_transforms(size: int, multiple: int) -> v2.Compose:
    """Evaluation pipeline: to tensors -> resize so the long side is ``size`` -> pad to ``size x size``.

    Batchable; each sample records ``orig_size`` and ``pad`` so :func:`restore_prediction` maps a
    prediction back onto the original image.
    """
    _check_multiple(size, multiple)
    return Compose([ToTensorSample(), Resize(size, side="long"), PadToSize(size, size)])


def preprocess_transforms(spec: Preprocess) -> v2.Compose:
    """The evaluation pipeline a model's :class:`~anydistill.preprocess.Preprocess` describes, on samples
    (numpy or tensors, with their targets): long side to ``spec.size``, padded to ``size x size`` — the
    dense students' spec (normalisation stays with the model). Other specs are refused."""
    if spec.resize != "long_side" or spec.pad != "square" or not spec.pad_before_normalize:
        raise ConfigError(f"sample transforms support long-side resize + square padding specs, not {spec}")
    return eval_transforms(spec.size, spec.multiple)


def restore_prediction(
    pred: torch.Tensor,
    pad: Sequence[int],
    orig_size: Sequence[int],
    mode: Literal["bilinear", "nearest"] = "bilinear",
) -> torch.Tensor:
    """Undo :func:`eval_transforms` on one prediction: remove ``pad``, resize to ``orig_size``.

    Args:
        pred: ``(C, H, W)`` prediction at the padded size.
        pad: the sample's ``(top, left, bottom, right)``.
        orig_size: the sample's ``(H, W)`` before any transform.
        mode: ``"bilinear"`` for continuous maps (logits, depth), ``"nearest"`` for label maps.

    Returns:
        ``(C, orig_H, orig_W)``.
    """
    top, left, bottom, right = (int(p) for p in pad)
    h, w = pred.shape[-2:]
    cropped = pred[..., top : h - bottom, left : w - right]
    if mode == "nearest":
        interpolation, antialias = InterpolationMode.NEAREST_EXACT, False
    else:
        interpolation, antialias = InterpolationMode.BILINEAR, True
    return F.resize(
        cropped, [int(orig_size[0]), int(orig_size[1])], interpolation=interpolation, antialias=antialias
    )


def restore_prediction_bands(
    pred: torch.Tensor,
    pad: Sequence[int],
    orig_size: Sequence[int],
    argmax: bool = False,
    max_elements: int | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """:func:`restore_prediction` (bilinear) one band of output rows at a time, for images far larger
    than the model's input: the full-size ``(C, H0, W0)`` map is never made.

    When the prediction is enlarged on both axes (an image larger than the model's input), the bands
    come from :func:`~anydistill.data.bands.upsample_bands`: the same bilinear map as
    :func:`restore_prediction` (antialiasing does nothing when enlarging) to float rounding. Otherwise
    (an image smaller than the input: an antialiased shrink) the whole restored map is one band.

    Args:
        pred: ``(C, H, W)`` prediction at the padded size.
        pad: the sample's ``(top, left, bottom, right)``.
        orig_size: the sample's ``(H0, W0)`` before any transform.
        argmax: yield the channel argmax (class ids) instead of the values, computed by
            :func:`~anydistill.data.bands.upsample_argmax_bands` (interpolating only near class
            boundaries; equal to ``band.argmax(0)`` except where two classes tie to float rounding).
        max_elements: elements of one band ``(C, b, W0)`` (default
            :data:`~anydistill.data.bands.BAND_ELEMENTS`).

    Yields:
        ``(y0, y1, band)``: rows ``y0:y1`` of the restored map, as ``(C, y1 - y0, W0)``, or int64
        ``(y1 - y0, W0)`` class ids with ``argmax``.
    """
    top, left, bottom, right = (int(p) for p in pad)
    h, w = pred.shape[-2:]
    cropped = pred[..., top : h - bottom, left : w - right]  # (C, h0, w0)
    out_h, out_w = int(orig_size[0]), int(orig_size[1])
    if out_h >= cropped.shape[-2] and out_w >= cropped.shape[-1]:
        upsample = upsample_argmax_bands if argmax else upsample_bands
        yield from upsample(cropped, (out_h, out_w), max_elements)
    else:
        restored = restore_prediction(pred, pad, orig_size)  # (C, H0, W0)
        yield 0, out_h, restored.argmax(0) if argmax else restored


# ------------------------------------------------------------------------------------- collate
def collate_samples(samples: Sequence[Sample]) -> Sample:
    """Batches tensor samples: tensors are stacked to ``(B, ...)``; everything else (ids, sizes,
    pads, ...) is kept as a list of length B.

    Raises:
        ValueError: samples with different keys, or tensors of different shapes (the message says
            which key; use :func:`eval_transforms` / :func:`train_transforms` for equal sizes).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = list(samples[0])
    for s in samples[1:]:
        if set(s) != set(keys):
            diff = sorted(set(s) ^ set(keys))
            raise ValueError(f"samples {samples[0].get('id')!r} and {s.get('id')!r} differ in keys {diff}")
    batch: Sample = {}
    for key in keys:
        values = [s[key] for s in samples]
        if all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f'cannot stack "{key}": shapes differ {sorted(shapes)}; resize/pad to one size'
                )
            batch[key] = torch.stack(values)  # (B, ...)
        else:
            batch[key] = values
    return batch
