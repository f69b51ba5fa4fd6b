"""Tests of the affine-invariant depth losses against independent numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anydistill.losses import (
    GradientMatchingLoss,
    ScaleShiftInvariantLoss,
    align_scale_shift,
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
