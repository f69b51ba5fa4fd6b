"""The demo server's request checks, without a server: the /segment body, uploaded bytes, hosts, sockets."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from serve_helpers import png_bytes, random_image

pytest.importorskip("fastapi", reason="the web demo needs the [serve] extra: pip install 'anydistill[serve]'")

from anydistill.errors import ConfigError  # noqa: E402
from anydistill.serve.app import _host_name  # noqa: E402
from anydistill.serve.images import decode_image, display_shape  # noqa: E402
from anydistill.serve.protocol import RequestError, ServeLimits, parse_segment  # noqa: E402
from anydistill.serve.server import bind, is_loopback  # noqa: E402


def test_a_good_segment_body_is_parsed():
    prompt = parse_segment(
        {"image_id": "abc_-1", "points": [[1, 2.5], [3, 4]], "labels": [1, 0], "box": [0, 0, 5, 6]}, 8
    )
    assert prompt.points == [(1.0, 2.5), (3.0, 4.0)] and prompt.labels == [1, 0]
    assert prompt.box == (0.0, 0.0, 5.0, 6.0) and prompt.multimask is True
    assert parse_segment({"image_id": "a", "box": [0, 0, 1, 1], "multimask": False}, 8).points == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([1, 2], "must be a JSON object"),
        ({"image_id": "../../etc/passwd", "points": [[1, 1]], "labels": [1]}, "image_id"),
        ({"image_id": 5, "points": [[1, 1]], "labels": [1]}, "image_id"),
        ({"image_id": "a"}, "no prompt"),
        ({"image_id": "a", "points": [[1, 1]], "labels": []}, "one label per point"),
        ({"image_id": "a", "points": [[1, 1]], "labels": [2]}, "labels[0]"),
        ({"image_id": "a", "points": [[1, 1]], "labels": [True]}, "labels[0]"),
        ({"image_id": "a", "points": [[1]], "labels": [1]}, "points[0]"),
        ({"image_id": "a", "points": [[float("nan"), 1]], "labels": [1]}, "finite number"),
        ({"image_id": "a", "points": [["1", 1]], "labels": [1]}, "finite number"),
        ({"image_id": "a", "points": [[1, 1]] * 9, "labels": [1] * 9}, "at most 8"),
        ({"image_id": "a", "box": [5, 0, 5, 4]}, "x0 < x1"),
        ({"image_id": "a", "box": [0, 4, 5, 1]}, "y0 < y1"),
        ({"image_id": "a", "box": [0, 1, 2]}, "[x0, y0, x1, y1]"),
        ({"image_id": "a", "box": [0, 0, 1, 1], "multimask": "yes"}, "multimask"),
        ({"image_id": "a", "box": [0, 0, 1, 1], "path": "/etc"}, "unknown field"),
    ],
)
def test_a_bad_segment_body_is_one_400_line(body, words):
    with pytest.raises(RequestError) as info:
        parse_segment(body, 8)
    assert info.value.status == 400 and words in info.value.message and "\n" not in info.value.message


def test_uploads_of_any_mode_become_rgb():
    rgb = random_image(5, 7)
    assert np.array_equal(decode_image(png_bytes(rgb), 64), rgb)
    grey = Image.fromarray(rgb[..., 0])
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    assert np.array_equal(decode_image(buf.getvalue(), 64), np.repeat(rgb[..., :1], 3, axis=2))
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(decode_image(png_bytes(rgba), 64), rgb)  # alpha dropped, colours kept


def test_exif_orientation_is_applied():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(random_image(10, 20)).save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), 64).shape == (20, 10, 3)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces ``width`` x ``height`` but holds (almost) no pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty upload"),
        (b"GIF89a not really", 415, "not an image"),
        (b"hello, I am text", 415, "not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not an image"),  # EPS: never decoded
        (png_bytes(random_image(10, 80)), 413, "80x10 px"),
        (_png_header_only(10000, 5000), 413, "10000x5000 px"),  # refused from its header, never allocated
        (_png_header_only(50000, 40000), 413, "decompression bomb"),  # Pillow's own guard, same answer
        (png_bytes(random_image(20, 20))[:-30], 400, "truncated"),
    ],
)
def test_bad_uploads_are_refused_in_one_line(data, status, words):
    with pytest.raises(RequestError) as info:
        decode_image(data, max_side=64)
    assert info.value.status == status and words in info.value.message and "\n" not in info.value.message


def test_display_shape_keeps_the_aspect_and_never_enlarges():
    assert display_shape(48, 64) == (48, 64)
    assert display_shape(3000, 4000) == (768, 1024)
    assert display_shape(1, 10000) == (1, 1024)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:7860", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:80", "::1"),
        ("::1", "::1"),
        ("evil.com:80", "evil.com"),
    ],
)
def test_host_header_names(header, name):
    assert _host_name(header) == name


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "::1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.5", "example.com", "::"]))


def test_a_port_in_use_is_one_config_error():
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_limits_below_one_are_refused():
    with pytest.raises(ConfigError, match="max_side: must be at least 1"):
        ServeLimits(max_side=0)
