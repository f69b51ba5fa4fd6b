"""Depth Anything V1/V2 from a local Hugging Face ``transformers`` folder as a depth teacher.

Both versions load as ``AutoModelForDepthEstimation`` (``model_type == "depth_anything"``). The
image processor's pre-processing is re-implemented in torch on the whole batch, on the teacher's
device, so it reproduces ``DPTImageProcessor`` without a per-image PIL/numpy round trip:

1. resize (``keep_aspect_ratio``: the one of the two scales ``size / side`` closer to 1 is used for
   both sides; each side rounded to ``ensure_multiple_of``, 14 for DINOv2) with its ``resample``
   filter (bicubic, antialiased);
2. rescale by ``rescale_factor`` (the [0, 1] input is ``uint8 / 255``), normalise by mean/std;
3. ``model(pixel_values).predicted_depth (B, h, w)`` → bicubic to the input size, as
   ``post_process_depth_estimation`` does.

The upstream processor resizes ``uint8`` images; on CPU torch's uint8 kernel (Pillow's algorithm)
filters width first, then height, rounding to 0..255 after each pass. ``emulate_uint8=True``
(default) does the same in float, which matches it to ≤ 2 grey levels on < 1 % of pixels (fixed-point
weights); ``False`` resizes once in float (no quantisation; clamps to [0, 1]).

Steps 1 and 2 are the teacher's ``preprocess``, a :class:`~anydistill.preprocess.Preprocess` built from
the processor settings by :func:`depth_anything_preprocess` (resize ``"lower_bound"``, no padding,
``separable`` + ``round_to_uint8`` for the uint8 emulation).

# Adapted from https://github.com/huggingface/transformers/blob/bdb74142580fb45acc9d22310362945c9a8f2376/src/transformers/models/dpt/image_processing_dpt.py
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.errors import DataError
from anydistill.preprocess import Preprocess
from anydistill.teachers.base import Teacher
from anydistill.teachers.hf_utils import from_pretrained, read_config, require_transformers, stable_config

log = logging.getLogger(__name__)

# Depth Anything's published processor settings, used when a folder has no preprocessor_config.json.
DEPTH_ANYTHING_PREPROCESS: dict[str, Any] = {
    "do_resize": True,
    "size": (518, 518),
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 14,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": (0.485, 0.456, 0.406),
    "image_std": (0.229, 0.224, 0.225),
}

# PIL resampling codes → torch interpolate modes (transformers maps NEAREST to NEAREST_EXACT).
_RESAMPLE = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}


def depth_anything_preprocess(
    settings: dict[str, Any], emulate_uint8: bool = True, source: Path | None = None
) -> Preprocess:
    """The :class:`~anydistill.preprocess.Preprocess` of ``DPTImageProcessor`` settings (the keys of
    :data:`DEPTH_ANYTHING_PREPROCESS`): ``keep_aspect_ratio`` → resize ``"lower_bound"`` (else
    ``"fixed"``, ``do_resize=False`` → ``"none"``) to multiples of ``ensure_multiple_of``, with the
    ``resample`` filter (antialiased), clamped to 0..255 like the uint8 image upstream resizes (and,
    with ``emulate_uint8``, rounded after the width and after the height pass), rescaled to [0, 1] and
    normalised by ``image_mean``/``image_std``; never padded.

    Raises:
        DataError: settings a single square ``size`` cannot express (non-square ``size``), or a
            ``rescale_factor`` other than 1/255 (``source``: the file to name).
    """
    height, width = (int(v) for v in settings["size"])
    multiple = int(settings["ensure_multiple_of"] or 1)
    if height != width:
        raise DataError(source, f"size {height}x{width} is not square; this teacher needs one target size")
    if not settings["do_resize"]:
        resize, size = "none", height
    elif settings["keep_aspect_ratio"]:
        resize, size = "lower_bound", height
    else:  # both sides to the multiple nearest to size
        resize, size = "fixed", max(multiple, round(height / multiple) * multiple)
    if settings["do_rescale"] and not math.isclose(settings["rescale_factor"], 1 / 255, rel_tol=1e-6):
        raise DataError(source, f"rescale_factor {settings['rescale_factor']} is not 1/255")
    normalize = settings["do_normalize"]
    return Preprocess(
        size=size,
        mean=settings["image_mean"] if normalize else (0.0, 0.0, 0.0),
        std=settings["image_std"] if normalize else (1.0, 1.0, 1.0),
        input_range=1.0 if settings["do_rescale"] else 255.0,
        resize=resize,
        pad="none",
        multiple=multiple,
        interpolation=_RESAMPLE[settings["resample"]],
        antialias=True,
        round_to_uint8=emulate_uint8,
        clamp=True,
        separable=emulate_uint8,
    )


def dpt_output_size(
    height: int, width: int, size: tuple[int, int], keep_aspect_ratio: bool, multiple: int
) -> tuple[int, int]:
    """Working size of ``DPTImageProcessor.resize`` for an ``height x width`` image: the resized shape
    of :func:`depth_anything_preprocess` for these settings (with ``keep_aspect_ratio``,
    :func:`anydistill.preprocess.lower_bound_shape`: the scale closer to 1 of the two, each side rounded
    to a multiple, at least one multiple where upstream could return 0)."""
    settings = {
        **DEPTH_ANYTHING_PREPROCESS,
        "size": tuple(size),
        "keep_aspect_ratio": keep_aspect_ratio,
        "ensure_multiple_of": multiple,
    }
    return depth_anything_preprocess(settings).resized_shape(height, width)


def _processor_settings(folder: Path) -> dict[str, Any]:
    """The folder's image-processor constants (DPT attribute names), or Depth Anything's defaults."""
    if not (folder / "preprocessor_config.json").is_file():
        log.warning("%s has no preprocessor_config.json; using Depth Anything's defaults (518, /14)", folder)
        return dict(DEPTH_ANYTHING_PREPROCESS)
    transformers = require_transformers()
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken user file
        raise DataError(folder / "preprocessor_config.json", f"cannot be read: {exc}") from None
    size = proc.size
    height = size.get("height") if hasattr(size, "get") else getattr(size, "height", None)
    width = size.get("width") if hasattr(size, "get") else getattr(size, "width", None)
    if not height or not width:
        raise DataError(folder / "preprocessor_config.json", f"expected size {{height, width}}, got {size}")
    settings = {key: getattr(proc, key, DEPTH_ANYTHING_PREPROCESS[key]) for key in DEPTH_ANYTHING_PREPROCESS}
    settings["size"] = (int(height), int(width))
    settings["resample"] = int(getattr(settings["resample"], "value", settings["resample"]))
    settings["ensure_multiple_of"] = int(settings["ensure_multiple_of"] or 1)
    settings["image_mean"] = tuple(float(v) for v in settings["image_mean"])
    settings["image_std"] = tuple(float(v) for v in settings["image_std"])
    if getattr(proc, "do_pad", False):
        log.warning("%s: the processor pads (do_pad); this teacher never pads", folder)
    return settings


class HFDepthAnythingTeacher(Teacher):
    """Depth Anything (V1 or V2, relative or metric) from a local ``transformers`` folder.

    Structure: ``images01 (B, 3, H, W)`` → ``preprocess`` (:func:`depth_anything_preprocess`): resize to
    ``(h, w)`` (:func:`dpt_output_size`), rescale + normalise → ``DepthAnythingForDepthEstimation`` →
    ``predicted_depth (B, h, w)`` → bicubic to ``(B, 1, H, W)``. Relative models predict disparity
    (returned as is); metric models predict metres, returned as disparity ``1 / depth`` (``self.metric``
    tells which).

    Args:
        folder: a folder with ``config.json`` (model_type ``depth_anything``), the weights and, usually,
            ``preprocessor_config.json``.
        image_size: override the processor's target size (square ``size``; default 518 upstream).
        emulate_uint8: reproduce the upstream processor's uint8 resizing (see module docstring).
        device: where to load it.
    """

    task = "depth"

    def __init__(
        self,
        folder: str | Path,
        image_size: int | None = None,
        emulate_uint8: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        folder = Path(folder)
        config = read_config(folder)
        if config.get("model_type") != "depth_anything":
            raise DataError(
                folder / "config.json",
                f"model_type is {config.get('model_type')!r}, expected 'depth_anything' (Depth Anything V1/V2)",
            )
        transformers = require_transformers()
        self.model = from_pretrained(transformers.AutoModelForDepthEstimation, folder)
        settings = _processor_settings(folder)
        if image_size is not None:
            settings["size"] = (int(image_size), int(image_size))
        if settings["resample"] not in _RESAMPLE:
            log.warning(
                "%s: resample=%s is not available in torch; using bicubic", folder, settings["resample"]
            )
            settings["resample"] = 3
        self.settings = settings
        self.emulate_uint8 = emulate_uint8
        self.preprocess = depth_anything_preprocess(
            settings, emulate_uint8, folder / "preprocessor_config.json"
        )
        self.metric = self.model.config.depth_estimation_type == "metric"
        self._freeze(
            {"settings": settings, "emulate_uint8": emulate_uint8, "model_config": stable_config(config)}
        )
        self.to(device)

    def pixel_values(self, images01: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] → the model's input ``(B, 3, h, w)``, as the upstream processor
        (``preprocess(images01)``)."""
        return self.preprocess(images01)

    def _predict(self, images01: Tensor) -> Tensor:
        pixel_values = self.pixel_values(images01)  # (B, 3, h, w)
        depth = self.model(pixel_values=pixel_values).predicted_depth  # (B, h, w)
        out = F.interpolate(depth[:, None], size=images01.shape[-2:], mode="bicubic", align_corners=False)
        if self.metric:
            # Bicubic can overshoot below the nearest depth (even to <= 0): clamp before inverting.
            nearest = depth.amin(dim=(-2, -1)).clamp_min(1e-6).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
            out = 1.0 / torch.maximum(out, nearest)  # (B, 1, H, W) metres → disparity
        return out  # (B, 1, H, W)

    def extra_repr(self) -> str:
        s = self.settings
        ratio = "keep aspect" if s["keep_aspect_ratio"] else "stretch"
        return (
            f"size={s['size']} ({ratio}, /{s['ensure_multiple_of']}), metric={self.metric}, "
            + super().extra_repr()
        )
