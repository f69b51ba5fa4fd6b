"""Simulated prompts: boxes, box jitter, first prompts, SAM training clicks and RITM evaluation clicks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anydistill.data.clicks import (
    Prompts,
    error_clicks,
    evaluation_clicks,
    first_prompts,
    jitter_boxes,
    masks_to_boxes,
    prompt_groups,
    sample_in_masks,
)


def _random_masks(n: int, h: int, w: int, seed: int, p: float = 0.3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, h, w)) < p)


def test_masks_to_boxes_matches_numpy_and_empty_is_zero() -> None:
    masks = _random_masks(5, 17, 23, seed=0, p=0.02)
    masks[3] = False
    boxes = masks_to_boxes(masks)
    for i, m in enumerate(masks.numpy()):
        ys, xs = np.nonzero(m)
        expected = [0, 0, 0, 0] if not len(xs) else [xs.min(), ys.min(), xs.max(), ys.max()]
        assert boxes[i].tolist() == pytest.approx(expected)
    assert masks_to_boxes(torch.zeros((0, 4, 4), dtype=torch.bool)).shape == (0, 4)


def test_jitter_boxes_noise_scale_bound_and_clipping() -> None:
    n = 20000
    boxes = torch.tensor([[100.0, 200.0, 140.0, 400.0]]).expand(n, 4)  # width 40, height 200
    g = torch.Generator().manual_seed(0)
    out = jitter_boxes(boxes, (1000, 1000), noise_std=0.1, noise_max=20.0, generator=g)
    delta = out - boxes
    # x: std 4 px (10% of 40), almost never clipped; y: std 20 px clipped to +-20.
    assert delta[:, 0].std().item() == pytest.approx(4.0, rel=0.05)
    assert delta[:, 2].std().item() == pytest.approx(4.0, rel=0.05)
    assert delta[:, 1].abs().max().item() <= 20.0 + 1e-4
    assert delta[:, 3].abs().max().item() <= 20.0 + 1e-4
    assert (delta[:, 1].abs() > 19.999).float().mean().item() == pytest.approx(0.3173, abs=0.02)  # P(|z| > 1)
    # Clipped to the image, ordered corners.
    edge = jitter_boxes(torch.tensor([[0.0, 0.0, 9.0, 4.0]]).expand(500, 4), (5, 10), generator=g)
    assert (edge >= 0).all() and (edge[:, [0, 2]] <= 9).all() and (edge[:, [1, 3]] <= 4).all()
    assert (edge[:, 0] <= edge[:, 2]).all() and (edge[:, 1] <= edge[:, 3]).all()


def test_sample_in_masks_is_uniform_and_inside() -> None:
    region = torch.zeros((1, 6, 6), dtype=torch.bool)
    cells = [(1, 1), (1, 4), (3, 2), (5, 5)]
    for y, x in cells:
        region[0, y, x] = True
    g = torch.Generator().manual_seed(1)
    counts = {c: 0 for c in cells}
    for _ in range(4000):
        coords, found = sample_in_masks(region, g)
        assert found.item()
        x, y = (int(v) for v in coords[0].tolist())
        counts[(y, x)] += 1
    assert set(counts) == set(cells)
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in counts.values())
    coords, found = sample_in_masks(torch.zeros((2, 3, 3), dtype=torch.bool))
    assert not found.any() and (coords == 0).all()


def test_first_prompts_box_probability_points_inside_and_boxes_near_gt() -> None:
    n = 400
    gt = torch.zeros((n, 64, 64), dtype=torch.bool)
    gt[:, 10:30, 20:50] = True
    g = torch.Generator().manual_seed(2)
    prompts = first_prompts(gt, p_box=0.5, generator=g)
    assert prompts.coords.shape == (n, 1, 2) and prompts.labels.shape == (n, 1)
    assert prompts.has_box.float().mean().item() == pytest.approx(0.5, abs=0.08)
    pts = ~prompts.has_box
    assert (prompts.labels[pts, 0] == 1).all() and (prompts.labels[prompts.has_box, 0] == -1).all()
    xy = prompts.coords[pts, 0].long()
    assert gt[pts.nonzero().flatten(), xy[:, 1], xy[:, 0]].all()  # every click inside its mask
    tight = torch.tensor([20.0, 10.0, 49.0, 29.0])
    assert ((prompts.boxes[prompts.has_box] - tight).abs() <= 20.0 + 1e-4).all()
    assert not torch.equal(prompts.boxes[prompts.has_box][0], tight)  # jittered
    only_points = first_prompts(gt, p_box=0.0, generator=g)
    assert not only_points.has_box.any()
    only_boxes = first_prompts(gt, p_box=1.0, generator=g)
    assert only_boxes.has_box.all()


def test_first_prompts_empty_mask_gets_no_prompt() -> None:
    gt = torch.zeros((2, 8, 8), dtype=torch.bool)
    gt[0, 2:4, 2:4] = True
    prompts = first_prompts(gt, p_box=1.0)
    assert prompts.has_box.tolist() == [True, False]
    assert prompts.labels[1, 0].item() == -1


def test_prompt_groups_split_points_and_boxes() -> None:
    prompts = Prompts(
        coords=torch.arange(12, dtype=torch.float32).reshape(3, 2, 2),
        labels=torch.tensor([[1, 0], [-1, 1], [1, 1]]),
        boxes=torch.arange(12, dtype=torch.float32).reshape(3, 4),
        has_box=torch.tensor([False, True, False]),
    )
    groups = prompt_groups(prompts)
    (rows_p, points_p, boxes_p), (rows_b, points_b, boxes_b) = groups
    assert rows_p.tolist() == [0, 2] and boxes_p is None and points_p is not None
    assert torch.equal(points_p[1], prompts.labels[[0, 2]])
    assert rows_b.tolist() == [1] and boxes_b is not None and torch.equal(boxes_b, prompts.boxes[[1]])
    assert points_b is not None and points_b[1].tolist() == [[1]]  # column 0 (unused first click) dropped
    first = Prompts(prompts.coords[:, :1], prompts.labels[:, :1], prompts.boxes, prompts.has_box)
    assert prompt_groups(first)[1][1] is None  # a box without clicks: points=None
    grown = first.append(torch.ones((3, 1, 2)), torch.tensor([[0], [1], [-1]]))
    assert grown.coords.shape == (3, 2, 2) and grown.labels[:, 1].tolist() == [0, 1, -1]


def test_error_clicks_follow_sam_rule() -> None:
    gt = torch.zeros((1, 10, 10), dtype=torch.bool)
    gt[0, 0:5, 0:5] = True
    pred = torch.zeros_like(gt)
    pred[0, 0:5, 0:3] = True  # FN: columns 3..4 of rows 0..4 (10 px)
    pred[0, 8:10, 8:10] = True  # FP: 4 px
    g = torch.Generator().manual_seed(3)
    fn_hits = 0
    for _ in range(1400):
        coords, labels = error_clicks(pred, gt, generator=g)
        x, y = (int(v) for v in coords[0, 0].tolist())
        is_fn = bool(gt[0, y, x] and not pred[0, y, x])
        is_fp = bool(pred[0, y, x] and not gt[0, y, x])
        assert is_fn or is_fp
        assert labels[0, 0].item() == (1 if is_fn else 0)
        fn_hits += is_fn
    assert fn_hits / 1400 == pytest.approx(10 / 14, abs=0.04)  # uniform over FN ∪ FP


def test_error_clicks_valid_region_exact_prediction_and_padding() -> None:
    gt = torch.zeros((3, 6, 6), dtype=torch.bool)
    gt[0, :2, :2] = True
    pred = gt.clone()
    pred[0, 5, 5] = True  # FP only in padding
    valid = torch.zeros((6, 6), dtype=torch.bool)
    valid[:4, :4] = True
    gt[2] = valid  # exact prediction of a mask covering the whole valid image
    pred[2] = valid
    coords, labels = error_clicks(pred, gt, valid.expand(3, 6, 6), generator=torch.Generator().manual_seed(0))
    # Row 0: the only error is in padding -> exact inside valid -> negative click in the valid background.
    x, y = (int(v) for v in coords[0, 0].tolist())
    assert labels[0, 0].item() == 0 and valid[y, x] and not gt[0, y, x]
    assert labels[1, 0].item() == 0  # empty gt, empty prediction: a negative click
    assert labels[2, 0].item() == -1  # nothing to click


def _brute_force_distance(region: np.ndarray) -> np.ndarray:
    """``(H, W)``: for each pixel of the bool ``region``, the Euclidean distance between its centre and the
    nearest pixel centre that is not in the region, the ring of pixels just outside the image counting
    as not in the region (the image border is a boundary); 0 off the region. By brute force, no scipy."""
    h, w = region.shape
    ring = [(y, x) for y in range(-1, h + 1) for x in range(-1, w + 1) if not (0 <= y < h and 0 <= x < w)]
    others = np.array(ring + list(zip(*np.nonzero(~region), strict=True)), dtype=np.float64)  # (M, 2)
    dist = np.zeros((h, w))
    for y, x in zip(*np.nonzero(region), strict=True):
        dist[y, x] = np.sqrt(((others - [y, x]) ** 2).sum(1)).min()
    return dist


def _brute_force_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """The RITM click from :func:`_brute_force_distance`: ``(x, y, label)``; FN wins only when strictly
    deeper than FP; ties go to the first pixel in raster order; ``(0, 0, -1)`` when there is no error."""
    best = []
    for region in (gt & ~pred, pred & ~gt):
        dist = _brute_force_distance(region)
        deepest = [
            (y, x) for y in range(dist.shape[0]) for x in range(dist.shape[1]) if dist[y, x] == dist.max()
        ]
        y, x = deepest[0]  # raster order: row by row, left to right
        best.append((dist.max(), x, y))
    (d_fn, x_fn, y_fn), (d_fp, x_fp, y_fp) = best
    if d_fn > d_fp:
        return x_fn, y_fn, 1
    return (x_fp, y_fp, 0) if d_fp > 0 else (0, 0, -1)


def _clicks_of(pred: torch.Tensor, gt: torch.Tensor) -> list[tuple[int, int, int]]:
    coords, labels = evaluation_clicks(pred, gt)
    return [(int(c[0, 0]), int(c[0, 1]), int(lab[0])) for c, lab in zip(coords, labels, strict=True)]


def _border_cases() -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    """Masks whose one deepest error pixel is known by hand, and where a distance transform that counts
    the image border as inside the region (no padding) would click a border pixel instead.

    Returns ``(pred, gt, [(x, y, label), ...])``, all on 9 x 12 images.
    """
    gt = torch.zeros((5, 9, 12), dtype=torch.bool)
    pred = torch.zeros_like(gt)
    expected = []
    # 0: a 5x5 FN square against the left border (rows 1..5, columns 0..4): its centre (2, 3) is 3 from
    #    the border ring (x = -1), from row 0 and row 6 and from column 5; every other pixel is nearer.
    #    With the border inside, (0, 3) reaches 3 as well and wins the raster tie.
    gt[0, 1:6, 0:5] = True
    expected.append((2, 3, 1))
    # 1: a 5x5 FN square in the bottom-right corner (rows 4..8, columns 7..11): centre (9, 6), distance 3.
    #    With the border inside the corner pixel (11, 8) would be 5 from the region's edge.
    gt[1, 4:9, 7:12] = True
    expected.append((9, 6, 1))
    # 2: FN = the 4 left columns, full height (at most 2 from the border ring or column 4), against an
    #    interior 5x5 FP square (rows 1..5, columns 6..10, centre (8, 3) at distance 3): the FP centre wins,
    #    a negative click. With the border inside, the FN strip's column 0 would be 4 deep: a positive
    #    click at (0, 0) instead.
    gt[2, :, 0:4] = True
    pred[2, 1:6, 6:11] = True
    expected.append((8, 3, 0))
    # 3: a 5x5 block (rows 2..6, columns 1..5) with a 3-high bar to its right (rows 3..5, columns 6..10):
    #    the deepest pixel is the block's centre (3, 4) at 3 (from column 0, rows 1 and 7); the bounding
    #    box's centre and the centroid, (5, 4), are only sqrt(5) from (6, 2). Off the border, as a control.
    gt[3, 2:7, 1:6] = True
    gt[3, 3:6, 6:11] = True
    expected.append((3, 4, 1))
    # 4: the whole image is FP except a 2x2 FN hole (rows 3..4, columns 4..5; FN depth 1): the deepest FP
    #    pixel is (8, 5), sqrt(10) from the hole's pixel (5, 4) and 4 from the border ring (its neighbours
    #    are 3 or less from one of them). With the border inside, the corner (11, 8) would be deepest.
    pred[4] = True
    pred[4, 3:5, 4:6] = False
    gt[4, 3:5, 4:6] = True
    expected.append((8, 5, 0))
    return pred, gt, expected


def test_brute_force_reference_finds_the_hand_made_answers() -> None:
    """The reference itself, on the hand-made cases (so that comparing against it below means something)."""
    pred, gt, expected = _border_cases()
    for i, exp in enumerate(expected):
        assert _brute_force_click(pred[i].numpy(), gt[i].numpy()) == exp, i
        region = (gt[i] & ~pred[i]) if exp[2] == 1 else (pred[i] & ~gt[i])
        dist = _brute_force_distance(region.numpy())
        assert (dist == dist.max()).sum() == 1, i  # one deepest pixel: no tie-break involved
    # The distances of case 0 by hand: row 3 of the square is 1, 2, 3, 2, 1 from the left border.
    assert _brute_force_distance(gt[0].numpy())[3, :6].tolist() == [1, 2, 3, 2, 1, 0]


def test_evaluation_click_is_the_deepest_pixel_not_a_border_pixel() -> None:
    pred, gt, expected = _border_cases()
    assert _clicks_of(pred, gt) == expected


def test_evaluation_click_on_hand_made_masks() -> None:
    gt = torch.zeros((3, 12, 12), dtype=torch.bool)
    pred = torch.zeros_like(gt)
    gt[0, 2:9, 3:10] = True  # 7x7 square, empty prediction: its centre, positive
    gt[1, 0:12, 0:6] = True  # big FP region dominates a thin FN strip
    pred[1, 0:12, 1:12] = True  # FN = column 0 (distance 1), FP = columns 6..11 (distance up to 3)
    gt[2, 2:6, 2:6] = True  # 4x4: the four central pixels tie; raster order picks the top-left one
    # FP columns 6..11 (a 6-wide full-height strip against the right border): columns 8 and 9 are 3 deep
    # (column 8: from column 5 and from x = 12) on rows 2..9; raster order: (8, 2).
    assert _clicks_of(pred, gt) == [(6, 5, 1), (8, 2, 0), (3, 3, 1)]


def _blobs(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """``(n, h, w)`` unions of 1-3 random rectangles, some against the border: thick regions, so the
    deepest pixel is several pixels deep and a border pixel differs from an interior one."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(-2, h - 3), rng.integers(-2, w - 3)
            y1, x1 = y0 + rng.integers(4, h), x0 + rng.integers(4, w)
            masks[i, max(y0, 0) : y1, max(x0, 0) : x1] = True
    return torch.from_numpy(masks)


