"""``predict`` streams large images: the banded resize, the banded restore and the banded output pictures
give what the whole-image path gave (tiny bands forced, so several are used), and ``read_image`` neither
warns about a large photo nor lets a decompression bomb through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from PIL import Image
from tiny_students import save_tiny_depth_student

from anydistill.data import bands, prediction_files
from anydistill.data.classes import ClassInfo
from anydistill.data.io import read_image
from anydistill.data.transforms import preprocess_transforms, restore_prediction, restore_prediction_bands
from anydistill.errors import DataError
from anydistill.inference import Predictor, load_student, predict_folder
from anydistill.loading import model_record
from anydistill.models import build_model
from anydistill.viz import colorize_depth, colorize_mask, default_palette, overlay

pytestmark = pytest.mark.usefixtures("one_thread")

#: (H, W): landscape, portrait and one smaller than the model's input (restored by an antialiased shrink).
SIZES = [(513, 700), (700, 513), (40, 52)]


def save_tiny_semantic_student(path: Path, size: int = 64, num_classes: int = 5) -> Path:
    """An untrained ``seg_tiny`` saved as training saves a student (:func:`save_tiny_depth_student`'s twin)."""
    torch.manual_seed(0)
    model = build_model("seg_tiny", num_classes=num_classes)
    arch = {"model_name": "seg_tiny", "model_kwargs": {}, "num_classes": num_classes}
    classes = ClassInfo([f"c{i}" for i in range(num_classes)])
    record = model_record("semantic", model.preprocess_spec(size), arch, classes)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path


@pytest.fixture(scope="module")
def semantic_ckpt(tmp_path_factory) -> Path:
    return save_tiny_semantic_student(tmp_path_factory.mktemp("ckpt") / "semantic.ckpt")


@pytest.fixture
def tiny_bands(monkeypatch):
    """Bands of a few rows everywhere (resize, restore, output pictures), so every path uses many."""
    monkeypatch.setattr(bands, "BAND_ELEMENTS", 900)  # 1 row of the 700-wide images, 5 of the 52-wide one
    monkeypatch.setattr(prediction_files, "WRITE_BAND_PIXELS", 700 * 7)


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth content with edges (what the students see in photos), uint8 ``(H, W, 3)``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([np.sin(x / 37 + y / 51), np.cos(x / 23 - y / 29), ((x // 64 + y // 48) % 2) - 0.5], -1)
    image = 127 + 100 * image + rng.normal(0, 12, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def _old_restored(predictor: Predictor, image: np.ndarray) -> torch.Tensor:
    """The whole-image path ``predict`` took before streaming: ``(C, H, W)`` float32."""
    sample = preprocess_transforms(predictor.preprocess)({"image": image, "id": "0"})
    with torch.inference_mode():
        pred = predictor.model(predictor.preprocess.normalize(sample["image"][None])).float()[0]
        return restore_prediction(pred, sample["pad"], sample["orig_size"])


# ------------------------------------------------------------------------------------ resampling
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_banded_input_resize_is_bit_identical_to_the_transform(depth_ckpt, tiny_bands, height, width):
    predictor = Predictor(load_student(depth_ckpt))
    image = _photo(height, width, seed=height)
    old = preprocess_transforms(predictor.preprocess)({"image": image, "id": "0"})
    new = predictor.prepare(image)
    assert bands.band_rows(3 * width) < height  # several bands really were used
    assert new["pad"] == old["pad"] and tuple(new["orig_size"]) == tuple(old["orig_size"])
    assert torch.equal(new["image"], old["image"])


@pytest.mark.parametrize(
    ("shape", "size"), [((1, 47, 64), (513, 700)), ((5, 64, 47), (700, 513)), ((3, 10, 10), (10, 37))]
)
def test_banded_upsampling_matches_interpolate(shape, size):
    torch.manual_seed(0)
    x = torch.randn(*shape)  # (C, h, w)
    out = torch.full((shape[0], *size), float("nan"))
    starts = []
    for y0, y1, band in bands.upsample_bands(x, size, max_elements=shape[0] * size[1] * 7):
        out[:, y0:y1] = band
        starts.append(y0)
    assert len(starts) > 1 and not out.isnan().any()
    tol = dict(rtol=0, atol=1e-6 * float(x.abs().max()))  # a few float32 ulps
    ref = TF.interpolate(x[None], size, mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(out, restore_prediction(x, (0, 0, 0, 0), size), **tol)
    # plain bilinear rounds its source coordinates differently: equal to float rounding of the coordinates
    plain = TF.interpolate(x[None], size, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-4 * float(x.abs().max()))


def test_argmax_bands_are_the_argmax_of_the_interpolation():
    torch.manual_seed(0)
    x = TF.interpolate(torch.randn(1, 5, 6, 8), (24, 32), mode="bilinear")[0]  # (C, h, w) with class regions
    x[3] = x[1]  # classes 1 and 3 tie everywhere: the first one wins, as argmax picks it
    size = (150, 200)
    bands_out = list(
        bands.upsample_argmax_bands(x, size, max_elements=5 * 40)
    )  # 1-row bands, 40-pixel chunks
    ids = torch.cat([b for _, _, b in bands_out])  # (H, W)
    dense = torch.cat([b for _, _, b in bands.upsample_bands(x, size)], 1)  # (C, H, W)
    low = x.argmax(0)
    boundary = (low[:-1, :-1] != low[1:, 1:]).float().mean()
    assert len(bands_out) == size[0] and 0 < boundary < 0.5  # both paths (copied, interpolated) are used
    top2 = dense.topk(2, dim=0).values
    differ = ids != dense.argmax(0)
    assert not (differ & (top2[0] != top2[1])).any()  # only exact ties may differ
    assert (ids != 3).all() and differ.sum() <= 3


def test_restore_bands_crop_the_padding_and_shrink_whole():
    torch.manual_seed(0)
    pred = torch.randn(2, 16, 16)  # (C, S, S), padded bottom/right by (4, 6)
    pad = (0, 0, 4, 6)
    for size in [(37, 30), (6, 5)]:  # enlarged in bands; shrunk (antialiased) in one band
        got = torch.cat(
            [b for _, _, b in restore_prediction_bands(pred, pad, size, max_elements=2 * 30 * 4)], 1
        )
        want = restore_prediction(pred, pad, size)  # (C, H, W)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        ids = torch.cat(
            [b for _, _, b in restore_prediction_bands(pred, pad, size, argmax=True, max_elements=60)]
        )
        assert torch.equal(ids, want.argmax(0))


# ------------------------------------------------------------------------------------ predictions
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_depth_matches_the_whole_image_path(depth_ckpt, tiny_bands, height, width):
    predictor = Predictor(load_student(depth_ckpt))
    image = _photo(height, width, seed=1)
    old = _old_restored(predictor, image)[0].clamp_min(0).numpy()
    new = predictor.predict([image])[0]
    assert new.dtype == np.float32 and new.shape == (height, width)
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5 * float(np.abs(old).max()))


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_semantic_ids_match_the_whole_image_path(semantic_ckpt, tiny_bands, height, width):
    predictor = Predictor(load_student(semantic_ckpt))
    image = _photo(height, width, seed=2)
    logits = _old_restored(predictor, image)  # (C, H, W)
    old = logits.argmax(0).numpy().astype(np.uint8)
    new = predictor.predict([image])[0]
    assert new.dtype == np.uint8 and new.shape == (height, width)
    assert len(np.unique(old)) > 1  # a constant map would prove nothing
    top2 = logits.topk(2, dim=0).values
    tie = (top2[0] - top2[1]).numpy() <= 1e-5 * float(logits.abs().max())  # equal to float rounding
    differ = new != old
    assert not (differ & ~tie).any()
    assert differ.sum() <= 3


def test_batches_give_what_single_images_give(depth_ckpt, tiny_bands):
    predictor = Predictor(load_student(depth_ckpt), batch_size=2)
    images = [_photo(*size, seed=i) for i, size in enumerate(SIZES)]
    together = predictor.predict(images)
    mirrored = images[0][:, ::-1]  # a view with negative strides
    np.testing.assert_array_equal(predictor.predict([mirrored])[0], predictor.predict([mirrored.copy()])[0])
    for image, pred in zip(images, together, strict=True):  # convolutions round by batch size
        np.testing.assert_allclose(pred, predictor.predict([image])[0], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ output files
def test_depth_pictures_are_the_whole_image_pictures(tmp_path, depth_ckpt, tiny_bands):
    _save_photo(tmp_path / "images" / "a.png", 513, 700)
    predict_folder(depth_ckpt, tmp_path / "images", tmp_path / "out", progress=False)
    raw = np.load(tmp_path / "out" / "raw" / "a.npy")  # (H, W) float32
    png16 = ((raw - raw.min()) / max(float(raw.max() - raw.min()), 1e-8) * 65535).round().astype(np.uint16)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "png16" / "a.png")), png16)
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out" / "color" / "a.png")), colorize_depth(raw)
    )


def test_semantic_pictures_are_the_whole_image_pictures(tmp_path, semantic_ckpt, tiny_bands):
    image = _save_photo(tmp_path / "images" / "a.png", 700, 513)
    predict_folder(semantic_ckpt, tmp_path / "images", tmp_path / "out", progress=False, batch_size=3)
    mask = Image.open(tmp_path / "out" / "masks" / "a.png")
    ids = np.asarray(mask)
    assert mask.mode == "P" and ids.shape == (700, 513)
    want = overlay(image, colorize_mask(ids, default_palette(5)))  # the student names 5 classes, no colours
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "overlay" / "a.png")), want)


