"""One pre-processing spec that travels with the weights (torchvision's "weights carry their transforms").

Every model builder produces a :class:`Preprocess`; every checkpoint stores it (``to_dict``), and the
evaluation transforms, both predictors, the teachers, the SAM input frame and (next) the ONNX export
and web demo read the same object instead of re-deriving sizes and constants.

Conventions: images enter as ``(B, 3, H, W)`` floats in [0, 1] (a uint8 ``(H, W, 3)`` array is
``torch.from_numpy(a).permute(2, 0, 1)[None] / 255``). ``input_range`` is the range the model's normalisation expects
(SAM: 0..255, timm models: 0..1); ``mean``/``std`` are on that range.

Resize modes (``size`` is ``S``, ``multiple`` is ``m``):

* ``"long_side"``: scale so ``max(h, w) == S`` keeping the aspect (SAM's ``ResizeLongestSide``: each
  side ``round(side * S / max(H, W))``, never 0; :func:`long_side_shape`); then pad bottom/right to
  ``S x S`` (``pad="square"``) or to the next multiple of ``m`` (``pad="multiple"``), or not at all
  (``pad="none"``).
* ``"lower_bound"``: Depth Anything's keep-aspect resize (``DPTImageProcessor`` with
  ``keep_aspect_ratio=True, ensure_multiple_of=m``; :func:`lower_bound_shape`): of the two scales that
  bring one side to ``S``, the one closer to 1, each side then rounded to a multiple of ``m``. When
  shrinking, both sides end at least ``S`` (hence the name); no padding.
* ``"long_side_multiple"``: scale so the long side is ``S``, then round each side to the nearest
  multiple of ``m`` (never below ``m``; :func:`multiple_shape`): the teachers' unpadded working size.
* ``"nearest_multiple"``: keep the input's scale, round each side to the nearest multiple of ``m``
  (never below ``m``); ``size`` is not used.
* ``"fixed"``: resize to ``S x S`` ignoring the aspect ratio.
* ``"none"``: keep the input's size (``size`` is not used).

Pixel values: with ``round_to_uint8`` (or ``clamp``) the image is resized on the 0..255 scale, as the
8-bit image a model's own pre-processing resizes (SAM's ``ResizeLongestSide``, Hugging Face processors),
and rounded (clamped) there; otherwise it is resized on ``input_range`` as floats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from anydistill.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

RESIZE_MODES = ("long_side", "lower_bound", "long_side_multiple", "nearest_multiple", "fixed", "none")
PAD_MODES = ("square", "multiple", "none")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest-exact")
_SMOOTH = ("bilinear", "bicubic")  # the modes with align_corners and antialias

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
    ``keep_aspect_ratio=True, ensure_multiple_of=multiple``, its ``get_resize_output_image_size``).

    Of the two scales ``size / height`` and ``size / width``, the one closer to 1 ("scale as little as
    possible") is used for both sides; each side is then rounded to the nearest multiple (Python's
    ``round``, half to even). A side is never below ``multiple`` (upstream can return 0 for a sliver).
    """
    scale_h, scale_w = size / height, size / width
    if abs(1 - scale_w) < abs(1 - scale_h):
        scale_h = scale_w
    else:
        scale_w = scale_h

    def constrain(value: float) -> int:
        return max(multiple, round(value / multiple) * multiple)

    return constrain(scale_h * height), constrain(scale_w * width)


def multiple_shape(height: int, width: int, multiple: int, long_side: int | None = None) -> tuple[int, int]:
    """A keep-aspect size whose sides are multiples of ``multiple`` (the teachers' unpadded working size).

    ``long_side=None`` keeps the input's scale (each side rounded to the nearest multiple); otherwise
    the image is scaled so its long side is ``long_side``, then each side rounded (Python's ``round``,
    half to even), so the long side is ``long_side`` only up to that rounding. Never below ``multiple``.
    """
    scale = 1.0 if long_side is None else long_side / max(height, width)
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )


