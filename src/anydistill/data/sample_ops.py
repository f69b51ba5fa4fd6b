"""The tensor sample and the joint ops on it: the image and every target move together, pixel for pixel.

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

The transform classes and the pipelines built on these ops are in :mod:`anydistill.data.transforms`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = ["Sample", "ToTensorSample", "resize_depth"]

Sample = dict[str, Any]

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
                    raise ValueError(
                        f'"logits" must be (K, H, W) with (H, W) = {(h, w)}, got {tuple(logits.shape)}'
                    )
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
        out["logits"] = F.resize(
            sample["logits"], list(size), interpolation=InterpolationMode.BILINEAR, antialias=True
        )
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
