"""Tests of the batched strong perturbations and CutMix (parity with torchvision's functional ops)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from anydistill.data.perturb import CutMix, StrongPerturbation, cutmix, roll_partner, sample_cutmix_boxes


def _images(b: int = 4, h: int = 24, w: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


# ---------------------------------------------------------------- StrongPerturbation


def test_perturbation_keeps_shape_dtype_device_and_range() -> None:
    x = _images()
    x[0] = 0.0
    x[1] = 1.0
    pert = StrongPerturbation(jitter_p=1.0, grayscale_p=0.5, blur_p=1.0)
    for dtype in (torch.float32, torch.float64, torch.float16):
        y = pert(x.to(dtype), generator=torch.Generator().manual_seed(1))
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert torch.isfinite(y).all()
        assert y.min() >= 0.0 and y.max() <= 1.0


def test_zero_probabilities_are_identity() -> None:
    x = _images()
    y = StrongPerturbation(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)(x)
    assert torch.equal(y, x)


def test_parameters_differ_per_sample() -> None:
    x = _images(b=1).expand(4, -1, -1, -1).contiguous()  # four copies of one image
    pert = StrongPerturbation(jitter_p=1.0, grayscale_p=0.0, blur_p=1.0)
    y = pert(x, generator=torch.Generator().manual_seed(0))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (y[i] - y[j]).abs().max() > 1e-3, (i, j)
    assert pert.jitter._params["brightness_factor"].unique().numel() == 4
    assert pert.blur._params["sigma"].unique().numel() == 4


def test_generator_makes_it_reproducible_and_leaves_global_rng_alone() -> None:
    x = _images()
    pert = StrongPerturbation(jitter_p=1.0, grayscale_p=0.5, blur_p=0.5)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = pert(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(3), expected_next)  # the global stream was not consumed
    b = pert(x, generator=torch.Generator().manual_seed(7))
    c = pert(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_matches_torchvision_functional_with_the_drawn_parameters() -> None:
    """Each step equals torchvision's op (UniMatch's PIL/torchvision semantics) per sample."""
    x = _images(b=3, h=20, w=22, seed=3)
    pert = StrongPerturbation(jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)
    y = pert(x, generator=torch.Generator().manual_seed(5))
    params = pert.jitter._params
    ops = {
        0: (TF.adjust_brightness, "brightness_factor"),
        1: (TF.adjust_contrast, "contrast_factor"),
        2: (TF.adjust_saturation, "saturation_factor"),
        3: (TF.adjust_hue, "hue_factor"),
    }
    for i in range(x.shape[0]):
        ref = x[i]
        for step in params["order"].tolist():
            fn, key = ops[step]
            ref = fn(ref, float(params[key][i]))
        # hue goes through RGB -> HSV -> RGB in both; their float32 formulas differ by ~2e-5
        torch.testing.assert_close(y[i], ref, atol=1e-4, rtol=0)
    assert params["hue_factor"].abs().max() <= 0.25
    assert ((params["brightness_factor"] >= 0.5) & (params["brightness_factor"] <= 1.5)).all()

    blur = StrongPerturbation(jitter_p=0.0, grayscale_p=0.0, blur_p=1.0)
    y = blur(x, generator=torch.Generator().manual_seed(6))
    sigmas = blur.blur._params["sigma"]
    assert ((sigmas >= 0.1) & (sigmas <= 2.0)).all()
    for i in range(x.shape[0]):
        s = float(sigmas[i])
        ref = TF.gaussian_blur(x[i], kernel_size=[13, 13], sigma=[s, s])
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)

    gray = StrongPerturbation(jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)(x)
    # kornia weighs red by 0.299, torchvision by 0.2989 (both ITU-R 601-2): up to 1e-4 apart
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(x, num_output_channels=3), atol=2e-4, rtol=0)
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()


def test_default_probabilities_are_applied_per_sample() -> None:
    """With p = 0.8 / 0.2 / 0.5, some samples of a large batch are left alone by each step."""
    x = _images(b=64, h=16, w=16)
    pert = StrongPerturbation()
    pert(x, generator=torch.Generator().manual_seed(0))
    for module, p in ((pert.jitter, 0.8), (pert.grayscale, 0.2), (pert.blur, 0.5)):
        frac = module._params["batch_prob"].float().mean().item()
        assert abs(frac - p) < 0.2, (module, frac)


def test_perturbation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="B, 3, H, W"):
        StrongPerturbation()(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        StrongPerturbation()(torch.rand(2, 3, 5, 16))
    with pytest.raises(ValueError, match="odd"):
        StrongPerturbation(blur_kernel=4)
    with pytest.raises(ValueError, match="jitter_p"):
        StrongPerturbation(jitter_p=1.5)


# ---------------------------------------------------------------- CutMix boxes


def _box_of(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the bounding box of a (H, W) bool mask."""
    rows = mask.any(dim=1).nonzero()[:, 0]
    cols = mask.any(dim=0).nonzero()[:, 0]
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


