"""Images for the web demo's tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def random_image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Random uint8 ``(H, W, 3)``."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def data_url_image(url: str) -> np.ndarray:
    """The picture in a ``data:image/...;base64,`` URL as an array."""
    import base64

    header, payload = url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))))
