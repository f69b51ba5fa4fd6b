"""Tests of the affine-invariant depth losses against independent numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anydistill.losses import (
    GradientMatchingLoss,
    ScaleShiftInvariantLoss,
    align_scale_shift,
    depth_to_disparity,
    gradient_matching_loss,
    normalize_median_mad,
    ssi_loss,
)


def _sample(
    b: int = 3, h: int = 8, w: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) + 0.1
    target = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) + 0.1
    mask = torch.rand(b, 1, h, w, generator=g) > 0.3
    return pred, target, mask


def _lower_median(x: np.ndarray) -> float:
    return float(np.sort(x)[(x.size - 1) // 2])


def _np_median_mad(x: np.ndarray) -> np.ndarray:
    t = _lower_median(x)
    s = np.mean(np.abs(x - t))
    return (x - t) / max(s, 1e-6)


# ---------------------------------------------------------------- alignment


def test_align_scale_shift_matches_polyfit() -> None:
    pred, target, mask = _sample()
    scale, shift = align_scale_shift(pred, target, mask)
    assert scale.shape == shift.shape == (3,)
    for i in range(3):
        m = mask[i, 0].numpy()
        s_ref, t_ref = np.polyfit(pred[i, 0].numpy()[m], target[i, 0].numpy()[m], deg=1)
        assert scale[i].item() == pytest.approx(s_ref, rel=1e-9, abs=1e-12)
        assert shift[i].item() == pytest.approx(t_ref, rel=1e-9, abs=1e-12)


def test_align_scale_shift_matches_lstsq_float32_bhw() -> None:
    pred, target, mask = (x[:, 0] for x in _sample(seed=1))
    scale, shift = align_scale_shift(pred.float(), target.float(), mask)
    for i in range(pred.shape[0]):
        m = mask[i]
        a = torch.stack([pred[i][m], torch.ones_like(pred[i][m])], dim=1)  # (M, 2)
        sol = torch.linalg.lstsq(a, target[i][m][:, None]).solution[:, 0]
        assert scale[i].item() == pytest.approx(sol[0].item(), rel=1e-4)
        assert shift[i].item() == pytest.approx(sol[1].item(), rel=1e-4, abs=1e-5)


def test_align_scale_shift_recovers_affine_and_ignores_invalid() -> None:
    pred, _, mask = _sample()
    target = 2.5 * pred - 0.3
    target[~mask] = float("inf")  # garbage where invalid
    scale, shift = align_scale_shift(pred, target, mask)
    torch.testing.assert_close(scale, torch.full((3,), 2.5, dtype=torch.float64))
    torch.testing.assert_close(shift, torch.full((3,), -0.3, dtype=torch.float64))


def test_align_scale_shift_degenerate_fallbacks() -> None:
    pred = torch.full((3, 4, 4), 2.0)
    pred[2] = torch.arange(16.0).reshape(4, 4)
    target = torch.arange(48.0).reshape(3, 4, 4)
    mask = torch.ones(3, 4, 4, dtype=torch.bool)
    mask[1] = False  # no valid pixel
    mask[2] = False
    mask[2, 0, 0] = True  # a single valid pixel
    scale, shift = align_scale_shift(pred, target, mask)
    assert torch.isfinite(scale).all() and torch.isfinite(shift).all()
    # constant prediction: shift-only fit s = 1, t = mean(target) - 2
    assert scale[0].item() == 1.0 and shift[0].item() == pytest.approx(target[0].mean().item() - 2.0)
    assert scale[1].item() == 1.0 and shift[1].item() == 0.0
    assert scale[2].item() == 1.0 and shift[2].item() == pytest.approx(
        target[2, 0, 0].item() - pred[2, 0, 0].item()
    )


def test_normalize_median_mad_matches_numpy() -> None:
    pred, _, mask = _sample(seed=2)
    out = normalize_median_mad(pred, mask)
    assert out.shape == pred.shape
    for i in range(3):
        m = mask[i, 0].numpy()
        np.testing.assert_allclose(out[i, 0].numpy()[m], _np_median_mad(pred[i, 0].numpy()[m]), rtol=1e-10)
        assert (out[i, 0][~mask[i, 0]] == 0).all()


# ---------------------------------------------------------------- SSI loss


def _np_ssi(pred, target, mask, alignment: str, trim: float = 0.0) -> float:
    losses = []
    for i in range(pred.shape[0]):
        m = mask[i, 0].numpy()
        if not m.any():
            continue
        p, t = pred[i, 0].numpy()[m], target[i, 0].numpy()[m]
        if alignment == "median":
            rho = np.abs(_np_median_mad(p) - _np_median_mad(t))
        else:
            s, sh = np.polyfit(p, t, deg=1)
            rho = 0.5 * (s * p + sh - t) ** 2
        n_drop = int(np.floor(trim * rho.size))
        rho = np.sort(rho)[: rho.size - n_drop]
        losses.append(rho.mean())
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("alignment", ["median", "lstsq"])
@pytest.mark.parametrize("trim", [0.0, 0.2])
def test_ssi_loss_matches_numpy(alignment: str, trim: float) -> None:
    pred, target, mask = _sample(seed=3)
    loss = ssi_loss(pred, target, mask, alignment=alignment, trim=trim)
    assert loss.item() == pytest.approx(_np_ssi(pred, target, mask, alignment, trim), rel=1e-8)
    assert ScaleShiftInvariantLoss(alignment, trim)(pred, target, mask).item() == pytest.approx(
        loss.item(), rel=1e-12
    )


@pytest.mark.parametrize("alignment", ["median", "lstsq"])
def test_ssi_loss_zero_for_perfect_and_positive_affine(alignment: str) -> None:
    _, target, mask = _sample(seed=4)
    assert ssi_loss(target.clone(), target, mask, alignment).item() == pytest.approx(0.0, abs=1e-12)
    assert ssi_loss(3.0 * target + 0.7, target, mask, alignment).item() == pytest.approx(0.0, abs=1e-12)
    assert ssi_loss(target, target, mask, alignment, trim=0.1).item() == pytest.approx(0.0, abs=1e-12)


def test_ssi_trim_drops_outliers() -> None:
    _, target, mask = _sample(b=1, h=10, w=10, seed=5)
    mask[:] = True
    pred = 2.0 * target + 1.0
    pred[0, 0, 0, :5] += 100.0  # 5 of 100 pixels are outliers
    full = ssi_loss(pred, target, mask, "median")
    trimmed = ssi_loss(pred, target, mask, "median", trim=0.05)
    assert trimmed.item() < full.item()
    # the normalisation still sees every pixel (MAD is a mean); only the 5 largest residuals are dropped
    rho = (normalize_median_mad(pred, mask) - normalize_median_mad(target, mask)).abs()[0, 0]
    assert trimmed.item() == pytest.approx(
        rho[1:].sum().item() / 95 + rho[0, 5:].sum().item() / 95, rel=1e-10
    )


@pytest.mark.parametrize("alignment", ["median", "lstsq"])
def test_ssi_loss_empty_masks_are_finite_and_do_not_dilute(alignment: str) -> None:
    pred, target, mask = _sample(b=2, seed=6)
    pred.requires_grad_(True)
    target = target.clone()
    mask[1] = False
    target[1] = float("inf")  # disparity of a zero depth, where invalid
    both = ssi_loss(pred, target, mask, alignment)
    alone = ssi_loss(pred[:1], target[:1], mask[:1], alignment)
    assert both.item() == pytest.approx(alone.item(), rel=1e-12)
    both.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0].abs().sum() > 0 and (pred.grad[1] == 0).all()

    empty = torch.zeros_like(mask)
    p = pred.detach().clone().requires_grad_(True)
    loss = ssi_loss(p, target, empty, alignment, trim=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(p.grad).all() and (p.grad == 0).all()


def test_ssi_loss_gradcheck_lstsq() -> None:
    pred, target, mask = _sample(b=2, h=4, w=5, seed=7)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: ssi_loss(p, target, mask, "lstsq"), (pred,))


def test_ssi_loss_median_gradients_flow_float32() -> None:
    pred, target, mask = (x.float() if x.is_floating_point() else x for x in _sample(seed=8))
    pred.requires_grad_(True)
    ssi_loss(pred, target, mask, "median", trim=0.1).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_ssi_loss_input_validation() -> None:
    pred, target, mask = _sample()
    with pytest.raises(ValueError, match="same shape"):
        ssi_loss(pred, target[:, :, :4], mask)
    with pytest.raises(ValueError, match="channels"):
        ssi_loss(pred.expand(-1, 2, -1, -1), target.expand(-1, 2, -1, -1))
    with pytest.raises(TypeError, match="bool"):
        ssi_loss(pred, target, mask.float())
    with pytest.raises(ValueError, match="mask"):
        ssi_loss(pred, target, mask[:, :, :4])
    with pytest.raises(ValueError, match="trim"):
        ScaleShiftInvariantLoss(trim=1.0)
    with pytest.raises(ValueError, match="alignment"):
        ssi_loss(pred, target, mask, alignment="mean")  # type: ignore[arg-type]


# ---------------------------------------------------------------- gradient matching


def _np_gradient_matching(pred, target, mask, scales: int, alignment: str) -> float:
    """Explicit loops over pixel pairs (MiDaS eq. 11)."""
    losses = []
    for i in range(pred.shape[0]):
        m = mask[i, 0].numpy()
        if not m.any():
            continue
        p, t = pred[i, 0].numpy(), target[i, 0].numpy()
        if alignment == "lstsq":
            s, sh = np.polyfit(p[m], t[m], deg=1)
            r = s * p + sh - t
        else:
            r = p - t
        total = 0.0
        for k in range(scales):
            step = 2**k
            rk, mk = r[::step, ::step], m[::step, ::step]
            acc = 0.0
            for y in range(rk.shape[0]):
                for x in range(rk.shape[1]):
                    if x + 1 < rk.shape[1] and mk[y, x] and mk[y, x + 1]:
                        acc += abs(rk[y, x + 1] - rk[y, x])
                    if y + 1 < rk.shape[0] and mk[y, x] and mk[y + 1, x]:
                        acc += abs(rk[y + 1, x] - rk[y, x])
            total += acc / max(mk.sum(), 1)
        losses.append(total)
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("alignment", ["lstsq", "none"])
def test_gradient_matching_matches_loops(alignment: str) -> None:
    pred, target, mask = _sample(b=2, h=9, w=11, seed=9)
    loss = gradient_matching_loss(pred, target, mask, scales=3, alignment=alignment)
    assert loss.item() == pytest.approx(_np_gradient_matching(pred, target, mask, 3, alignment), rel=1e-8)
    module = GradientMatchingLoss(scales=3, alignment=alignment)
    assert module(pred, target, mask).item() == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("alignment", ["lstsq", "median"])
def test_gradient_matching_zero_for_affine_and_empty(alignment: str) -> None:
    _, target, mask = _sample(seed=10)
    assert gradient_matching_loss(target, target, mask, alignment=alignment).item() == pytest.approx(
        0.0, abs=1e-12
    )
    assert gradient_matching_loss(4 * target + 1, target, mask, alignment=alignment).item() == pytest.approx(
        0.0, abs=1e-12
    )
    pred = torch.rand_like(target, dtype=torch.float64).requires_grad_(True)
    loss = gradient_matching_loss(pred, target, torch.zeros_like(mask), alignment=alignment)
    assert loss.item() == 0.0
    loss.backward()
    assert (pred.grad == 0).all()


def test_gradient_matching_no_dilution_and_gradients() -> None:
    pred, target, mask = _sample(b=2, seed=11)
    pred.requires_grad_(True)
    mask[0] = False
    target = target.clone()
    target[0] = float("nan")
    both = gradient_matching_loss(pred, target, mask)
    assert both.item() == pytest.approx(
        gradient_matching_loss(pred[1:], target[1:], mask[1:]).item(), rel=1e-12
    )
    both.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1].abs().sum() > 0 and (pred.grad[0] == 0).all()
    with pytest.raises(ValueError, match="scales"):
        GradientMatchingLoss(scales=0)


@pytest.mark.parametrize("alignment", ["median", "lstsq"])
def test_half_precision_inputs_are_computed_in_float32(alignment: str) -> None:
    pred, target, mask = _sample(b=2, h=16, w=16, seed=12)
    ref = ssi_loss(pred.bfloat16().double(), target.float(), mask, alignment)
    out = ssi_loss(pred.bfloat16(), target.float(), mask, alignment)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=1e-4)


def test_align_scale_shift_small_relative_variation_float32() -> None:
    # disparities near 100 varying by ~0.05 %: well resolved in float32, must not be taken as constant
    g = torch.Generator().manual_seed(13)
    pred = 100.0 + 0.05 * torch.rand(1, 6, 6, generator=g)
    target = 3.0 * (pred.double() - 100.0) + 1.0
    scale, shift = align_scale_shift(pred, target.float())
    assert scale.item() == pytest.approx(3.0, rel=1e-2)
    constant = torch.full((1, 6, 6), 100.0) + torch.zeros(1, 6, 6)
    assert align_scale_shift(constant, target.float())[0].item() == 1.0


def test_depth_to_disparity_hand_computed() -> None:
    depth = torch.tensor([[[[2.0, 0.5], [0.0, 4.0]]]])  # (1, 1, 2, 2)
    valid = torch.tensor([[[[True, True], [False, True]]]])
    expected = torch.tensor([[[[0.5, 2.0], [0.0, 0.25]]]])
    torch.testing.assert_close(depth_to_disparity(depth, valid), expected)


# ---------------------------------------------------------------- edge cases (mutation testing, issue 10)


def test_align_scale_shift_images_are_independent() -> None:
    """Each image's fit (and its constant-prediction test) uses only its own pixels: a neighbour with
    values 10⁴ times larger changes nothing."""
    g = torch.Generator().manual_seed(14)
    pred = torch.empty(2, 6, 6)
    pred[0] = 1.0 + 0.01 * torch.rand(6, 6, generator=g)
    pred[1] = 1e4 * (1.0 + torch.rand(6, 6, generator=g))
    target = 2.0 * pred + 0.5
    scale, shift = align_scale_shift(pred, target)
    alone = align_scale_shift(pred[:1], target[:1])
    assert scale[0].item() == pytest.approx(alone[0].item(), rel=1e-6)
    assert scale[0].item() == pytest.approx(2.0, rel=1e-3) and shift[0].item() == pytest.approx(0.5, abs=1e-2)


def test_align_scale_shift_constant_prediction_with_invalid_pixels() -> None:
    pred = torch.full((1, 4, 4), 3.0, dtype=torch.float64)
    target = torch.arange(16.0, dtype=torch.float64).reshape(1, 4, 4)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[0, 0] = False  # the first row is invalid
    scale, shift = align_scale_shift(pred, target, mask)
    assert scale.item() == 1.0 and shift.item() == pytest.approx(target[0, 1:].mean().item() - 3.0)
    zero = align_scale_shift(torch.zeros(1, 4, 4), target.float())  # all-zero prediction: also constant
    assert zero[0].item() == 1.0 and zero[1].item() == pytest.approx(7.5)


def test_align_scale_shift_constant_up_to_rounding_is_constant() -> None:
    """float32 values around 100 that differ by a few ulps (std / rms ≈ 1e-7 ≤ 64 eps) are constant."""
    ulp = torch.finfo(torch.float32).eps * 64  # the spacing of float32 numbers in [64, 128)
    pred = 100.0 + ulp * torch.tensor([0.0, 4.0, -4.0, 0.0] * 4).reshape(1, 4, 4)
    target = torch.arange(16.0).reshape(1, 4, 4)
    scale, shift = align_scale_shift(pred, target)
    assert scale.item() == 1.0 and shift.item() == pytest.approx(7.5 - pred.double().mean().item(), rel=1e-6)


def test_align_scale_shift_two_pixels_are_fitted_exactly() -> None:
    pred = torch.tensor([[[1.0, 3.0, 9.0]]], dtype=torch.float64)
    target = torch.tensor([[[5.0, -1.0, 7.0]]], dtype=torch.float64)
    mask = torch.tensor([[[True, True, False]]])
    scale, shift = align_scale_shift(pred, target, mask)  # the line through (1, 5) and (3, −1)
    assert scale.item() == pytest.approx(-3.0) and shift.item() == pytest.approx(8.0)


def test_gradient_matching_single_scale_and_default_scales() -> None:
    pred, target, mask = _sample(b=2, h=9, w=11, seed=15)
    loss = gradient_matching_loss(pred, target, mask, scales=1, alignment="none")
    assert loss.item() == pytest.approx(_np_gradient_matching(pred, target, mask, 1, "none"), rel=1e-8)
    assert GradientMatchingLoss(scales=1, alignment="none")(pred, target, mask).item() == pytest.approx(
        loss.item(), rel=1e-12
    )
    # MiDaS's K = 4 scales by default (20 pixels: the 4th scale, every 8th pixel, still has differences;
    # a 5th, every 16th, would too)
    pred, target, mask = _sample(b=2, h=20, w=20, seed=15)
    four = _np_gradient_matching(pred, target, mask, 4, "lstsq")
    assert four != pytest.approx(_np_gradient_matching(pred, target, mask, 5, "lstsq"), rel=1e-6)
    assert gradient_matching_loss(pred, target, mask).item() == pytest.approx(four, rel=1e-8)
    assert GradientMatchingLoss()(pred, target, mask).item() == pytest.approx(four, rel=1e-8)


def test_depth_loss_modules_pass_eps() -> None:
    """An eps above the maps' mean absolute deviation (≈ 0.25 here) changes the median normalisation."""
    pred, target, mask = _sample(seed=16)
    ssi = ssi_loss(pred, target, mask, "median", 0.1, eps=2.0)
    assert ScaleShiftInvariantLoss("median", 0.1, eps=2.0)(pred, target, mask).item() == pytest.approx(
        ssi.item(), rel=1e-12
    )
    assert ssi.item() != pytest.approx(ssi_loss(pred, target, mask, "median", 0.1).item(), rel=1e-3)
    grad = gradient_matching_loss(pred, target, mask, alignment="median", eps=2.0)
    module = GradientMatchingLoss(alignment="median", eps=2.0)
    assert module(pred, target, mask).item() == pytest.approx(grad.item(), rel=1e-12)
    assert grad.item() != pytest.approx(
        gradient_matching_loss(pred, target, mask, alignment="median").item(), rel=1e-3
    )


