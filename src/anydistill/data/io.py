"""Robust readers for the files users bring: images, and the image files of a folder.

Every reader turns a bad file into a :class:`~anydistill.errors.DataError` that names the file and says
what is wrong in plain words ("empty file (0 bytes)", "truncated image", ...), so a broken file in a
folder of 100k images is one clear line, not a PIL stack trace.

Contents are detected from the bytes, never from the extension: a PNG named ``.jpg`` loads (with one
warning per extension/format pair).

Conventions (see the project's data conventions):

- ``read_image`` -> uint8 ``(H, W, 3)`` RGB, EXIF orientation applied.
- ``find_images`` -> the sorted image files under a folder (``iter_files``: all its files), hidden ones
  skipped.

Label files (depth maps, masks, ``classes.json``) are read by :mod:`anydistill.data.labels`, which
decodes images through this module's ``_open`` / ``_exif_transpose``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from anydistill.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "exif_orientation",
    "find_images",
    "iter_files",
    "read_image",
]

#: Extensions (lower case, with dot) that folder datasets look for.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")

# PIL format names an extension is expected to hold; used only to warn about misnamed files.
_EXPECTED_FORMATS: dict[str, tuple[str, ...]] = {
    ".png": ("PNG",),
    ".jpg": ("JPEG", "MPO"),
    ".jpeg": ("JPEG", "MPO"),
    ".webp": ("WEBP",),
    ".tif": ("TIFF",),
    ".tiff": ("TIFF",),
    ".bmp": ("BMP", "DIB"),
}
_warned_mismatch: set[tuple[str, str]] = set()
_warned_once: set[str] = set()

_EXIF_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _warn_once(key: str, message: str) -> None:
    if key not in _warned_once:
        _warned_once.add(key)
        logger.warning(message)


def _open(path: str | Path) -> Image.Image:
    """Opens and fully decodes ``path`` with PIL, turning every failure into a ``DataError``.

    PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone (False), so a truncated file is an
    error here rather than an image with a grey bottom half. Pillow's decompression-bomb guard is kept
    (an image above ``2 * PIL.Image.MAX_IMAGE_PIXELS``, 179 Mpx by default, is refused) but its warning
    for images above ``MAX_IMAGE_PIXELS`` (89 Mpx: a 12000 x 9000 photo) is silenced.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot read file: {e.strerror or e}") from None
    if path.is_dir():
        raise DataError(path, "is a folder, not a file")
    if size == 0:
        raise DataError(path, "empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS (89 Mpx): a 12000 x 9000 photo (108 Mpx) is not a bomb.
        # Only its refusal above 2 * MAX_IMAGE_PIXELS (179 Mpx) counts: a one-line DataError below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = _open_and_load(path)
    _check_format_matches_extension(path, img.format)
    return img


def _open_and_load(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
    except UnidentifiedImageError as e:
        raise DataError(path, f"not an image or corrupt: {e}") from None
    except Image.DecompressionBombError as e:
        raise DataError(
            path, f"image too large ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if it is trusted"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"not an image or corrupt: {e}") from None
    try:
        img.load()
    except OSError as e:
        img.close()
        message = str(e)
        if "truncated" in message.lower():
            raise DataError(path, f"truncated image ({message})") from None
        raise DataError(path, f"not an image or corrupt: {message}") from None
    except (SyntaxError, ValueError, EOFError) as e:
        img.close()
        raise DataError(path, f"not an image or corrupt: {e}") from None
    return img


def _check_format_matches_extension(path: Path, fmt: str | None) -> None:
    ext = path.suffix.lower()
    expected = _EXPECTED_FORMATS.get(ext)
    if fmt is None or expected is None or fmt in expected:
        return
    if (ext, fmt) not in _warned_mismatch:
        _warned_mismatch.add((ext, fmt))
        logger.warning(
            "%s: contents are %s but the extension is %s; reading it by its contents "
            "(warned once per extension/format pair)",
            path,
            fmt,
            ext,
        )


def _exif_transpose(img: Image.Image, path: Path) -> Image.Image:
    """Applies the EXIF orientation tag; a broken EXIF block is a warning, not an error."""
    try:
        if int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1)) == 1:
            return img  # nothing to do; skips the full-image copy exif_transpose would make
        out = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as e:
        _warn_once(f"exif:{path}", f"{path}: unreadable EXIF block ({e}); orientation not applied")
        return img
    return img if out is None else out


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of ``path`` (1 = upright, 6/8 = rotated 90 degrees), 1 if absent."""
    img = _open(path)
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1
    finally:
        img.close()


def _to_rgb_uint8(img: Image.Image, path: Path) -> np.ndarray:
    """Converts any PIL mode to uint8 ``(H, W, 3)``.

    - ``RGB``: as stored. ``L``/``1``: grey replicated to three channels.
    - ``RGBA``/``LA``/``PA``/``RGBa``: alpha is *dropped* (the stored colour is kept), not composited
      on black: compositing would darken every semi-transparent pixel, while annotations were drawn
      on the stored colours.
    - ``P`` (palette): looked up through its palette (alpha in the palette dropped as above).
    - ``CMYK``/``YCbCr``/``HSV``/``LAB``: PIL's conversion to RGB.
    - 16-bit (``I;16*``) and 32-bit ``I``: scaled by the *format's* full range, ``v * 255 / 65535``
      (``I`` values clipped to [0, 65535]), rounded. Not a per-image min/max stretch: that would make
      the brightness of a pixel depend on the rest of the image. (12-bit data stored in 16 bits
      therefore looks dark.)
    - ``F`` (32-bit float): values are taken as [0, 1] when their maximum is <= 1, otherwise divided
      by their maximum; non-finite values become 0.
    """
    mode = img.mode
    if mode == "RGB":
        arr = _rgb_copy(img)  # a writable copy
    elif mode in _SIXTEEN_BIT_MODES or mode == "I":
        raw = np.asarray(img).astype(np.float64)
        raw = np.clip(raw, 0.0, 65535.0)
        grey = np.rint(raw * (255.0 / 65535.0)).astype(np.uint8)
        arr = np.repeat(grey[..., None], 3, axis=-1)  # (H, W, 3)
    elif mode == "F":
        raw = np.asarray(img, dtype=np.float64)
        raw = np.where(np.isfinite(raw), raw, 0.0).clip(min=0.0)
        top = float(raw.max()) if raw.size else 0.0
        scale = 255.0 if top <= 1.0 else 255.0 / top
        grey = np.rint(raw * scale).clip(0, 255).astype(np.uint8)
        arr = np.repeat(grey[..., None], 3, axis=-1)  # (H, W, 3)
    elif mode in ("RGBA", "RGBa", "RGBX"):
        arr = np.asarray(img, dtype=np.uint8)[..., :3]
    elif mode in ("LA", "La"):
        grey = np.asarray(img, dtype=np.uint8)[..., 0]
        arr = np.repeat(grey[..., None], 3, axis=-1)  # (H, W, 3)
    else:
        try:
            arr = np.array(img.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as e:
            raise DataError(path, f"unsupported image mode {mode!r}: {e}") from None
    return np.ascontiguousarray(arr)


def _rgb_copy(img: Image.Image) -> np.ndarray:
    """An RGB image as a writable uint8 ``(H, W, 3)`` array, copied in bands of rows: ``np.array(img)``
    first makes a full-size ``tobytes`` copy (a 12000 x 9000 photo would be held three times, not two)."""
    width, height = img.size
    arr = np.empty((height, width, 3), np.uint8)
    rows = max(1, (16 << 20) // (3 * width))  # 16 MB bands
    for y0 in range(0, height, rows):
        arr[y0 : y0 + rows] = np.asarray(img.crop((0, y0, width, min(height, y0 + rows))))
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """Reads an image file as RGB.

    Args:
        path: any format PIL reads (png, jpg, webp, tif, bmp, ...); the contents decide, not the name.

    Returns:
        uint8 array ``(H, W, 3)``, EXIF orientation applied (see ``_to_rgb_uint8`` for how grey,
        alpha, palette, CMYK and 16-bit images become RGB).

    Raises:
        DataError: missing, empty, truncated, corrupt or not an image; or larger than Pillow's
            decompression-bomb limit, ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (179 Mpx by default; a
            16000 x 12000 photo is refused, a 12000 x 9000 one loads without a warning). Raise
            ``PIL.Image.MAX_IMAGE_PIXELS`` (or set it to None) for trusted larger files.
    """
    path = Path(path)
    img = _open(path)
    try:
        oriented = _exif_transpose(img, path)
        if oriented is not img:
            img.close()  # the rotated copy is all that is needed: one decoded image held, not two
        return _to_rgb_uint8(oriented, path)
    finally:
        img.close()


# ------------------------------------------------------------------------------- finding files
def _is_hidden(rel: Path) -> bool:
    """Whether a path relative to the searched folder has a part starting with ``"."``: ``.DS_Store``,
    ``.ipynb_checkpoints/``, macOS ``._name.jpg`` resource forks (not images)."""
    return any(part.startswith(".") for part in rel.parts)


def iter_files(folder: str | Path, recursive: bool = True) -> Iterator[Path]:
    """The files under the folder ``folder``, hidden files and folders (below ``folder``) skipped.

    Args:
        folder: an existing folder (callers check; a missing one yields nothing).
        recursive: also look in sub-folders.

    Returns:
        the files as ``folder / <relative path>``, in ``Path.rglob`` order (unsorted).
    """
    folder = Path(folder)
    for path in folder.rglob("*") if recursive else folder.glob("*"):
        if not _is_hidden(path.relative_to(folder)) and path.is_file():
            yield path


def find_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """The image files under ``root``, by extension (:data:`IMAGE_EXTENSIONS`, any case).

    Args:
        root: a folder, or one file (returned as is, whatever its extension).
        recursive: also look in sub-folders.

    Returns:
        the ``N >= 1`` paths ``root / <relative path>``, sorted; hidden files and folders are skipped
        (see :func:`iter_files`).

    Raises:
        DataError: ``root`` does not exist, or holds no image; names ``root``.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(root, "no such file or folder")
    files = sorted(p for p in iter_files(root, recursive) if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        where = "recursively" if recursive else "not in sub-folders"
        raise DataError(
            root, f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, {where})"
        )
    return files
