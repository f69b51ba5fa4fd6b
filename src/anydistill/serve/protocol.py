"""What a request to the demo server may hold: the limits, the ``/segment`` body, and the 4xx answer.

Every refusal is a :class:`RequestError`: an HTTP status and one line for the user, sent as
``{"error": "..."}``. Nothing here touches a model or the network; the checks are plain functions,
so they are tested without a server.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from anydistill.errors import ConfigError

__all__ = ["LOOPBACK_HOSTS", "RequestError", "SegmentPrompt", "ServeLimits", "parse_segment"]

#: Host header names a server bound to a loopback address answers (a DNS-rebinding page gets a 400).
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")

_IMAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message`` for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServeLimits:
    """How much one request may ask of the server.

    Attributes:
        max_upload_bytes: bytes of one uploaded image (``--max-upload-mb``); checked on the
            ``Content-Length`` header and on the bytes actually received.
        max_side: pixels of an image's long side (``--max-side``), read from its header before decoding.
        cache_images: promptable images whose embedding is kept (least recently used dropped first).
        max_points: points in one ``/segment`` request.
        max_json_bytes: bytes of one ``/segment`` body.
        hosts: ``Host`` header names answered (port stripped); ``None``: any (a non-loopback ``--host``).
    """

    max_upload_bytes: int = 20 * 2**20
    max_side: int = 4096
    cache_images: int = 4
    max_points: int = 64
    max_json_bytes: int = 64 * 2**10
    hosts: tuple[str, ...] | None = LOOPBACK_HOSTS

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_side", "cache_images", "max_points", "max_json_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class SegmentPrompt:
    """A checked ``/segment`` request: points ``(N, 2)`` (x, y) in original-image pixels with labels
    (1 object, 0 background), an optional box ``(x0, y0, x1, y1)``, and whether to return 3 masks."""

    image_id: str
    points: list[tuple[float, float]]
    labels: list[int]
    box: tuple[float, float, float, float] | None
    multimask: bool


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(400, f"{what}: expected a finite number, got {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    """A short rendering of a client's value for a message (never a whole body echoed back)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_segment(body: Any, max_points: int) -> SegmentPrompt:
    """The JSON body of ``/segment`` (already parsed) → a :class:`SegmentPrompt`.

    Body: ``{"image_id": str, "points": [[x, y], ...], "labels": [1 | 0, ...], "box": [x0, y0, x1, y1]
    | null, "multimask": bool}``; ``points``/``labels``, ``box`` and ``multimask`` (default true) are
    optional, but a prompt needs at least one point or a box. Whether points lie in the image is checked
    by the predictor, which knows the image's size.

    Raises:
        RequestError: 400 naming the first field that is wrong.
    """
    if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"image_id", "points", "labels", "box", "multimask"})
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(map(_show, unknown))}")
    image_id = body.get("image_id")
    if not isinstance(image_id, str) or not _IMAGE_ID.match(image_id):
        raise RequestError(400, f"image_id: expected the id /image returned, got {_show(image_id)}")
    points_in, labels_in = body.get("points") or [], body.get("labels") or []
    if not isinstance(points_in, list) or not isinstance(labels_in, list):
        raise RequestError(400, "points and labels: expected lists ([[x, y], ...] and [1 or 0, ...])")
    if len(points_in) != len(labels_in):
        raise RequestError(
            400, f"{len(points_in)} point(s) but {len(labels_in)} label(s): give one label per point"
        )
    if len(points_in) > max_points:
        raise RequestError(400, f"{len(points_in)} points; this server takes at most {max_points}")
    points = []
    for i, point in enumerate(points_in):
        if not isinstance(point, list) or len(point) != 2:
            raise RequestError(400, f"points[{i}]: expected [x, y], got {_show(point)}")
        points.append((_number(point[0], f"points[{i}][0]"), _number(point[1], f"points[{i}][1]")))
    labels = []
    for i, label in enumerate(labels_in):
        if isinstance(label, bool) or label not in (0, 1):
            raise RequestError(400, f"labels[{i}]: expected 1 (object) or 0 (background), got {_show(label)}")
        labels.append(int(label))
    box = body.get("box")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4:
            raise RequestError(400, f"box: expected [x0, y0, x1, y1], got {_show(box)}")
        x0, y0, x1, y1 = (_number(v, f"box[{i}]") for i, v in enumerate(box))
        if not (x0 < x1 and y0 < y1):
            raise RequestError(400, f"box {_show(box)}: needs x0 < x1 and y0 < y1")
        box = (x0, y0, x1, y1)
    if not points and box is None:
        raise RequestError(400, "no prompt: give at least one point or a box")
    multimask = body.get("multimask", True)
    if not isinstance(multimask, bool):
        raise RequestError(400, f"multimask: expected true or false, got {_show(multimask)}")
    return SegmentPrompt(image_id, points, labels, box, multimask)