def test_ssi_loss_half_precision_targets() -> None:
    """Cached pseudo-labels are float16: a float16 target is computed in float32."""
    pred, target, mask = (x.float() if x.is_floating_point() else x for x in _sample(seed=17))
    half = target.half()
    for alignment in ("median", "lstsq"):
        ref = ssi_loss(pred, half.float(), mask, alignment)
        assert ssi_loss(pred, half, mask, alignment).item() == pytest.approx(ref.item(), rel=1e-6)


def test_ssi_loss_mask_shapes() -> None:
    pred, target, mask = _sample(seed=18)
    with pytest.raises(ValueError, match="mask"):
        ssi_loss(pred, target, torch.cat([mask, mask], dim=1))  # (B, 2, H, W): not silently channel 0
    # (B, H, W) maps that are one row high: the mask (B, 1, W) is not a (B, 1, H, W) mask
    row_p, row_t, row_m = pred[:, 0, :1], target[:, 0, :1], mask[:, 0, :1]  # (B, 1, W)
    expected = ssi_loss(row_p[:, None], row_t[:, None], row_m[:, None])  # the same as (B, 1, 1, W)
    assert ssi_loss(row_p, row_t, row_m).item() == pytest.approx(expected.item(), rel=1e-12)


def test_ssi_loss_refuses_trim_one() -> None:
    pred, target, mask = _sample()
    for trim in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="trim"):
            ssi_loss(pred, target, mask, trim=trim)  # trim = 1 would drop every pixel: a loss of 0