@pytest.mark.parametrize("h, w", [(32, 32), (24, 40), (8, 120)])
def test_boxes_are_rectangles_with_area_and_ratio_in_bounds(h: int, w: int) -> None:
    area, ratio = (0.02, 0.4), (0.3, 1 / 0.3)
    mask = sample_cutmix_boxes(
        200, h, w, p=1.0, area=area, ratio=ratio, generator=torch.Generator().manual_seed(0)
    )
    assert mask.shape == (200, 1, h, w) and mask.dtype == torch.bool
    for m in mask[:, 0]:
        y0, y1, x0, x1 = _box_of(m)
        bh, bw = y1 - y0, x1 - x0
        assert m.sum() == bh * bw  # a filled rectangle
        slack = (bh + bw + 1) / (h * w)  # rounding of the sides to whole pixels
        frac = bh * bw / (h * w)
        assert area[0] - slack <= frac <= area[1] + slack
        if h == w:  # every ratio of the range fits a square image
            r = bh / bw
            assert ratio[0] * (1 - 1.5 / bh) <= r <= ratio[1] * (1 + 1.5 / bw)


def test_box_probability_and_empty_masks() -> None:
    mask = sample_cutmix_boxes(2000, 16, 16, p=0.5, generator=torch.Generator().manual_seed(1))
    mixed = mask.flatten(1).any(dim=1).float().mean().item()
    assert 0.45 < mixed < 0.55
    assert not sample_cutmix_boxes(50, 16, 16, p=0.0).any()
    assert sample_cutmix_boxes(50, 16, 16, p=1.0).flatten(1).any(dim=1).all()


def test_boxes_are_reproducible_and_spread_over_the_image() -> None:
    a = sample_cutmix_boxes(2000, 12, 12, p=1.0, generator=torch.Generator().manual_seed(2))
    b = sample_cutmix_boxes(2000, 12, 12, p=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    coverage = a.float().mean(dim=0)  # (1, H, W): every pixel, corners included, is sometimes pasted
    assert (coverage > 0).all()


# ---------------------------------------------------------------- mixing


def test_mix_equals_manual_composition_and_leaves_unmixed_samples_alone() -> None:
    a, b = _images(6, seed=1), _images(6, seed=2)
    mask = sample_cutmix_boxes(6, 24, 28, p=0.5, generator=torch.Generator().manual_seed(1))
    mixed = CutMix.mix(a, b, mask)
    expected = a.clone()
    for i in range(6):
        if mask[i].any():
            y0, y1, x0, x1 = _box_of(mask[i, 0])
            expected[i, :, y0:y1, x0:x1] = b[i, :, y0:y1, x0:x1]
        else:
            assert torch.equal(mixed[i], a[i])
    assert torch.equal(mixed, expected)
    assert mask.flatten(1).any(dim=1).sum() not in (0, 6)  # the seed gives both kinds of sample


def test_cutmix_module_uses_rolled_partner_by_default() -> None:
    a = _images(5, seed=4)
    cm = CutMix(p=1.0)
    mixed, mask = cm(a, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mixed, cutmix(a, roll_partner(a), mask))
    assert torch.equal(roll_partner(a)[1:], a[:-1]) and torch.equal(roll_partner(a)[0], a[-1])
    b = _images(5, seed=5)
    mixed_b, mask_b = cm(a, b, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask_b, mask) and torch.equal(mixed_b, torch.where(mask, b, a))


def test_mix_rejects_mismatched_inputs() -> None:
    a = _images(2)
    with pytest.raises(ValueError, match="same shape"):
        cutmix(a, a[:1], torch.zeros(2, 1, 24, 28, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        cutmix(a, a, torch.zeros(2, 1, 24, 28))
    with pytest.raises(ValueError, match="mask"):
        cutmix(a, a, torch.zeros(2, 1, 24, 27, dtype=torch.bool))
    with pytest.raises(ValueError, match="area"):
        sample_cutmix_boxes(2, 8, 8, area=(0.5, 0.1))
