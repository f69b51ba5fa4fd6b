"""One pre-processing spec that travels with the weights (torchvision's "weights carry their transforms").

Every model builder produces a :class:`Preprocess`; every checkpoint stores it (``to_dict``), and the
evaluation transforms, both predictors, the teachers, the SAM input frame and (next) the ONNX export
and web demo read the same object instead of re-deriving sizes and constants.

Conventions: images enter as ``(B, 3, H, W)`` floats in [0, 1] (or uint8 ``(H, W, 3)`` arrays, which
:meth:`Preprocess.to01` converts). ``input_range`` is the range the model's normalisation expects
(SAM: 0..255, timm models: 0..1); ``mean``/``std`` are on that range.

Resize modes (``size`` is ``S``, ``multiple`` is ``m``):

* ``"long_side"``: scale so ``max(h, w) == S`` keeping the aspect (SAM's ``ResizeLongestSide``: each
  side ``round(side * S / max(H, W))``, never 0); then pad bottom/right to ``S x S`` (``pad="square"``)
  or to the next multiple of ``m`` (``pad="multiple"``), or not at all (``pad="none"``).
* ``"lower_bound"``: Depth Anything's keep-aspect resize: the smaller scale that makes both sides at
  least ``S``, each side rounded to a multiple of ``m`` (``dpt_output_size``; no padding).
* ``"fixed"``: resize to ``S x S`` ignoring the aspect ratio.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from anydistill.errors import ConfigError

RESIZE_MODES = ("long_side", "lower_bound", "fixed")
PAD_MODES = ("square", "multiple", "none")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # ImageNet's on 0..255, as segment-anything stores it
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def long_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(h, w)`` with ``max(h, w) == long_side`` and the aspect kept: segment-anything's
    ``ResizeLongestSide.get_preprocess_shape`` (round half up), except that a side never rounds to 0."""
    scale = long_side * 1.0 / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def lower_bound_shape(height: int, width: int, size: int, multiple: int) -> tuple[int, int]:
    """Depth Anything's keep-aspect resize (``transformers`` ``DPTImageProcessor`` with
    ``keep_aspect_ratio=True, ensure_multiple_of=m``): scale by the factor closer to 1 of the two that
    bring each side to ``size``, then round each side to a multiple of ``m`` (not below ``size``)."""
    scale_h, scale_w = size / height, size / width
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h

    def constrain(value: float) -> int:
        out = round(value / multiple) * multiple
        if out < size:
            out = math.ceil(value / multiple) * multiple
        return int(out)

    return constrain(height * scale), constrain(width * scale)