def test_ssi_loss_counts_images_with_one_valid_pixel_and_trims_to_one_pixel() -> None:
    pred, target, mask = _sample(b=2, seed=19)
    one = mask.clone()
    one[1] = False
    one[1, 0, 2, 3] = True  # a single valid pixel: loss 0, but the image counts in the batch mean
    for alignment in ("median", "lstsq"):
        alone = ssi_loss(pred[:1], target[:1], one[:1], alignment)
        assert ssi_loss(pred, target, one, alignment).item() == pytest.approx(alone.item() / 2, rel=1e-12)
    # two valid pixels in opposite orders: normalised [0, 2] vs [2, 0]; trim = 0.5 keeps one ρ = 2
    p = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)
    t = torch.tensor([[[5.0, 4.0]]], dtype=torch.float64)
    assert ssi_loss(p, t, trim=0.5).item() == pytest.approx(2.0, rel=1e-12)


def test_module_defaults() -> None:
    pred, target, mask = _sample(seed=20)
    # Depth Anything: median alignment, no trimming, eps 1e-6
    ref = ssi_loss(pred, target, mask, "median", 0.0, 1e-6)
    assert ScaleShiftInvariantLoss()(pred, target, mask).item() == pytest.approx(ref.item(), rel=1e-12)
    # MiDaS gradient matching: lstsq, 4 scales; eps 1e-6 for the median variant (these maps' MAD < 1)
    ref = gradient_matching_loss(pred, target, mask, 4, "median", 1e-6)
    assert GradientMatchingLoss(alignment="median")(pred, target, mask).item() == pytest.approx(
        ref.item(), rel=1e-12
    )


def test_normalize_median_mad_image_without_valid_pixels_is_zero() -> None:
    pred, _, mask = _sample(b=2, seed=21)
    mask[1] = False  # the other image of the batch has valid pixels
    out = normalize_median_mad(pred, mask)
    assert (out[1] == 0).all()  # "invalid pixels are 0 in the output", not NaN
    torch.testing.assert_close(out[:1], normalize_median_mad(pred[:1], mask[:1]))
