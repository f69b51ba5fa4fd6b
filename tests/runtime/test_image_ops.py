"""The onnx runtime's numpy/Pillow pre- and post-processing against the PyTorch predictors' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_students import save_tiny_depth_student

from anydistill.errors import ConfigError
from anydistill.inference import Predictor, load_student
from anydistill.preprocess import Preprocess
from anydistill.promptable.transforms import ResizeLongestSide
from anydistill.runtime import image_ops
from anydistill.runtime.image_ops import dense_input, restore_prediction, sam_input, sam_point_coords


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([np.sin(x / 7 + y / 11), np.cos(x / 5 - y / 9), ((x // 8 + y // 6) % 2) - 0.5], -1)
    return (127 + 100 * image + rng.normal(0, 10, image.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def depth_predictor(tmp_path_factory) -> Predictor:
    ckpt = save_tiny_depth_student(tmp_path_factory.mktemp("ckpt") / "depth.ckpt", size=64)
    return Predictor(load_student(ckpt))


@pytest.mark.parametrize("shape", [(40, 50), (200, 90), (64, 64), (13, 7)])
def test_dense_input_matches_the_torch_predictor(depth_predictor, shape):
    image = _photo(*shape)
    x, pad = dense_input(image, depth_predictor.preprocess, 64)
    sample = depth_predictor.prepare(image)
    expected = depth_predictor.preprocess.normalize(sample["image"][None])[0].numpy()
    assert x.shape == expected.shape == (3, 64, 64)
    assert tuple(pad) == tuple(sample["pad"])
    np.testing.assert_allclose(x, expected, atol=2e-5)


@pytest.mark.parametrize("shape", [(40, 50), (200, 90), (13, 7)])
@pytest.mark.parametrize("argmax", [False, True])
@pytest.mark.parametrize("band_rows", [None, 3])
def test_restore_matches_the_torch_predictor(depth_predictor, shape, argmax, band_rows, monkeypatch):
    if band_rows is not None:  # class ids made a few rows at a time, as for a large photo
        monkeypatch.setattr(image_ops, "ARGMAX_BAND_ELEMENTS", 4 * shape[1] * band_rows)
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(4 if argmax else 1, 64, 64)).astype(np.float32)
    image = _photo(*shape)
    sample = depth_predictor.prepare(image)
    ours = restore_prediction(pred, tuple(sample["pad"]), shape, argmax=argmax)
    depth_predictor.student.task = "semantic" if argmax else "depth"
    try:
        expected = depth_predictor.restore(torch.from_numpy(pred), sample)
    finally:
        depth_predictor.student.task = "depth"
    assert ours.shape == expected.shape == shape
    if argmax:
        assert ours.dtype == np.uint8
        assert (ours == expected).mean() > 0.99  # ties to float rounding may differ
    else:
        assert ours.min() >= 0.0
        np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize(
    "changes",
    [{"resize": "lower_bound"}, {"pad": "multiple"}, {"pad_before_normalize": False}, {"input_range": 255.0}],
)
def test_dense_input_refuses_a_spec_it_does_not_implement(depth_predictor, changes):
    from dataclasses import replace

    with pytest.raises(ConfigError, match="dense"):
        dense_input(_photo(10, 10), replace(depth_predictor.preprocess, **changes), 64)


@pytest.mark.parametrize("shape", [(30, 50), (77, 20)])
def test_sam_input_matches_segment_anythings_frame(shape):
    spec = Preprocess.sam(64)
    image = _photo(*shape)
    x, (h, w) = sam_input(image, spec)
    resized = ResizeLongestSide(64).apply_image(image)  # what SamPredictor.set_image feeds the model
    expected = spec.pad_batch(spec.normalize(torch.as_tensor(resized).permute(2, 0, 1)[None].float()))
    assert (h, w) == resized.shape[:2]
    assert x.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(x, expected.numpy(), atol=1e-5)


def test_sam_point_coords_are_segment_anythings():
    coords = np.array([[0.0, 0.0], [49.0, 29.0], [10.5, 3.25]], np.float32)
    expected = ResizeLongestSide(1024).apply_coords(coords, (30, 50))
    np.testing.assert_allclose(sam_point_coords(coords, (30, 50), 1024), expected, rtol=1e-6)
    assert sam_point_coords(coords, (30, 50), 1024) is not coords