def _save_photo(path: Path, height: int, width: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = _photo(height, width, seed=3)
    Image.fromarray(image).save(path)
    return image


# ------------------------------------------------------------------------------------ read_image
def test_large_photo_loads_quietly_and_a_bomb_is_one_line(tmp_path, monkeypatch):
    # Pillow's thresholds scaled down: warn above 1000 pixels, refuse above 2000 (a 108 Mpx photo and
    # a 180 Mpx file against the real 89 / 179 Mpx).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    large, bomb = tmp_path / "large.png", tmp_path / "bomb.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(large)  # 1200 pixels
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(bomb)  # 2500 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(large).shape == (30, 40, 3)
    with pytest.raises(DataError, match="image too large") as err:
        read_image(bomb)
    assert err.value.path == bomb and str(bomb) in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ the bound
@pytest.mark.slow
@pytest.mark.parametrize("task", ["depth", "semantic"])
def test_a_12000_by_9000_photo_predicts_under_2_gb(tmp_path, task):
    """The whole ``anydistill predict`` process (torch and the model included) peaks under 2 GB."""
    photo = tmp_path / "images" / "big.jpg"
    photo.parent.mkdir()
    rows = [_photo(750, 12000, seed=i) for i in range(12)]  # (9000, 12000, 3) in 12 strips
    Image.fromarray(np.concatenate(rows)).save(photo, quality=90)
    del rows
    if task == "depth":
        ckpt = save_tiny_depth_student(tmp_path / "s.ckpt", size=512)
    else:
        ckpt = save_tiny_semantic_student(tmp_path / "s.ckpt", size=512, num_classes=21)
    # VmHWM, the peak of this process's own memory since exec: ru_maxrss would also carry the peak of
    # the process that forked it (this test's), which Linux keeps across exec.
    script = (
        "import json, sys\n"
        "from anydistill.cli import main\n"
        "code = main(['predict', '--checkpoint', sys.argv[1], '--images', sys.argv[2], '--out', sys.argv[3]])\n"
        "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(json.dumps([code, hwm]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(ckpt), str(photo.parent), str(tmp_path / "out")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    code, peak_kb = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0
    assert peak_kb * 1024 < 2e9, f"peak RSS {peak_kb / 1024:.0f} MiB"
    assert "Warning" not in done.stderr, done.stderr