def test_evaluation_click_matches_brute_force_and_is_deterministic() -> None:
    gt = torch.cat([_blobs(12, 13, 17, seed=4), _random_masks(4, 13, 17, seed=4, p=0.6)])
    pred = torch.cat([_blobs(12, 13, 17, seed=5), _random_masks(4, 13, 17, seed=5, p=0.5)])
    coords, labels = evaluation_clicks(pred, gt)
    again = evaluation_clicks(pred, gt)
    assert torch.equal(coords, again[0]) and torch.equal(labels, again[1])
    expected = [_brute_force_click(p.numpy(), g.numpy()) for p, g in zip(pred, gt, strict=True)]
    assert _clicks_of(pred, gt) == expected
    on_border = sum(x in (0, 16) or y in (0, 12) for x, y, _ in expected)
    assert on_border < len(expected) // 2  # mostly interior clicks: the check is not all border pixels


def test_evaluation_click_skips_clicked_pixels_and_exact_predictions() -> None:
    gt = torch.zeros((2, 9, 9), dtype=torch.bool)
    gt[:, 2:7, 2:7] = True
    pred = torch.zeros_like(gt)
    pred[1] = gt[1]
    first, _ = evaluation_clicks(pred, gt)
    assert first[0, 0].tolist() == [4.0, 4.0]
    previous = (first, torch.tensor([[1], [-1]]))
    second, labels = evaluation_clicks(pred, gt, previous=previous)
    # The centre is excluded; the next-deepest pixels (distance 2) form the 3x3 ring around it, and
    # raster order picks its top-left corner.
    assert second[0, 0].tolist() == [3.0, 3.0] and labels[0, 0].item() == 1
    assert math.dist(second[0, 0].tolist(), [4.0, 4.0]) == pytest.approx(math.sqrt(2))
    assert labels[1, 0].item() == -1  # exact prediction: no click


def test_evaluation_click_valid_region() -> None:
    gt = torch.zeros((1, 8, 8), dtype=torch.bool)
    gt[0, :, 4:] = True  # wide FN region, but columns 6.. are padding
    valid = torch.zeros((1, 8, 8), dtype=torch.bool)
    valid[0, :, :6] = True
    coords, labels = evaluation_clicks(torch.zeros_like(gt), gt, valid)
    assert labels[0, 0].item() == 1 and coords[0, 0, 0].item() in (4.0, 5.0)
