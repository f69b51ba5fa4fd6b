"""Tests of the depth / segmentation metrics against hand-computed values and numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anydistill.eval import (
    DEPTH_METRIC_NAMES,
    DepthMetrics,
    SegmentationMetrics,
    binary_iou,
    depth_metrics,
    iou_from_confusion,
    per_image_depth_metrics,
)


def _depth_batch(b: int = 3, h: int = 8, w: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(b, 1, h, w, generator=g) * 9 + 1  # metres in [1, 10]
    valid = torch.rand(b, 1, h, w, generator=g) > 0.2
    depth = torch.where(valid, depth, torch.zeros_like(depth))  # 0 = invalid, the data convention
    return depth, valid


# ---------------------------------------------------------------- depth


@pytest.mark.parametrize("alignment", ["lstsq", "scale"])
def test_affine_disparity_is_perfect(alignment: str) -> None:
    depth, valid = _depth_batch()
    disparity = torch.where(valid, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    shift = 0.0 if alignment == "scale" else -0.05
    pred = 7.0 * disparity + shift
    pred[~valid] = float("nan")  # whatever the model says off the valid pixels is ignored
    out = depth_metrics(pred, depth, valid, pred_space="disparity", alignment=alignment)
    assert out["delta1"].item() == 1.0
    assert out["abs_rel"].item() == pytest.approx(0.0, abs=1e-6)  # float32 inputs
    assert out["rmse"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["n_images"].item() == 3 and out["n_skipped"].item() == 0


def test_affine_depth_is_perfect_in_depth_space() -> None:
    depth, valid = _depth_batch(seed=1)
    out = depth_metrics(0.5 * depth + 2.0, depth, valid, pred_space="depth", alignment="lstsq")
    assert out["delta1"].item() == 1.0 and out["abs_rel"].item() == pytest.approx(
        0.0, abs=1e-6
    )  # float32 inputs


@pytest.mark.parametrize("over", [False, True], ids=["pred_over_gt", "gt_over_pred"])
def test_delta_thresholds_are_1_25_powers_to_the_digit(over) -> None:
    """Ratios on both sides of 1.25, 1.25² = 1.5625 and 1.25³ = 1.953125, either way round: a threshold
    moved by 0.01 (or a ``<=`` for ``<``, or only one direction of max(d/d*, d*/d)) changes a count."""
    ratios = torch.tensor([1.0, 1.249, 1.251, 1.562, 1.563, 1.953, 1.954, 3.0], dtype=torch.float64)
    gt = torch.full((1, 1, 8), 2.0, dtype=torch.float64)
    pred = gt * ratios.view(1, 1, 8) if over else gt / ratios.view(1, 1, 8)
    out = depth_metrics(pred, gt, pred_space="depth", alignment="none")
    assert out["delta1"].item() == pytest.approx(2 / 8)
    assert out["delta2"].item() == pytest.approx(4 / 8)
    assert out["delta3"].item() == pytest.approx(6 / 8)


def test_hand_computed_example() -> None:
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # (1, 2, 2), last pixel invalid
    pred = torch.tensor([[[1.1, 2.0], [6.0, 3.0]]])
    out = depth_metrics(pred, gt, pred_space="depth", alignment="none")
    # |d - d*| / d* = 0.1, 0, 0.5 ; ratios 1.1, 1, 1.5 ; squared errors 0.01, 0, 4
    assert out["abs_rel"].item() == pytest.approx(0.6 / 3)
    assert out["sq_rel"].item() == pytest.approx((0.01 / 1 + 0 + 4 / 4) / 3)
    assert out["rmse"].item() == pytest.approx(math.sqrt(4.01 / 3))
    assert out["rmse_log"].item() == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(1.5) ** 2) / 3))
    assert out["delta1"].item() == pytest.approx(2 / 3)
    assert out["delta2"].item() == 1.0 and out["delta3"].item() == 1.0
    # max_depth drops the 4 m pixel from the evaluation and caps predictions at 3 m
    capped = depth_metrics(pred, gt, pred_space="depth", alignment="none", max_depth=3.0)
    assert capped["abs_rel"].item() == pytest.approx(0.1 / 2)
    # as disparities without alignment, capped at 1 / max(gt): the 6 m prediction becomes 4 m
    disp = depth_metrics(1.0 / pred, gt, pred_space="disparity", alignment="none")
    assert disp["abs_rel"].item() == pytest.approx(0.1 / 3)


def test_disparity_cap_keeps_metrics_finite() -> None:
    gt = torch.tensor([[[1.0, 2.0], [4.0, 8.0]]])
    pred = torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]])  # non-positive disparities, no alignment
    out = depth_metrics(pred, gt, pred_space="disparity", alignment="none")
    # every disparity is capped at 1 / max(gt) = 1/8, i.e. a predicted depth of 8 m everywhere
    expected = (7 / 1 + 6 / 2 + 4 / 4 + 0) / 4
    assert out["abs_rel"].item() == pytest.approx(expected)
    assert all(math.isfinite(v.item()) for v in out.values())


def test_per_image_metrics_match_numpy_and_skip_invalid_images() -> None:
    depth, valid = _depth_batch(b=3, seed=2)
    valid[1] = False
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(depth.shape, generator=g) + 0.05
    per_image, has_valid = per_image_depth_metrics(pred, depth, valid)
    assert has_valid.tolist() == [True, False, True]
    for i in (0, 2):
        m = valid[i, 0].numpy()
        d_gt = depth[i, 0].numpy().astype(np.float64)[m]
        p = pred[i, 0].numpy().astype(np.float64)[m]
        s, t = np.polyfit(p, 1.0 / d_gt, deg=1)
        d = 1.0 / np.maximum(s * p + t, 1.0 / d_gt.max())
        ratio = np.maximum(d / d_gt, d_gt / d)
        assert per_image["abs_rel"][i].item() == pytest.approx(np.mean(np.abs(d - d_gt) / d_gt), rel=1e-9)
        assert per_image["rmse"][i].item() == pytest.approx(np.sqrt(np.mean((d - d_gt) ** 2)), rel=1e-9)
        assert per_image["delta1"][i].item() == pytest.approx(np.mean(ratio < 1.25))
    out = depth_metrics(pred, depth, valid)
    assert out["n_images"].item() == 2 and out["n_skipped"].item() == 1
    assert out["abs_rel"].item() == pytest.approx(
        (per_image["abs_rel"][0] + per_image["abs_rel"][2]).item() / 2
    )


def test_depth_metrics_accumulates_mean_over_images() -> None:
    metric = DepthMetrics()
    batches = [_depth_batch(b=2, seed=s) for s in (4, 5)]
    batches[1][1][0] = False  # one image without valid pixels
    g = torch.Generator().manual_seed(6)
    rows = []
    for depth, valid in batches:
        pred = torch.rand(depth.shape, generator=g) + 0.05
        metric.update(pred, depth, valid)
        per_image, has_valid = per_image_depth_metrics(pred, depth, valid)
        rows += [{k: v[i].item() for k, v in per_image.items()} for i in range(2) if has_valid[i]]
    out = metric.compute()
    assert set(DEPTH_METRIC_NAMES) <= set(out)
    assert out["n_images"].item() == 3 and out["n_skipped"].item() == 1
    for name in DEPTH_METRIC_NAMES:
        assert out[name].item() == pytest.approx(np.mean([r[name] for r in rows]), rel=1e-12)
    metric.reset()
    metric.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4))
    empty = metric.compute()
    assert math.isnan(empty["abs_rel"].item()) and empty["n_skipped"].item() == 1


def test_depth_metrics_validation() -> None:
    depth, valid = _depth_batch()
    with pytest.raises(ValueError, match="same shape"):
        depth_metrics(depth[:, :, :4], depth, valid)
    with pytest.raises(TypeError, match="bool"):
        depth_metrics(depth, depth, valid.float())
    with pytest.raises(ValueError, match="alignment"):
        DepthMetrics(alignment="median")  # type: ignore[arg-type]


# ---------------------------------------------------------------- segmentation


def _np_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int) -> np.ndarray:
    keep = target != ignore
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (target[keep], pred[keep]), 1)
    return cm


def test_segmentation_metrics_match_numpy_confusion() -> None:
    num_classes = 5
    g = torch.Generator().manual_seed(7)
    metric = SegmentationMetrics(num_classes)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for _ in range(2):
        target = torch.randint(0, num_classes - 1, (2, 6, 7), generator=g)  # class 4 never in the target
        target[torch.rand(2, 6, 7, generator=g) < 0.2] = 255
        logits = torch.randn(2, num_classes, 6, 7, generator=g)
        logits[:, 3] -= 100  # class 3 never predicted
        logits[:, 4] -= 100  # class 4 never predicted -> absent from both
        metric.update(logits, target)
        cm += _np_confusion(logits.argmax(1).numpy(), target.numpy(), num_classes, 255)
    out = metric.compute()
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou_ref = tp / union
    np.testing.assert_allclose(out["iou_per_class"].numpy(), iou_ref, rtol=1e-12, equal_nan=True)
    assert math.isnan(out["iou_per_class"][4].item()) and out["iou_per_class"][3].item() == 0.0
    assert out["miou"].item() == pytest.approx(np.nanmean(iou_ref), rel=1e-12)
    assert out["pixel_acc"].item() == pytest.approx(tp.sum() / cm.sum(), rel=1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert out["mean_acc"].item() == pytest.approx(np.nanmean(tp / cm.sum(1)), rel=1e-12)


def test_segmentation_metrics_ignore_index_and_label_input() -> None:
    target = torch.tensor([[[0, 1, 255], [2, 2, 255]]])
    pred = torch.tensor([[[0, 2, 1], [2, 2, 0]]])
    metric = SegmentationMetrics(3)
    metric.update(pred, target)
    out = metric.compute()
    # counted pixels: (0->0), (1->2), (2->2), (2->2); ignored pixels predict 1 and 0, counting nowhere
    torch.testing.assert_close(out["iou_per_class"], torch.tensor([1.0, 0.0, 2 / 3], dtype=torch.float64))
    assert out["pixel_acc"].item() == pytest.approx(3 / 4)
    torch.testing.assert_close(iou_from_confusion(metric.confmat), out["iou_per_class"])
    with pytest.raises(ValueError, match="channels"):
        metric.update(torch.zeros(1, 4, 2, 3), target)


# ---------------------------------------------------------------- binary IoU


def test_binary_iou() -> None:
    pred = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    gt = torch.zeros_like(pred)
    pred[0, 0, :2] = True  # 8 pixels
    gt[0, 0, 1:3] = True  # 8 pixels, 4 shared -> 4 / 12
    gt[0, 1, 0, 0] = True  # prediction empty -> 0
    # (1, *) both empty -> 1
    iou = binary_iou(pred, gt)
    assert iou.shape == (2, 3)
    assert iou[0, 0].item() == pytest.approx(4 / 12)
    assert iou[0, 1].item() == 0.0
    assert iou[1].tolist() == [1.0, 1.0, 1.0]
    assert binary_iou(pred, gt, empty_value=0.0)[1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(TypeError, match="bool"):
        binary_iou(pred.float(), gt)


# ---------------------------------------------------------------- edge cases (mutation testing, issue 10)


# torchmetrics' own distributed sync, with the gather faked: a second process saw exactly the same batches.
TWO_RANKS = {
    "dist_sync_fn": lambda t, group=None: [t, t.clone()],
    "distributed_available_fn": lambda: True,
}


@pytest.mark.parametrize(
    ("pred_space", "alignment"), [("disparity", "lstsq"), ("depth", "scale"), ("depth", "none")]
)
def test_depth_metrics_module_passes_every_setting(pred_space: str, alignment: str) -> None:
    depth, valid = _depth_batch(b=3, seed=8)
    g = torch.Generator().manual_seed(9)
    pred = torch.rand(depth.shape, generator=g) * 5 + 0.5
    kwargs = {"pred_space": pred_space, "alignment": alignment, "min_depth": 2.0, "max_depth": 8.0}
    metric = DepthMetrics(**kwargs)  # type: ignore[arg-type]
    metric.update(pred, depth, valid)
    out, ref = metric.compute(), depth_metrics(pred, depth, valid, **kwargs)  # type: ignore[arg-type]
    for name in DEPTH_METRIC_NAMES:
        assert out[name].item() == pytest.approx(ref[name].item(), rel=1e-12)
    unbounded = depth_metrics(pred, depth, valid, pred_space, alignment)  # type: ignore[arg-type]
    assert unbounded["abs_rel"].item() != pytest.approx(ref["abs_rel"].item(), rel=1e-6)  # the bounds matter


def test_depth_metrics_counts_skipped_images_over_batches_and_one_image() -> None:
    metric = DepthMetrics(pred_space="depth", alignment="none")
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # one image, three valid pixels
    pred = torch.tensor([[[1.1, 2.0], [6.0, 3.0]]])
    for _ in range(2):
        metric.update(torch.ones(1, 2, 2), torch.zeros(1, 2, 2))  # an image without valid pixels
    metric.update(pred, gt)
    out = metric.compute()
    assert out["n_skipped"].item() == 2 and out["n_images"].item() == 1
    assert out["abs_rel"].item() == pytest.approx(0.6 / 3)  # the one image's value, not NaN


def test_metric_states_are_summed_across_processes() -> None:
    depth, valid = _depth_batch(b=3, seed=10)
    valid[2] = False  # one skipped image per process
    pred = torch.rand(depth.shape, generator=torch.Generator().manual_seed(11)) + 0.05
    alone, metric = DepthMetrics(), DepthMetrics(**TWO_RANKS)
    alone.update(pred, depth, valid)
    metric.update(pred, depth, valid)
    single, both = alone.compute(), metric.compute()
    assert both["n_images"].item() == 2 * single["n_images"].item() == 4
    assert both["n_skipped"].item() == 2 * single["n_skipped"].item() == 2
    for name in DEPTH_METRIC_NAMES:  # the same images twice: the same means
        assert both[name].item() == pytest.approx(single[name].item(), rel=1e-12)
    seg = SegmentationMetrics(3, **TWO_RANKS)
    seg.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 2]]))
    out = seg.compute()  # confusion [[1, 0, 0], [0, 1, 1], [0, 0, 1]] on each rank
    torch.testing.assert_close(out["iou_per_class"], torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    assert out["pixel_acc"].item() == pytest.approx(3 / 4)


def test_segmentation_metrics_edge_counts() -> None:
    # classes with a single target pixel have a recall (1 or 0), and one counted pixel has an accuracy
    metric = SegmentationMetrics(3)
    metric.update(torch.tensor([[0, 0, 1, 0, 1]]), torch.tensor([[0, 0, 1, 2, 255]]))
    out = metric.compute()
    assert out["mean_acc"].item() == pytest.approx((1.0 + 1.0 + 0.0) / 3)  # 2/2, 1/1, 0/1
    one = SegmentationMetrics(3)
    one.update(torch.tensor([[2, 1]]), torch.tensor([[2, 255]]))
    assert one.compute()["pixel_acc"].item() == 1.0
    # everything ignored: NaN, not an exception
    empty = SegmentationMetrics(3)
    empty.update(torch.tensor([[0, 1]]), torch.tensor([[255, 255]]))
    assert all(math.isnan(empty.compute()[k].item()) for k in ("miou", "pixel_acc", "mean_acc"))
    # a single class is a valid setting; counts are exact integers (int64, not float32 past 2^24)
    single = SegmentationMetrics(1)
    single.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    assert single.compute()["pixel_acc"].item() == 1.0 and single.confmat.dtype == torch.int64
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(0)
