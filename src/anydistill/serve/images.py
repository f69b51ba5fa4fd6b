"""Uploaded bytes → an RGB image, refused in one line when it is not one or is too big; pictures back out.

Decoding is PIL's, limited to the formats a photo comes in (no EPS, which would run Ghostscript, nor
any other plug-in), with the size read from the header and checked *before* the pixels are decoded,
so a 50000 x 50000 PNG of a few kilobytes is refused without allocating it. Modes, alpha and EXIF
orientation are handled as :func:`anydistill.data.io.read_image` handles a file (same helpers).

Pictures sent back to the page are at most :data:`DISPLAY_SIDE` pixels on the long side (the page
shows them no larger); coordinates stay in the original image's pixels.
"""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anydistill.data.io import _exif_transpose, _to_rgb_uint8
from anydistill.errors import DataError
from anydistill.serve.protocol import RequestError

__all__ = [
    "ALLOWED_FORMATS",
    "DISPLAY_SIDE",
    "decode_image",
    "display_shape",
    "jpeg_data_url",
    "png_data_url",
]

#: PIL formats an upload may be in.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
#: Long side (pixels) of the pictures sent back to the page.
DISPLAY_SIDE = 1024
#: Stands in for a file name in messages of the shared readers (an upload has none).
_UPLOAD = Path("upload")


def decode_image(data: bytes, max_side: int) -> np.ndarray:
    """The image in ``data`` as uint8 ``(H, W, 3)`` RGB, EXIF orientation applied.

    Raises:
        RequestError: 400 empty or corrupt; 413 long side above ``max_side`` (or a decompression bomb);
            415 not an image in one of :data:`ALLOWED_FORMATS`.
    """
    if not data:
        raise RequestError(400, "empty upload: no image bytes were received")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise RequestError(415, "not an image: send a PNG, JPEG, WebP, TIFF, BMP or GIF file") from None
        except Image.DecompressionBombError:  # above 2 * PIL.Image.MAX_IMAGE_PIXELS (179 Mpx by default)
            raise RequestError(
                413,
                f"image too large (a decompression bomb?); this server takes at most {max_side} px on the long side",
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(400, f"corrupt image: {_first_line(exc)}") from None
        with img:
            width, height = img.size
            if max(width, height) > max_side:
                raise RequestError(
                    413,
                    f"image is {width}x{height} px; this server takes at most {max_side} px on the long side",
                )
            if width < 1 or height < 1:
                raise RequestError(400, f"image has no pixels ({width}x{height})")
            try:
                img.load()
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise RequestError(400, f"truncated or corrupt image: {_first_line(exc)}") from None
            try:
                return _to_rgb_uint8(_exif_transpose(img, _UPLOAD), _UPLOAD)
            except DataError as exc:
                raise RequestError(415, exc.problem) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def display_shape(height: int, width: int) -> tuple[int, int]:
    """``(h, w)`` of a picture of an ``height`` x ``width`` image shown at most :data:`DISPLAY_SIDE` px."""
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(array: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``array`` uint8 ``(H, W[, 3])``, bool ``(H, W)`` or float32 ``(H, W)`` resized to ``shape = (h, w)``
    (bilinear; ``nearest`` for class ids and masks); returned as is when already that size."""
    if array.shape[:2] == shape:
        return array
    mask = array.dtype == np.bool_
    pil = Image.fromarray(array.astype(np.uint8) * 255 if mask else array)
    resample = Image.Resampling.NEAREST if nearest or mask else Image.Resampling.BILINEAR
    out = np.asarray(pil.resize((shape[1], shape[0]), resample))
    return out > 127 if mask else out


def png_data_url(array: np.ndarray) -> str:
    """``array`` uint8 ``(H, W)`` or ``(H, W, 3)`` as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_data_url(array: np.ndarray, quality: int = 92) -> str:
    """``array`` uint8 ``(H, W, 3)`` as a ``data:image/jpeg;base64,...`` URL (photos: 5-10x smaller than PNG)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