@dataclass(frozen=True)
class Preprocess:
    """How images become a model's input, and how its output maps back.

    Args:
        size: ``S``, the long side (``long_side``), lower bound (``lower_bound``) or square side (``fixed``).
        mean, std: per-channel normalisation on ``input_range``.
        input_range: ``1.0`` (pixels in [0, 1]) or ``255.0`` (pixels in [0, 255], SAM).
        resize: one of :data:`RESIZE_MODES`.
        pad: one of :data:`PAD_MODES` (bottom/right zero padding, after normalisation).
        multiple: input height and width must be multiples of this (patch size or coarsest stride).
        interpolation: ``"bilinear"`` or ``"bicubic"``; ``antialias`` when shrinking.
        round_to_uint8: round resized pixels to integers before normalising (SAM resizes a uint8 image).
        pad_before_normalize: pad with black pixels, then normalise (anydistill's dense students, whose
            datasets pad in [0, 1]); else pad the normalised input with zeros (segment-anything).
    """

    size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_range: float = 1.0
    resize: str = "long_side"
    pad: str = "square"
    multiple: int = 1
    interpolation: str = "bilinear"
    antialias: bool = True
    round_to_uint8: bool = False
    pad_before_normalize: bool = False

    def __post_init__(self) -> None:
        if self.size < 1 or self.multiple < 1:
            raise ConfigError(f"preprocess: size ({self.size}) and multiple ({self.multiple}) must be positive")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"preprocess.resize: must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.pad not in PAD_MODES:
            raise ConfigError(f"preprocess.pad: must be one of {PAD_MODES}, got {self.pad!r}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess: mean {self.mean} / std {self.std} must match and std be > 0")
        if self.input_range not in (1.0, 255.0):
            raise ConfigError(f"preprocess.input_range: must be 1.0 or 255.0, got {self.input_range}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    # ----------------------------------------------------------------------------------- builders
    @classmethod
    def sam(cls, img_size: int = 1024) -> Preprocess:
        """Segment Anything's frame: long side ``img_size``, 0..255 pixels (rounded like a uint8
        image), ImageNet mean/std on 0..255, zero padding bottom/right to a square."""
        return cls(
            size=img_size, mean=SAM_PIXEL_MEAN, std=SAM_PIXEL_STD, input_range=255.0, resize="long_side",
            pad="square", multiple=1, round_to_uint8=True,
        )  # fmt: skip

    def with_size(self, size: int) -> Preprocess:
        """The same spec at another ``size`` (e.g. ``anydistill predict --size``)."""
        return replace(self, size=int(size))

    # ------------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings): what checkpoints and ONNX metadata store."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    # ------------------------------------------------------------------------------------- shapes
    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` the image is resized to (before padding)."""
        if self.resize == "long_side":
            return long_side_shape(height, width, self.size)
        if self.resize == "lower_bound":
            return lower_bound_shape(height, width, self.size, self.multiple)
        return self.size, self.size

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(H_in, W_in)`` the model sees: the resized shape plus padding."""
        h, w = self.resized_shape(height, width)
        if self.pad == "square":
            return max(h, self.size), max(w, self.size)
        if self.pad == "multiple":
            m = self.multiple
            return -(-h // m) * m, -(-w // m) * m
        return h, w

    def check(self) -> None:
        """Refuse a spec whose padded input would not be a multiple of ``multiple``."""
        if self.pad == "square" and self.size % self.multiple:
            raise ConfigError(f"size {self.size} must be a positive multiple of {self.multiple} (the model's patch size)")

    # --------------------------------------------------------------------------------- tensor ops
    def resize_batch(self, images01: Any) -> Any:
        """``(B, 3, H, W)`` in [0, 1] → ``(B, 3, h, w)`` on ``input_range`` (not normalised, not padded)."""
        import torch.nn.functional as F

        height, width = images01.shape[-2:]
        h, w = self.resized_shape(height, width)
        x = images01 * self.input_range if self.input_range != 1.0 else images01
        if (h, w) != (height, width):
            x = F.interpolate(
                x, (h, w), mode=self.interpolation, align_corners=False, antialias=self.antialias
            )
        if self.round_to_uint8:
            x = (x * (255.0 / self.input_range)).round().clamp(0, 255) * (self.input_range / 255.0)
        return x

    def normalize(self, x: Any) -> Any:
        """``(B, 3, H, W)`` on ``input_range`` → ``(x − mean) / std``."""
        mean = x.new_tensor(self.mean).view(-1, 1, 1)
        std = x.new_tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std

    def pad_batch(self, x: Any) -> Any:
        """Zero-pad bottom/right to :meth:`input_shape` (after normalisation, as segment-anything)."""
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        if self.pad == "square":
            th, tw = max(h, self.size), max(w, self.size)
        elif self.pad == "multiple":
            th, tw = -(-h // self.multiple) * self.multiple, -(-w // self.multiple) * self.multiple
        else:
            return x
        return F.pad(x, (0, tw - w, 0, th - h)) if (th, tw) != (h, w) else x

    def __call__(self, images01: Any) -> Any:
        """``(B, 3, H, W)`` in [0, 1] → the model's normalised, padded input ``(B, 3, H_in, W_in)``."""
        x = self.resize_batch(images01)
        if self.pad_before_normalize:
            return self.normalize(self.pad_batch(x))
        return self.pad_batch(self.normalize(x))
