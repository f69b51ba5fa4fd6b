"""Joint geometric transforms: the image and every target move together, pixel for pixel.

Input: a raw sample (numpy, see :class:`anydistill.data.folder.FolderDataset`); :class:`ToTensorSample`
turns it into a tensor sample, which every other transform takes and returns (they convert a raw
sample themselves if given one)::

    "image"        float32 (3, H, W) in [0, 1] (not normalised: models carry pixel_mean/pixel_std)
    "depth"        float32 (1, H, W) metres, 0 = invalid
    "depth_valid"  bool    (1, H, W)
    "semantic"     int64   (H, W), 255 = ignore
    "instance"     int64   (H, W), 0 = none
    "K"            float32 (3, 3) intrinsics (optional; updated by every transform)
    "id"           str;  "orig_size" (H, W) of the raw image;  "pad" (top, left, bottom, right)

Teacher targets (pseudo-labels read from the cache) travel the same way:

    "disparity"        float32 (1, H, W) the teacher's relative disparity; 0 is a valid value (sky),
                       invalid = NaN/inf/negative; resampled validity-aware like depth
    "disparity_valid"  bool    (1, H, W)
    "logits"           float32 (K, H, W) the teacher's class logits; bilinear; padding 0

Resampling uses ``torchvision.transforms.v2.functional``:

- image: bilinear with antialias.
- semantic / instance: ``NEAREST_EXACT`` (pixel-centre aligned, the same sampling grid as the
  bilinear image; torchvision's plain ``NEAREST`` is shifted by up to half an output pixel), so no
  new id can appear.
- depth, validity-aware: values are taken with ``NEAREST_EXACT`` (every output value exists in the
  source: averaging across an object boundary would invent "flying pixels" at depths where there is
  no surface), and an output pixel is valid only if *no* pixel that bilinear (antialiased)
  resampling would have mixed into it is invalid -- the invalid indicator is resampled bilinearly
  and any output > 0 is invalid. Invalid regions therefore grow by up to one output pixel; no depth
  is ever interpolated into or out of them.

Padding fills: image 0, depth 0 with ``depth_valid`` False, semantic 255, instance 0. Resizing or
cropping after padding is refused (the recorded ``pad`` would be wrong): pad last.

Intrinsics use the pixel-centre-at-integer convention (OpenCV): a resize by ``s`` maps
``c -> (c + 0.5) s - 0.5``, a horizontal flip of width ``W`` maps ``cx -> W - 1 - cx``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from anydistill.errors import ConfigError

__all__ = [
    "Compose",
    "PadToMultiple",
    "PadToSize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ResizeToMultiple",
    "ToTensorSample",
    "collate_samples",
    "eval_transforms",
    "restore_prediction",
    "train_transforms",
]

Sample = dict[str, Any]

#: Chains sample transforms; torchvision's own Compose works on any callables, including ours.
Compose = v2.Compose

_IMAGE = "image"
_MASK_FILL = {"semantic": 255, "instance": 0}
_SPATIAL = ("image", "depth", "depth_valid", "disparity", "disparity_valid", "logits", "semantic", "instance")
#: Dense maps with a validity mask, resampled validity-aware: value key -> mask key.
_VALIDITY = {"depth": "depth_valid", "disparity": "disparity_valid"}
_META = ("K", "id", "orig_size", "pad")


# ------------------------------------------------------------------------------------ conversion
class ToTensorSample:
    """Raw numpy sample -> tensor sample (see the module docstring for dtypes and shapes).

    ``depth_valid = isfinite(depth) & (depth > 0)`` (and'ed with a ``depth_valid`` already in the
    sample); invalid depth is set to 0. Records ``orig_size`` = the raw ``(H, W)``. A sample whose
    image is already a tensor is returned unchanged.
    """

    def __call__(self, sample: Sample) -> Sample:
        image = sample[_IMAGE]
        if isinstance(image, torch.Tensor):
            return sample
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'raw "image" must be uint8 (H, W, 3), got {image.dtype} {image.shape}')
        h, w = image.shape[:2]
        out: Sample = {}
        image = np.ascontiguousarray(image)
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
            image = image.copy()
        chw = torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W)
        out["image"] = F.to_dtype(chw, torch.float32, scale=True)
        for key, value in sample.items():
            if key in (_IMAGE, "depth_valid", "disparity_valid"):
                continue
            if key == "disparity":
                disp = _as_chw(torch.from_numpy(np.asarray(value, dtype=np.float32).copy()), key, (h, w))
                valid = torch.isfinite(disp) & (disp >= 0)  # 0 = at infinity (sky), a valid disparity
                if "disparity_valid" in sample:
                    given = torch.as_tensor(np.asarray(sample["disparity_valid"], dtype=bool))
                    valid &= _as_chw(given, "disparity_valid", (h, w))
                out["disparity"] = torch.where(valid, disp, torch.zeros(()))
                out["disparity_valid"] = valid
            elif key == "logits":
                logits = torch.from_numpy(np.asarray(value, dtype=np.float32).copy())
                if logits.ndim != 3 or tuple(logits.shape[1:]) != (h, w):
                    raise ValueError(f'"logits" must be (K, H, W) with (H, W) = {(h, w)}, got {tuple(logits.shape)}')
                out["logits"] = logits
            elif key == "depth":
                depth = torch.from_numpy(np.asarray(value, dtype=np.float32).copy())
                depth = _as_chw(depth, key, (h, w))  # (1, H, W)
                valid = torch.isfinite(depth) & (depth > 0)
                if "depth_valid" in sample:
                    given = torch.as_tensor(np.asarray(sample["depth_valid"], dtype=bool))
                    valid &= _as_chw(given, "depth_valid", (h, w))
                out["depth"] = torch.where(valid, depth, torch.zeros(()))
                out["depth_valid"] = valid
            elif key in _MASK_FILL:
                mask = torch.from_numpy(np.asarray(value).astype(np.int64))
                if tuple(mask.shape) != (h, w):
                    raise ValueError(f'"{key}" must be (H, W) = {(h, w)}, got {tuple(mask.shape)}')
                out[key] = mask
            elif key == "K":
                out["K"] = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(3, 3)
            else:
                _check_not_spatial(key, value)
                out[key] = value
        out.setdefault("orig_size", (h, w))
        return out


def _as_chw(t: torch.Tensor, key: str, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape) == hw:
        return t.unsqueeze(0)  # (1, H, W)
    if tuple(t.shape) == (1, *hw):
        return t
    raise ValueError(f'"{key}" must be (H, W) = {hw}, got {tuple(t.shape)}')


def _check_not_spatial(key: str, value: Any) -> None:
    if key not in _META and isinstance(value, np.ndarray | torch.Tensor) and value.ndim >= 2:
        raise ValueError(
            f'unknown array "{key}" of shape {tuple(value.shape)}: joint transforms only know how to '
            f"resample {_SPATIAL}; remove it or add it here"
        )


def _tensor_sample(sample: Sample) -> Sample:
    sample = ToTensorSample()(sample)
    for key, value in sample.items():
        if key not in _SPATIAL:
            _check_not_spatial(key, value)
    return sample


def _size(sample: Sample) -> tuple[int, int]:
    h, w = sample[_IMAGE].shape[-2:]
    return int(h), int(w)


# ------------------------------------------------------------------------------- primitive ops
def resize_depth(
    depth: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validity-aware depth resize (see the module docstring).

    Args:
        depth: float32 ``(1, H, W)`` metres.
        valid: bool ``(1, H, W)``.
        size: output ``(h, w)``.

    Returns:
        depth float32 ``(1, h, w)`` (0 where invalid) and valid bool ``(1, h, w)``.
    """
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth, valid
    values = F.resize(depth, list(size), interpolation=InterpolationMode.NEAREST_EXACT)
    picked = F.resize(tv_tensors.Mask(valid), list(size), interpolation=InterpolationMode.NEAREST_EXACT)
    invalid = F.resize((~valid).float(), list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    new_valid = picked.as_subclass(torch.Tensor) & (invalid <= 0)
    return torch.where(new_valid, values, torch.zeros(())), new_valid


def _resize(sample: Sample, size: tuple[int, int]) -> Sample:
    _refuse_after_pad(sample, "resize")
    old_h, old_w = _size(sample)
    if (old_h, old_w) == tuple(size):
        return sample
    out = dict(sample)
    out["image"] = F.resize(
        sample["image"], list(size), interpolation=InterpolationMode.BILINEAR, antialias=True
    ).clamp_(0.0, 1.0)
    for key in _MASK_FILL:
        if key in sample:
            mask = tv_tensors.Mask(sample[key])
            out[key] = F.resize(mask, list(size), interpolation=InterpolationMode.NEAREST_EXACT).as_subclass(
                torch.Tensor
            )
    for key, valid_key in _VALIDITY.items():
        if key in sample:
            out[key], out[valid_key] = resize_depth(sample[key], sample[valid_key], size)
    if "logits" in sample:
        out["logits"] = F.resize(sample["logits"], list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    if "K" in sample:
        k = sample["K"].clone()
        sx, sy = size[1] / old_w, size[0] / old_h
        k[0, 0] *= sx
        k[0, 1] *= sx
        k[1, 1] *= sy
        k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
        k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
        out["K"] = k
    return out


def _crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    _refuse_after_pad(sample, "crop")
    out = dict(sample)
    for key in _SPATIAL:
        if key in sample:
            out[key] = F.crop(sample[key], top, left, height, width)
    if "K" in sample:
        k = sample["K"].clone()
        k[0, 2] -= left
        k[1, 2] -= top
        out["K"] = k
    return out


def _pad(sample: Sample, top: int, left: int, bottom: int, right: int) -> Sample:
    if not (top or left or bottom or right):
        out = dict(sample)
    else:
        padding = [left, top, right, bottom]  # torchvision order
        out = dict(sample)
        out["image"] = F.pad(sample["image"], padding, fill=0.0)
        for key, fill in _MASK_FILL.items():
            if key in sample:
                out[key] = F.pad(tv_tensors.Mask(sample[key]), padding, fill=fill).as_subclass(torch.Tensor)
        for key, valid_key in _VALIDITY.items():
            if key in sample:
                out[key] = F.pad(sample[key], padding, fill=0.0)
                out[valid_key] = F.pad(sample[valid_key].to(torch.uint8), padding, fill=0).bool()
        if "logits" in sample:
            out["logits"] = F.pad(sample["logits"], padding, fill=0.0)
        if "K" in sample:
            k = sample["K"].clone()
            k[0, 2] += left
            k[1, 2] += top
            out["K"] = k
    old = sample.get("pad", (0, 0, 0, 0))
    out["pad"] = (old[0] + top, old[1] + left, old[2] + bottom, old[3] + right)
    return out


def _refuse_after_pad(sample: Sample, what: str) -> None:
    if any(sample.get("pad", (0, 0, 0, 0))):
        raise ValueError(f"cannot {what} a padded sample (its recorded 'pad' would be wrong); pad last")


def _hflip(sample: Sample) -> Sample:
    out = dict(sample)
    for key in _SPATIAL:
        if key in sample:
            out[key] = F.horizontal_flip(sample[key])
    if "K" in sample:
        k = sample["K"].clone()
        k[0, 2] = _size(sample)[1] - 1 - k[0, 2]
        k[0, 1] = -k[0, 1]
        out["K"] = k
    if "pad" in sample:
        top, left, bottom, right = sample["pad"]
        out["pad"] = (top, right, bottom, left)
    return out


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
        ref = max(height, width) if self.side == "long" else min(height, width)
        scale = self.size / ref
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
