"""Our SamPredictor against segment_anything's SamPredictor, through the whole public path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sam_upstream import tiny_upstream_sam
from segment_anything import SamPredictor as UpstreamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide as UpstreamResize

from anydistill.models.sam import load_sam_checkpoint
from anydistill.promptable import ResizeLongestSide, SamPredictor

C = 32
H, W = 97, 150  # non-square: resized to 83x128, padded to 128x128


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Sam, torch.nn.Module]:
    """segment_anything's Sam (tiny, random) saved as an official checkpoint and loaded as ours."""
    up = tiny_upstream_sam(0, img_size=128, width=C, mask_in_chans=16, decoder_depth=2, iou_head_depth=3,
                           iou_head_hidden_dim=32)  # fmt: skip
    path = tmp_path_factory.mktemp("sam") / "sam.pth"
    torch.save(up.eval().state_dict(), path)
    return up, load_sam_checkpoint(path, decoder_num_heads=2)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[20:70, 30:110] = (200, 40, 40)  # an object
    return img


@pytest.fixture(scope="module")
def predictors(models, image) -> tuple[UpstreamPredictor, SamPredictor]:
    up, ours = models
    pu, po = UpstreamPredictor(up), SamPredictor(ours)
    pu.set_image(image)
    po.set_image(image)
    return pu, po


