"""Readers: every bad-input case gives a DataError naming the file; odd formats load correctly."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anydistill.data import io as adio
from anydistill.data.io import read_image
from anydistill.data.labels import ClassTable, read_classes, read_depth, read_mask
from anydistill.errors import DataError

RNG = np.random.default_rng(0)


def _rgb(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _jpeg_bytes(arr: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ bad files
def test_zero_byte_image(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty file \(0 bytes\)") as info:
        read_image(path)
    assert info.value.path == path


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "nope.png")


def test_random_bytes_image(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(RNG.integers(0, 256, size=500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="not an image or corrupt") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = _jpeg_bytes(RNG.integers(0, 256, size=(48, 48, 3), dtype=np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated image") as info:
        read_image(path)
    assert info.value.path == path


def test_truncated_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_image(path)


def test_png_named_jpg_loads_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arr = _rgb()
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for p in paths:
        Image.fromarray(arr).save(p, format="PNG")
    adio._warned_mismatch.discard((".jpg", "PNG"))
    with caplog.at_level(logging.WARNING, logger="anydistill.data.io"):
        for p in paths:
            np.testing.assert_array_equal(read_image(p), arr)  # lossless: the PNG decoder was used
    warnings = [r for r in caplog.records if "contents are PNG" in r.getMessage()]
    assert len(warnings) == 1


# ------------------------------------------------------------------------------------- modes
def test_greyscale_to_rgb(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, size=(4, 7), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (4, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(), np.zeros((6, 5, 1), np.uint8)], axis=-1)
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out, rgba[..., :3])  # stored colours kept even where alpha == 0


def test_la_drops_alpha(tmp_path: Path) -> None:
    la = np.stack([np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, np.zeros((3, 4), np.uint8)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out, np.repeat(la[..., :1], 3, axis=-1))


def test_sixteen_bit_scaled_by_full_range(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896], [65535, 514, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").mode.startswith("I")
    out = read_image(tmp_path / "s.png")
    expected = np.array([[0, 1, 128], [255, 2, 4]], dtype=np.uint8)  # round(v * 255 / 65535)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_palette_image_to_rgb(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([10, 20, 30, 200, 100, 0, 5, 250, 60] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    expected = np.array([[[10, 20, 30], [200, 100, 0]], [[5, 250, 60], [200, 100, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_cmyk_to_rgb(tmp_path: Path) -> None:
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tiff")
    out = read_image(tmp_path / "c.tiff")
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 255, 255], [0, 0, 0]])  # white, cyan, black


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, "red", "blue"), (8, "blue", "red")])
def test_exif_orientation_applied(tmp_path: Path, orientation: int, top: str, bottom: str) -> None:
    # Stored 16x32: left half red, right half blue. Orientation 6 = "rotate 90 CW to display",
    # which brings the left half to the top; orientation 8 (90 CCW) brings it to the bottom.
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16, 0] = 255
    stored[:, 16:, 2] = 255
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rot.jpg"
    img.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    out = read_image(path)
    assert out.shape == (32, 16, 3)
    colour = {"red": np.array([255, 0, 0]), "blue": np.array([0, 0, 255])}
    np.testing.assert_allclose(out[4:12, 4:12].reshape(-1, 3).mean(0), colour[top], atol=8)
    np.testing.assert_allclose(out[20:28, 4:12].reshape(-1, 3).mean(0), colour[bottom], atol=8)


# --------------------------------------------------------------------------------------- depth
def test_depth_png_scaled(tmp_path: Path) -> None:
    raw = np.array([[0, 1000, 2500], [65535, 1, 42]], dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "d.png")
    out = read_depth(tmp_path / "d.png", depth_scale=1000.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, raw.astype(np.float64) / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(read_depth(tmp_path / "d.png", depth_scale=256.0), raw / 256.0, rtol=1e-6)


def test_depth_npy_invalid_values_become_zero(tmp_path: Path) -> None:
    raw = np.array([[1.5, np.nan, np.inf], [-np.inf, -2.0, 0.0], [3.0, 7.25, 1e-3]], dtype=np.float64)
    np.save(tmp_path / "d.npy", raw)
    out = read_depth(tmp_path / "d.npy")
    expected = np.array([[1.5, 0, 0], [0, 0, 0], [3.0, 7.25, 1e-3]], dtype=np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_depth_all_invalid_is_allowed(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.full((1, 3, 4), np.nan, dtype=np.float32))  # (1, H, W) squeezed
    out = read_depth(tmp_path / "d.npy")
    assert out.shape == (3, 4) and not out.any()


def test_depth_rejects_colour_png(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).save(tmp_path / "d.png")
    with pytest.raises(DataError, match="single-channel"):
        read_depth(tmp_path / "d.png")


def test_depth_rejects_bad_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.ones((2, 3, 4), np.float32))
    with pytest.raises(DataError, match=r"shape \(2, 3, 4\)"):
        read_depth(tmp_path / "d.npy")


def test_depth_corrupt_npy(tmp_path: Path) -> None:
    (tmp_path / "d.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="not a valid .npy"):
        read_depth(tmp_path / "d.npy")


def test_depth_exr_without_reader_says_what_to_install(tmp_path: Path) -> None:
    for module in ("imageio", "cv2"):
        try:
            __import__(module)
            pytest.skip(f"{module} is installed; this checks the message without a reader")
        except ImportError:
            pass
    (tmp_path / "d.exr").write_bytes(b"\x76\x2f\x31\x01")
    with pytest.raises(DataError, match="pip install"):
        read_depth(tmp_path / "d.exr")


# ---------------------------------------------------------------------------------------- masks
def test_palette_mask_gives_indices_not_colours(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2], [255, 2, 0]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    palette = RNG.integers(0, 256, size=256 * 3).tolist()
    img.putpalette(palette)
    img.save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, idx)


def test_sixteen_bit_instance_mask(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 300], [65535, 2, 0]], dtype=np.uint16)
    Image.fromarray(ids).save(tmp_path / "i.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "i.png"), ids.astype(np.int64))


def test_colour_mask_needs_a_map(tmp_path: Path) -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="colour"):
        read_mask(tmp_path / "c.png")
    out = read_mask(tmp_path / "c.png", color_to_id={(255, 0, 0): 3, (0, 255, 0): 1, (0, 0, 0): 0})
    np.testing.assert_array_equal(out, [[3, 1], [0, 3]])
    with pytest.raises(DataError, match=r"\(0, 255, 0\)"):
        read_mask(tmp_path / "c.png", color_to_id={(255, 0, 0): 3, (0, 0, 0): 0})


def test_grey_rgb_mask_is_read_as_grey(tmp_path: Path) -> None:
    grey = np.array([[0, 1], [255, 7]], dtype=np.uint8)
    Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), grey)


def test_float_npy_mask_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(DataError, match="integers"):
        read_mask(tmp_path / "m.npy")


# -------------------------------------------------------------------------------------- classes
def _write_classes(root: Path, data: object) -> Path:
    path = root / "classes.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_read_classes_valid(tmp_path: Path) -> None:
    _write_classes(
        tmp_path,
        {
            "classes": [{"id": 2, "name": "wall", "color": [1, 2, 3]}, {"id": 0, "name": "floor"}],
            "ignore_index": 255,
        },
    )
    table = read_classes(tmp_path)
    assert isinstance(table, ClassTable)
    assert table.ids == (0, 2) and table.names == ("floor", "wall") and table.num_classes == 3
    assert table.color_to_id() == {(1, 2, 3): 2}
    # Also readable as the JSON dict it came from.
    assert table["classes"][1] == {"id": 2, "name": "wall", "color": [1, 2, 3]}
    assert table.get("ignore_index", 0) == 255


def test_read_classes_absent_is_none(tmp_path: Path) -> None:
    assert read_classes(tmp_path) is None
    with pytest.raises(DataError, match="not found"):
        read_classes(tmp_path / "classes.json")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"classes": [ {"id": 0, "name": "a"}, ]}', "malformed JSON at line 1"),
        ({"labels": []}, "expected an object"),
        ({"classes": []}, "non-empty"),
        ({"classes": [{"name": "a"}]}, 'missing the field "id"'),
        ({"classes": [{"id": 0}]}, 'missing the field "name"'),
        ({"classes": [{"id": "0", "name": "a"}]}, "must be an integer"),
        ({"classes": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}, r"duplicate class ids: \[1\]"),
        ({"classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}, "duplicate class names"),
        ({"classes": [{"id": 255, "name": "a"}]}, "equals ignore_index"),
        ({"classes": [{"id": 0, "name": "a", "color": [1, 2]}]}, "color"),
    ],
)
def test_read_classes_malformed(tmp_path: Path, data: object, message: str) -> None:
    path = _write_classes(tmp_path, data)
    with pytest.raises(DataError, match=message) as info:
        read_classes(tmp_path)
    assert info.value.path == path


# ---------------------------------------------------------------------------------- find_images
def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")  # find_images goes by name: the contents are never read


def test_find_images_is_recursive_sorted_and_case_insensitive(tmp_path: Path) -> None:
    _touch(tmp_path, "b.png", "a.JPG", "sub/deeper/c.Jpeg", "sub/a.webp", "z.TIFF", "notes.txt", "noext")
    (tmp_path / "folder.png").mkdir()  # a folder named like an image is not one
    found = adio.find_images(tmp_path)
    rels = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rels == ["a.JPG", "b.png", "sub/a.webp", "sub/deeper/c.Jpeg", "z.TIFF"]
    assert found == sorted(found) and all(p.is_absolute() == tmp_path.is_absolute() for p in found)


def test_find_images_not_recursive(tmp_path: Path) -> None:
    _touch(tmp_path, "a.png", "sub/b.png", "only_sub/inner/c.png")
    assert adio.find_images(tmp_path, recursive=False) == [tmp_path / "a.png"]
    with pytest.raises(DataError, match="no images found.*not in sub-folders") as info:
        adio.find_images(tmp_path / "only_sub", recursive=False)
    assert info.value.path == tmp_path / "only_sub"


def test_find_images_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    _touch(
        tmp_path, "a.png", ".hidden.png", "._a.png", ".ipynb_checkpoints/a-checkpoint.png", "sub/.cache/b.png"
    )
    assert adio.find_images(tmp_path) == [tmp_path / "a.png"]
    hidden_root = tmp_path / ".dataset"  # only parts below the searched folder count
    _touch(hidden_root, "c.png")
    assert adio.find_images(hidden_root) == [hidden_root / "c.png"]


def test_find_images_of_one_file_is_that_file(tmp_path: Path) -> None:
    _touch(tmp_path, "one.png", "notes.txt")
    assert adio.find_images(tmp_path / "one.png") == [tmp_path / "one.png"]
    assert adio.find_images(str(tmp_path / "notes.txt")) == [tmp_path / "notes.txt"]  # named, so taken


def test_find_images_empty_folder_is_a_data_error_naming_it(tmp_path: Path) -> None:
    _touch(tmp_path, "notes.txt", "sub/readme.md")
    with pytest.raises(DataError, match=r"no images found \(looked for \.png, \.jpg.*recursively\)") as info:
        adio.find_images(tmp_path)
    assert info.value.path == tmp_path and str(tmp_path) in str(info.value)


def test_find_images_missing_folder_is_a_data_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="no such file or folder") as info:
        adio.find_images(missing)
    assert info.value.path == missing and str(missing) in str(info.value)