@dataclass(frozen=True)
class Preprocess:
    """How images become a model's input, and how its output maps back.

    Args:
        size: ``S``, the long side (``long_side``, ``long_side_multiple``), lower bound
            (``lower_bound``) or square side (``fixed``); unused by ``nearest_multiple`` and ``none``.
        mean, std: per-channel normalisation on ``input_range``.
        input_range: ``1.0`` (pixels in [0, 1]) or ``255.0`` (pixels in [0, 255], SAM).
        resize: one of :data:`RESIZE_MODES` (module docstring).
        pad: one of :data:`PAD_MODES` (bottom/right zero padding, after normalisation).
        multiple: input height and width must be multiples of this (patch size or coarsest stride).
        interpolation: one of :data:`INTERPOLATIONS`; ``antialias`` when shrinking (bilinear/bicubic).
        round_to_uint8: round resized pixels to integers on 0..255 before normalising (SAM and the
            Hugging Face processors resize a uint8 image).
        pad_before_normalize: pad with black pixels, then normalise (anydistill's dense students, whose
            datasets pad in [0, 1]); else pad the normalised input with zeros (segment-anything).
        clamp: clamp resized pixels to 0..255 (bicubic overshoots; a uint8 image cannot); implied by
            ``round_to_uint8``.
        separable: resize the width, then the height, rounding after each pass, as Pillow's and torch's
            uint8 kernels do (the Hugging Face processors' resize); needs ``round_to_uint8``.
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
    clamp: bool = False
    separable: bool = False

    def __post_init__(self) -> None:
        if self.size < 1 or self.multiple < 1:
            raise ConfigError(
                f"preprocess: size ({self.size}) and multiple ({self.multiple}) must be positive"
            )
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"preprocess.resize: must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.pad not in PAD_MODES:
            raise ConfigError(f"preprocess.pad: must be one of {PAD_MODES}, got {self.pad!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"preprocess.interpolation: must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess: mean {self.mean} / std {self.std} must match and std be > 0")
        if self.input_range not in (1.0, 255.0):
            raise ConfigError(f"preprocess.input_range: must be 1.0 or 255.0, got {self.input_range}")
        if self.separable and not self.round_to_uint8:
            raise ConfigError("preprocess.separable: rounds after each pass, so it needs round_to_uint8")
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
        """The spec :meth:`to_dict` wrote; unknown keys are ignored, missing ones take their defaults
        (specs written before a field existed)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    # ------------------------------------------------------------------------------------- shapes
    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` the image is resized to (before padding)."""
        if self.resize == "long_side":
            return long_side_shape(height, width, self.size)
        if self.resize == "lower_bound":
            return lower_bound_shape(height, width, self.size, self.multiple)
        if self.resize == "long_side_multiple":
            return multiple_shape(height, width, self.multiple, self.size)
        if self.resize == "nearest_multiple":
            return multiple_shape(height, width, self.multiple)
        if self.resize == "none":
            return int(height), int(width)
        return self.size, self.size

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(H_in, W_in)`` the model sees: the resized shape plus padding."""
        return self._padded_shape(*self.resized_shape(height, width))

    def _padded_shape(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)`` after :meth:`pad_batch`: bottom/right up to ``S x S`` or the next multiple."""
        if self.pad == "square":
            return max(h, self.size), max(w, self.size)
        if self.pad == "multiple":
            m = self.multiple
            return -(-h // m) * m, -(-w // m) * m
        return h, w

    def check(self) -> None:
        """Refuse a spec whose padded input would not be a multiple of ``multiple``."""
        if self.pad == "square" and self.size % self.multiple:
            raise ConfigError(
                f"size {self.size} must be a positive multiple of {self.multiple} (the model's patch size)"
            )

    # --------------------------------------------------------------------------------- tensor ops
    def _interpolate(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``(B, C, H, W)`` → ``(B, C, *size)`` with this spec's filter; the input itself at its size."""
        import torch.nn.functional as F  # torch where tensors are: the spec itself imports without it (runtime/)

        size = (int(size[0]), int(size[1]))
        if tuple(x.shape[-2:]) == size:
            return x
        smooth = self.interpolation in _SMOOTH
        return F.interpolate(
            x,
            size,
            mode=self.interpolation,
            align_corners=False if smooth else None,
            antialias=self.antialias and smooth,
        )

    def resize_pixels(self, pixels255: Tensor) -> Tensor:
        """``(B, C, H, W)`` pixels on 0..255 (a uint8 image, or its values as floats) → float
        ``(B, C, h, w)`` on 0..255 (:meth:`resized_shape`): interpolated, then clamped to 0..255
        (``clamp``) and rounded to integers (``round_to_uint8``), once, or after the width and again
        after the height pass (``separable``). The rounding rule of SAM's frame."""
        height, width = pixels255.shape[-2:]
        h, w = self.resized_shape(height, width)
        x = pixels255 if pixels255.is_floating_point() else pixels255.float()
        for size in [(height, w), (h, w)] if self.separable else [(h, w)]:
            x = self._interpolate(x, size)
            if self.clamp or self.round_to_uint8:
                x = x.clamp(0, 255)
            if self.round_to_uint8:
                x = x.round()
        return x

    def resize_batch(self, images01: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] → ``(B, 3, h, w)`` on ``input_range`` (not normalised, not padded).

        With ``round_to_uint8`` or ``clamp`` the resize is :meth:`resize_pixels` on ``images01 * 255``
        (then scaled to ``input_range``); otherwise a float resize on ``input_range``."""
        if self.round_to_uint8 or self.clamp:
            x = self.resize_pixels(images01 * 255.0)  # (B, 3, h, w) on 0..255
            return x if self.input_range == 255.0 else x * (self.input_range / 255.0)
        x = images01 * self.input_range if self.input_range != 1.0 else images01
        return self._interpolate(x, self.resized_shape(*images01.shape[-2:]))

    def normalize(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` on ``input_range`` → ``(x − mean) / std`` (same dtype and device as ``x``)."""
        mean = x.new_tensor(self.mean).view(-1, 1, 1)
        std = x.new_tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std

    def pad_batch(self, x: Tensor) -> Tensor:
        """``(..., h, w)`` → zero-padded at the bottom/right to :meth:`input_shape` (``(..., H_in, W_in)``;
        after normalisation, as segment-anything; any dtype, masks too). ``x`` itself when no padding
        is needed."""
        import torch.nn.functional as F  # torch where tensors are: the spec itself imports without it (runtime/)

        h, w = x.shape[-2:]
        th, tw = self._padded_shape(h, w)
        return F.pad(x, (0, tw - w, 0, th - h)) if (th, tw) != (h, w) else x

    def __call__(self, images01: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] → the model's normalised, padded input ``(B, 3, H_in, W_in)``."""
        x = self.resize_batch(images01)
        if self.pad_before_normalize:
            return self.normalize(self.pad_batch(x))
        return self.pad_batch(self.normalize(x))