PROMPTS = {
    "one_point": dict(point_coords=np.array([[60, 45]]), point_labels=np.array([1])),
    "points": dict(point_coords=np.array([[60, 45], [140, 90], [0, 0]]), point_labels=np.array([1, 0, 1])),
    "box": dict(box=np.array([30, 20, 110, 70])),
    "points_box": dict(
        point_coords=np.array([[60, 45], [10, 90]]),
        point_labels=np.array([1, 0]),
        box=np.array([25, 15, 115, 75]),
    ),
    "edge_box": dict(box=np.array([0, 0, W, H])),
    "nothing": dict(),
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_predict_matches_upstream(predictors, prompt: str, multimask: bool) -> None:
    pu, po = predictors
    kw = dict(PROMPTS[prompt], multimask_output=multimask)
    m_up, iou_up, low_up = pu.predict(**kw)
    m_ours, iou_ours, low_ours = po.predict(**kw)
    k = 3 if multimask else 1
    assert m_ours.shape == (k, H, W) and m_ours.dtype == bool
    assert iou_ours.shape == (k,) and low_ours.shape == (k, 32, 32)
    np.testing.assert_allclose(low_ours, low_up, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(iou_ours, iou_up, atol=1e-4, rtol=1e-4)
    logits_up = pu.predict(**kw, return_logits=True)[0]
    logits_ours = po.predict(**kw, return_logits=True)[0]
    np.testing.assert_allclose(logits_ours, logits_up, atol=1e-4, rtol=1e-4)
    # Binary masks equal except where the reference logit is within float noise of the threshold.
    assert not ((m_ours != m_up) & (np.abs(logits_up) > 1e-3)).any()
    assert 0 < m_up.mean() < 1 or prompt == "nothing"  # the comparison is not between two empty masks


def test_mask_input_iteration_matches_upstream(predictors) -> None:
    pu, po = predictors
    _, iou, low = po.predict(**PROMPTS["one_point"])
    best = low[np.argmax(iou)][None]  # (1, 32, 32), the documented refinement loop
    kw = dict(PROMPTS["points"], mask_input=best, multimask_output=False)
    np.testing.assert_allclose(po.predict(**kw)[2], pu.predict(**kw)[2], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(po.predict(**kw)[1], pu.predict(**kw)[1], atol=1e-4, rtol=1e-4)


def test_embedding_and_state(predictors, models, image) -> None:
    pu, po = predictors
    torch.testing.assert_close(po.get_image_embedding(), pu.get_image_embedding(), atol=1e-4, rtol=1e-4)
    assert po.original_size == (H, W) and po.input_size == (83, 128) == pu.input_size
    assert po.is_image_set and po.get_image_embedding().shape == (1, C, 8, 8)
    fresh = SamPredictor(models[1])
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(**PROMPTS["box"])
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.get_image_embedding()
    fresh.set_image(image)
    fresh.reset_image()
    assert not fresh.is_image_set and fresh.features is None
    with pytest.raises(RuntimeError):
        fresh.predict_torch(None, None, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))


def test_bgr_input_equals_rgb(models, image) -> None:
    p = SamPredictor(models[1])
    p.set_image(image)
    rgb = p.predict(**PROMPTS["box"])[2]
    p.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(p.predict(**PROMPTS["box"])[2], rgb)
    with pytest.raises(ValueError, match="image_format"):
        p.set_image(image, image_format="HSV")


def test_predict_torch_batch_equals_loop(predictors) -> None:
    _, po = predictors
    g = torch.Generator().manual_seed(0)
    n = 6
    pts = torch.rand(n, 2, 2, generator=g) * torch.tensor([128.0, 83.0])  # (B, N, 2) in the input frame
    labels = torch.randint(0, 2, (n, 2), generator=g)
    labels[0, 1] = -1  # a padded (ragged) set
    lo = torch.rand(n, 2, generator=g) * torch.tensor([60.0, 40.0])
    boxes = torch.cat([lo, lo + torch.tensor([60.0, 40.0])], dim=1)  # (B, 4)
    masks, iou, low = po.predict_torch(pts, labels, boxes, multimask_output=True, return_logits=True)
    assert masks.shape == (n, 3, H, W) and iou.shape == (n, 3) and low.shape == (n, 3, 32, 32)
    for i in range(n):
        m_i, iou_i, low_i = po.predict_torch(
            pts[i : i + 1], labels[i : i + 1], boxes[i : i + 1], multimask_output=True, return_logits=True
        )
        torch.testing.assert_close(low[i : i + 1], low_i, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(iou[i : i + 1], iou_i, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masks[i : i + 1], m_i, atol=1e-5, rtol=1e-5)


def test_predict_torch_matches_upstream_batched(predictors) -> None:
    pu, po = predictors
    pts = torch.tensor([[[10.0, 10.0]], [[64.0, 40.0]], [[127.0, 82.0]]])
    labels = torch.ones(3, 1, dtype=torch.int)
    up = pu.predict_torch(pts, labels, multimask_output=True)
    ours = po.predict_torch(pts, labels, multimask_output=True)
    torch.testing.assert_close(ours[2], up[2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1], up[1], atol=1e-4, rtol=1e-4)


def test_tiny_and_large_images(models) -> None:
    p = SamPredictor(models[1])
    p.set_image(np.full((1, 1, 3), 128, np.uint8))
    assert p.input_size == (128, 128)
    masks, iou, low = p.predict(point_coords=np.array([[0.5, 0.5]]), point_labels=np.array([1]))
    assert masks.shape == (3, 1, 1)
    p.set_image(np.zeros((1, 1000, 3), np.uint8))  # upstream would resize to 0 rows
    assert p.input_size == (1, 128)
    big = np.zeros((3000, 4000, 3), np.uint8)
    p.set_image(big)
    assert p.input_size == (96, 128) and p.original_size == (3000, 4000)
    masks, _, _ = p.predict(box=np.array([100, 200, 3900, 2900]), multimask_output=False)
    assert masks.shape == (1, 3000, 4000) and masks.dtype == bool


def test_bad_inputs(predictors) -> None:
    _, po = predictors
    one = np.array([1])
    with pytest.raises(ValueError, match=r"point \[151.0, 10.0\].*outside the image of size 150x97"):
        po.predict(point_coords=np.array([[151, 10]]), point_labels=one)
    with pytest.raises(ValueError, match="outside"):
        po.predict(point_coords=np.array([[10, -1]]), point_labels=one)
    with pytest.raises(ValueError, match="outside"):
        po.predict(point_coords=np.array([[np.nan, 1]]), point_labels=one)
    with pytest.raises(ValueError, match="empty"):
        po.predict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0))
    with pytest.raises(ValueError, match="one per point"):
        po.predict(point_coords=np.array([[1, 2], [3, 4]]), point_labels=one)
    with pytest.raises(ValueError, match="together"):
        po.predict(point_coords=np.array([[1, 2]]))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        po.predict(point_coords=np.array([1, 2]), point_labels=one)
    with pytest.raises(ValueError, match="label 2"):
        po.predict(point_coords=np.array([[1, 2]]), point_labels=np.array([2]))
    with pytest.raises(ValueError, match="x0 <= x1"):
        po.predict(box=np.array([50, 10, 20, 40]))
    with pytest.raises(ValueError, match="y0 <= y1"):
        po.predict(box=np.array([10, 50, 20, 40]))
    with pytest.raises(ValueError, match="outside"):
        po.predict(box=np.array([10, 10, 200, 40]))
    with pytest.raises(ValueError, match="4 numbers"):
        po.predict(box=np.array([10, 10, 20]))
    with pytest.raises(ValueError, match=r"mask_input must be \(1, 32, 32\)"):
        po.predict(box=np.array([10, 10, 20, 40]), mask_input=np.zeros((1, 256, 256)))
    with pytest.raises(ValueError, match="mask_input must be"):
        po.predict_torch(None, None, mask_input=torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="batch sizes differ"):
        po.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), torch.tensor([[1.0, 1.0, 5.0, 5.0]]))
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        po.predict_torch(torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="resized input frame of size 128x83"):
        po.predict_torch(torch.tensor([[[10.0, 90.0]]]), torch.ones(1, 1))
    with pytest.raises(ValueError, match="uint8"):
        po.set_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        po.set_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="max"):
        po.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))
    assert po.is_image_set  # failed calls did not reset the image


def test_resize_transform_matches_upstream() -> None:
    ours, up = ResizeLongestSide(128), UpstreamResize(128)
    rng = np.random.default_rng(1)
    for h, w in [(97, 150), (150, 97), (1, 1), (128, 128), (300, 301)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(ours.apply_image(img), up.apply_image(img))
        coords = rng.uniform(0, min(h, w), (5, 2))
        np.testing.assert_allclose(ours.apply_coords(coords, (h, w)), up.apply_coords(coords, (h, w)))
        boxes = rng.uniform(0, min(h, w), (3, 4))
        np.testing.assert_allclose(ours.apply_boxes(boxes, (h, w)), up.apply_boxes(boxes, (h, w)))
        t = torch.as_tensor(coords, dtype=torch.float32)
        torch.testing.assert_close(ours.apply_coords_torch(t, (h, w)), up.apply_coords_torch(t, (h, w)))
        assert ours.apply_image_torch(torch.zeros(2, 3, h, w)).shape[-2:] == ours.get_preprocess_shape(
            h, w, 128
        )
    assert ours.get_preprocess_shape(1, 10000, 1024) == (1, 1024)  # never 0 rows
