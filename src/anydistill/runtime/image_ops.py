"""The pre- and post-processing of :class:`~anydistill.preprocess.Preprocess` in numpy and Pillow.

What :class:`anydistill.inference.Predictor` and :class:`anydistill.promptable.predictor.SamPredictor`
do with torch, for the onnxruntime path, which runs without torch. Pillow's float (mode ``"F"``) resize
is the kernel torch's ``antialias=True`` resize was ported from, so a dense student's input matches
the PyTorch predictor's to float rounding (tests/runtime/ checks it); SAM's frame is Pillow's uint8
bilinear resize, exactly what segment-anything's ``ResizeLongestSide.apply_image`` calls.

Shapes: images are uint8 ``(H, W, 3)``; model inputs float32 ``(3, H_in, W_in)``; predictions float32
``(C, H_in, W_in)``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from anydistill.errors import ConfigError
from anydistill.preprocess import Preprocess

__all__ = ["dense_input", "resize_channels", "restore_prediction", "sam_input", "sam_point_coords"]

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest-exact": Image.Resampling.NEAREST}  # fmt: skip


def resize_channels(maps: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """float32 ``(C, H, W)`` → ``(C, h, w)``, each channel with Pillow's float resize (antialiased when
    shrinking, as ``F.interpolate(..., antialias=True, align_corners=False)``)."""
    h, w = int(size[0]), int(size[1])
    if maps.shape[-2:] == (h, w):
        return np.ascontiguousarray(maps, np.float32)
    flt = _FILTERS[interpolation]
    out = np.empty((maps.shape[0], h, w), np.float32)
    for c, channel in enumerate(maps):
        out[c] = np.asarray(
            Image.fromarray(np.ascontiguousarray(channel, np.float32), mode="F").resize((w, h), flt)
        )
    return out


def _check_dense_spec(spec: Preprocess) -> None:
    """The specs the dense students are exported with (``TaskModel.preprocess_spec``): long-side resize,
    black padding to a square before normalisation, pixels in [0, 1]; anything else is refused."""
    if (
        spec.input_range != 1.0 or spec.round_to_uint8 or spec.separable or not spec.antialias
        or spec.resize != "long_side" or spec.pad != "square" or not spec.pad_before_normalize
    ):  # fmt: skip
        raise ConfigError(
            "the onnx runtime's dense path takes the dense students' pre-processing (pixels in [0, 1], "
            f"antialiased float resize); this export's is {spec.to_dict()}"
        )


def dense_input(
    image: np.ndarray, spec: Preprocess, side: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """uint8 ``(H, W, 3)`` → the dense student's input float32 ``(3, side, side)`` (long side resized to
    ``spec``'s shape at ``side``, clamped to [0, 1], padded bottom/right with black, then normalised) and
    the pad ``(top, left, bottom, right)``: :meth:`anydistill.inference.Predictor.prepare` and ``run``."""
    _check_dense_spec(spec)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = spec.with_size(side).resized_shape(*image.shape[:2])
    chw = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)  # (3, H, W) in [0, 1]
    x = np.clip(resize_channels(chw, (h, w), spec.interpolation), 0.0, 1.0)
    padded = np.zeros((3, side, side), np.float32)  # black padding, then normalised with the rest
    padded[:, :h, :w] = x
    mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)
    return (padded - mean) / std, (0, 0, side - h, side - w)


def restore_prediction(
    pred: np.ndarray, pad: tuple[int, int, int, int], orig_size: tuple[int, int], argmax: bool
) -> np.ndarray:
    """One prediction float32 ``(C, S, S)`` → the image's own size: disparity float32 ``(H, W)`` clamped at
    0, or (``argmax``) class ids uint8 ``(H, W)``; the padding cropped, then a bilinear resize."""
    top, left, bottom, right = pad
    s_h, s_w = pred.shape[-2:]
    cropped = pred[:, top : s_h - bottom, left : s_w - right]
    if not argmax:
        return np.maximum(resize_channels(cropped, orig_size)[0], 0.0)
    return _argmax_bands(cropped, orig_size)


#: Float elements of one band of a restored class map ``(C, b, W)`` (64 MB).
ARGMAX_BAND_ELEMENTS = 1 << 24


def _argmax_bands(cropped: np.ndarray, orig_size: tuple[int, int]) -> np.ndarray:
    """Class ids uint8 ``(H, W)`` of ``cropped`` ``(C, h, w)`` resized to ``orig_size``, one band of output
    rows at a time (Pillow's ``box``: the band's source rows, the filter's support taken from the whole
    map), so the full-size ``(C, H, W)`` float map is never made: a 150-class model on a 12 Mpx photo
    needs 64 MB here, not 7 GB."""
    height, width = int(orig_size[0]), int(orig_size[1])
    channels, h, w = cropped.shape
    rows = max(1, ARGMAX_BAND_ELEMENTS // max(1, channels * width))
    images = [Image.fromarray(np.ascontiguousarray(c, np.float32), mode="F") for c in cropped]
    out = np.empty((height, width), np.uint8)
    scale = h / height
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        box = (0.0, y0 * scale, float(w), y1 * scale)
        band = np.stack([np.asarray(im.resize((width, y1 - y0), Image.Resampling.BILINEAR, box=box))
                         for im in images])  # fmt: skip
        out[y0:y1] = band.argmax(0)
    return out


def sam_input(image: np.ndarray, spec: Preprocess) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 ``(H, W, 3)`` → SAM's encoder input float32 ``(1, 3, S, S)`` and the resized ``(h, w)``:
    long side to ``S`` with Pillow's uint8 bilinear resize (segment-anything's ``apply_image``),
    normalised on 0..255, zero-padded bottom/right after normalisation."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = spec.resized_shape(*image.shape[:2])
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    side = spec.size
    x = np.zeros((1, 3, side, side), np.float32)
    x[0, :, :h, :w] = ((resized - mean) / std).transpose(2, 0, 1)
    return x, (h, w)


def sam_point_coords(coords: np.ndarray, orig_size: tuple[int, int], side: int) -> np.ndarray:
    """``(..., 2)`` x, y in image pixels → SAM's resized frame (``ResizeLongestSide.apply_coords``)."""
    old_h, old_w = orig_size
    scale = side / max(old_h, old_w)
    new_h, new_w = int(old_h * scale + 0.5), int(old_w * scale + 0.5)
    out = np.array(coords, np.float32, copy=True)
    out[..., 0] *= new_w / old_w
    out[..., 1] *= new_h / old_h
    return out
