"""Tests of the distillation losses: feature alignment, knowledge distillation and CutMix-aware SSI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anydistill.data.perturb import cutmix, sample_cutmix_boxes
from anydistill.losses import (
    CutMixScaleShiftInvariantLoss,
    FeatureAlignmentLoss,
    KnowledgeDistillationLoss,
    cutmix_ssi_loss,
    feature_alignment_loss,
    kd_loss,
    ssi_loss,
)

# ---------------------------------------------------------------- feature alignment


def _features_with_cosines(
    cosines: list[float], c: int = 5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student/frozen maps (1, C, 1, N) whose per-pixel cosines are exactly ``cosines``, random norms."""
    g = torch.Generator().manual_seed(seed)
    n = len(cosines)
    frozen = torch.zeros(1, c, 1, n, dtype=torch.float64)
    student = torch.zeros(1, c, 1, n, dtype=torch.float64)
    for i, cos in enumerate(cosines):
        norm_f, norm_s = 0.5 + torch.rand(2, generator=g, dtype=torch.float64)
        frozen[0, 0, 0, i] = norm_f
        student[0, 0, 0, i] = norm_s * cos
        student[0, 1, 0, i] = norm_s * math.sqrt(1 - cos**2)
    return student, frozen


def test_identical_features_give_zero() -> None:
    f = torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    for margin in (0.0, 0.15, 2.0):
        loss = feature_alignment_loss(f, f.detach().clone(), margin=margin)
        assert loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert f.grad is not None and f.grad.abs().max() < 1e-8


def test_margin_excludes_pixels_above_one_minus_alpha() -> None:
    cosines = [0.95, 0.9, 0.5, -0.3, 0.86, 0.84, 0.0]
    student, frozen = _features_with_cosines(cosines)
    kept = [c for c in cosines if c <= 0.85]  # α = 0.15: cos > 0.85 is left out
    expected = sum(1 - c for c in kept) / len(kept)
    assert feature_alignment_loss(student, frozen, margin=0.15).item() == pytest.approx(expected, rel=1e-12)
    # α = 0 keeps every pixel: the paper's eq. 4, 1 − mean cos
    expected_all = 1 - sum(cosines) / len(cosines)
    assert feature_alignment_loss(student, frozen, margin=0.0).item() == pytest.approx(
        expected_all, rel=1e-12
    )
    # a pixel below the threshold contributes exactly 1 − cos
    single, single_f = _features_with_cosines([0.3])
    assert feature_alignment_loss(single, single_f).item() == pytest.approx(0.7, rel=1e-12)


def test_excluded_pixels_get_no_gradient_and_frozen_none() -> None:
    student, frozen = _features_with_cosines([0.99, 0.2, 0.95, -0.5])
    student.requires_grad_(True)
    frozen.requires_grad_(True)
    feature_alignment_loss(student, frozen, margin=0.15).backward()
    assert frozen.grad is None
    per_pixel = student.grad.abs().sum(dim=1)[0, 0]  # (N,)
    assert per_pixel[0] == 0 and per_pixel[2] == 0
    assert per_pixel[1] > 0 and per_pixel[3] > 0


def test_nothing_kept_gives_zero_with_graph() -> None:
    student, frozen = _features_with_cosines([0.99, 0.97])
    student.requires_grad_(True)
    loss = feature_alignment_loss(student, frozen, margin=0.15)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_feature_alignment_matches_independent_formula_on_random_maps() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64)
    f = s + 0.6 * torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64)
    sn, fn = s.numpy(), f.numpy()
    cos = (sn * fn).sum(1) / (np.linalg.norm(sn, axis=1) * np.linalg.norm(fn, axis=1))  # (B, H, W)
    keep = cos <= 0.85
    assert 0 < keep.sum() < keep.size  # both kinds of pixel
    expected = (1 - cos[keep]).mean()
    assert feature_alignment_loss(s, f).item() == pytest.approx(expected, rel=1e-10)


def test_feature_alignment_half_precision_is_finite() -> None:
    s = torch.randn(2, 4, 3, 3).half()
    f = torch.randn(2, 4, 3, 3).half()
    ref = feature_alignment_loss(s.float(), f.float())
    out = feature_alignment_loss(s, f)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=1e-3)


def test_feature_alignment_module_projection_and_interpolation() -> None:
    g = torch.Generator().manual_seed(2)
    same = FeatureAlignmentLoss(8, 8)
    assert isinstance(same.proj, torch.nn.Identity)
    module = FeatureAlignmentLoss(6, 10, margin=0.15)
    assert isinstance(module.proj, torch.nn.Conv2d) and module.proj.kernel_size == (1, 1)
    for student_hw, frozen_hw in (((4, 6), (8, 12)), ((9, 9), (3, 5)), ((5, 5), (5, 5))):
        student = torch.randn(2, 6, *student_hw, generator=g)
        frozen = torch.randn(2, 10, *frozen_hw, generator=g)
        projected = module.project(student, frozen_hw)
        assert projected.shape == (2, 10, *frozen_hw)
        # independent composition: 1x1 conv first, then bilinear resize (the two commute)
        expected = F.interpolate(
            F.conv2d(student, module.proj.weight, module.proj.bias),
            size=frozen_hw,
            mode="bilinear",
            align_corners=False,
        )
        torch.testing.assert_close(projected, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(module(student, frozen), feature_alignment_loss(expected, frozen))


def test_feature_alignment_module_gradients_reach_student_and_projection_only() -> None:
    module = FeatureAlignmentLoss(4, 7)
    student = torch.randn(2, 4, 3, 3, requires_grad=True)
    frozen = torch.randn(2, 7, 6, 6, requires_grad=True)
    module(student, frozen).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert module.proj.weight.grad is not None and module.proj.weight.grad.abs().sum() > 0
    assert frozen.grad is None
    with pytest.raises(ValueError, match="student_feat"):
        module(torch.randn(2, 5, 3, 3), frozen)
    with pytest.raises(ValueError, match=r"frozen_feat must be \(B, 7"):  # not a later shape mismatch
        module(student, torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match="same shape"):
        feature_alignment_loss(torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 3))


# ---------------------------------------------------------------- knowledge distillation


def _np_kd(student: np.ndarray, teacher: np.ndarray, t: float, valid: np.ndarray | None = None) -> float:
    """T² · mean over positions of Σ_k p_t log(p_t / p_s), with the classes on axis 1."""

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_s, p_t = softmax(student / t), softmax(teacher / t)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1)  # (B, ...)
    if valid is not None:
        kl = kl[valid]
    return float(t * t * kl.mean())


def test_kd_matches_kldivloss_batchmean_for_classification() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, generator=g, dtype=torch.float64)
    t = 2 * torch.randn(5, 7, generator=g, dtype=torch.float64)
    for temp in (1.0, 2.0, 4.0):
        ref = torch.nn.KLDivLoss(reduction="batchmean", log_target=False)(
            F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1)
        ) * (temp**2)
        out = kd_loss(s, t, temperature=temp)
        assert out.item() == pytest.approx(ref.item(), rel=1e-10)
        assert out.item() == pytest.approx(_np_kd(s.numpy(), t.numpy(), temp), rel=1e-10)


def test_kd_dense_matches_independent_formula_with_valid_mask() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    valid = torch.rand(2, 3, 5, generator=g) > 0.4
    assert kd_loss(s, t, 3.0).item() == pytest.approx(_np_kd(s.numpy(), t.numpy(), 3.0), rel=1e-10)
    expected = _np_kd(s.numpy(), t.numpy(), 3.0, valid.numpy())
    assert kd_loss(s, t, 3.0, valid=valid).item() == pytest.approx(expected, rel=1e-10)


def test_kd_gradient_is_t_times_probability_difference() -> None:
    """d(T² KL)/dz_s = T (p_s − p_t) / N (Hinton et al. 2015, §2)."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64)
    temp = 2.5
    kd_loss(s, t, temp).backward()
    expected = temp * (F.softmax(s.detach() / temp, 1) - F.softmax(t / temp, 1)) / 4
    torch.testing.assert_close(s.grad, expected)


def test_kd_with_probabilities_equals_logits_and_handles_zeros() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, 2, 2, generator=g, dtype=torch.float64)
    t = torch.randn(3, 5, 2, 2, generator=g, dtype=torch.float64)
    from_logits = kd_loss(s, t, 2.0)
    from_probs = kd_loss(s, teacher_probs=F.softmax(t, dim=1), temperature=2.0)
    assert from_probs.item() == pytest.approx(from_logits.item(), rel=1e-10)
    # one-hot / partly-zero soft targets (e.g. CutMix-mixed hard labels): finite, = p^(1/T) renormalised
    probs = torch.zeros(3, 5, 2, 2, dtype=torch.float64)
    probs[:, 0] = 0.7
    probs[:, 2] = 0.3
    probs[0, :, 0, 0] = torch.tensor([0, 0, 0, 1.0, 0])
    s.requires_grad_(True)
    out = kd_loss(s, teacher_probs=probs, temperature=2.0)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()
    pt = probs.numpy() ** 0.5
    pt = pt / pt.sum(axis=1, keepdims=True)
    ps = F.softmax(s.detach() / 2.0, dim=1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pt > 0, pt * (np.log(pt) - np.log(ps)), 0.0)
    assert out.item() == pytest.approx(4.0 * terms.sum(axis=1).mean(), rel=1e-10)


def test_kd_edge_cases() -> None:
    s = torch.randn(2, 3, 4, requires_grad=True)
    assert kd_loss(s, s.detach().clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    none_valid = kd_loss(s, torch.randn(2, 3, 4), 4.0, valid=torch.zeros(2, 4, dtype=torch.bool))
    assert none_valid.item() == 0.0
    none_valid.backward()
    with pytest.raises(ValueError, match="exactly one"):
        kd_loss(s, s, teacher_probs=s.softmax(1))
    with pytest.raises(ValueError, match="exactly one"):
        kd_loss(s)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, s, temperature=0.0)
    with pytest.raises(ValueError, match="valid"):
        kd_loss(s, s, valid=torch.ones(2, 3, dtype=torch.bool))


def test_kd_with_one_valid_position_is_its_kl() -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    valid = torch.zeros(2, 3, 5, dtype=torch.bool)
    valid[1, 2, 0] = True
    expected = _np_kd(s.numpy(), t.numpy(), 3.0, valid.numpy())  # T² · KL at that one position
    assert kd_loss(s, t, 3.0, valid=valid).item() == pytest.approx(expected, rel=1e-10)


def test_kd_module_combines_hard_and_soft_terms() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(6, 5, generator=g)
    t = torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    module = KnowledgeDistillationLoss(temperature=3.0, alpha=0.3)
    expected = 0.7 * F.cross_entropy(s, y) + 0.3 * 9.0 * F.kl_div(
        F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean"
    )
    torch.testing.assert_close(module(s, t, y), expected)
    torch.testing.assert_close(module(s, t), kd_loss(s, t, 3.0))
    # dense, with ignored label pixels
    s = torch.randn(2, 4, 3, 3, generator=g)
    t = torch.randn(2, 4, 3, 3, generator=g)
    y = torch.randint(0, 4, (2, 3, 3), generator=g)
    y[0, 0] = 255
    expected = 0.7 * F.cross_entropy(s, y, ignore_index=255) + 0.3 * kd_loss(s, t, 3.0)
    torch.testing.assert_close(module(s, t, y), expected)


# ---------------------------------------------------------------- CutMix-aware SSI


def _lower_median(x: np.ndarray) -> float:
    return float(np.sort(x)[(x.size - 1) // 2])


def _np_region_loss(p: np.ndarray, t: np.ndarray, alignment: str, trim: float) -> float:
    """Independent SSI loss of one region's valid pixels (1-D arrays)."""
    if alignment == "median":

        def norm(x: np.ndarray) -> np.ndarray:
            c = x - _lower_median(x)
            return c / max(np.abs(c).mean(), 1e-6)

        rho = np.abs(norm(p) - norm(t))
    else:
        a = np.stack([p, np.ones_like(p)], axis=1)
        (s, sh), *_ = np.linalg.lstsq(a, t, rcond=None)
        rho = 0.5 * (s * p + sh - t) ** 2
    keep = p.size - int(np.floor(trim * p.size))
    return float(np.sort(rho)[:keep].mean())


def _np_cutmix_ssi(pred, ta, tb, va, vb, mask, alignment: str, trim: float) -> float:  # noqa: ANN001
    per_image = []
    for i in range(pred.shape[0]):
        losses, counts = [], []
        for region, target in ((mask[i] & vb[i], tb[i]), (~mask[i] & va[i], ta[i])):
            n = int(region.sum())
            counts.append(n)
            losses.append(_np_region_loss(pred[i][region], target[region], alignment, trim) if n else 0.0)
        if sum(counts):
            per_image.append((counts[0] * losses[0] + counts[1] * losses[1]) / sum(counts))
    return float(np.mean(per_image)) if per_image else 0.0


def _depth_batch(b: int = 5, h: int = 10, w: int = 12, seed: int = 0):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) + 0.1
    ta = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) + 0.1
    tb = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) + 0.1
    va = torch.rand(b, 1, h, w, generator=g) > 0.2
    vb = torch.rand(b, 1, h, w, generator=g) > 0.2
    mask = sample_cutmix_boxes(b, h, w, p=0.6, area=(0.1, 0.5), generator=g)
    return pred, ta, tb, va, vb, mask


@pytest.mark.parametrize(
    "alignment, trim", [("median", 0.0), ("median", 0.1), ("lstsq", 0.0), ("lstsq", 0.2)]
)
def test_cutmix_ssi_matches_loop_reference(alignment: str, trim: float) -> None:
    pred, ta, tb, va, vb, mask = _depth_batch()
    mixed = mask.flatten(1).any(dim=1)
    assert mixed.any() and not mixed.all()  # the seed gives mixed and unmixed samples
    va[-1] = False  # an unmixed-or-mixed image with nothing valid outside the box
    out = cutmix_ssi_loss(pred, ta, tb, va, vb, mask, alignment=alignment, trim=trim)
    expected = _np_cutmix_ssi(
        pred[:, 0].numpy(),
        ta[:, 0].numpy(),
        tb[:, 0].numpy(),
        va[:, 0].numpy(),
        vb[:, 0].numpy(),
        mask[:, 0].numpy(),
        alignment,
        trim,
    )
    assert out.item() == pytest.approx(expected, rel=1e-9)


def test_cutmix_ssi_is_zero_for_per_region_affine_predictions() -> None:
    pred, ta, tb, va, vb, mask = _depth_batch(seed=1)
    mask = sample_cutmix_boxes(5, 10, 12, p=1.0, area=(0.2, 0.4), generator=torch.Generator().manual_seed(0))
    # inside: an affine map of the partner's label, outside: a different one of the base's
    pred = torch.where(mask, 3.0 * tb + 1.0, 0.5 * ta + 2.0)
    for alignment in ("median", "lstsq"):
        assert cutmix_ssi_loss(pred, ta, tb, va, vb, mask, alignment=alignment).item() < 1e-10
        # a single global alignment against the composed label cannot fit both regions
        composed = cutmix(ta, tb, mask)
        assert ssi_loss(pred, composed, cutmix(va, vb, mask), alignment=alignment).item() > 1e-3


def test_cutmix_ssi_without_mix_is_plain_ssi() -> None:
    pred, ta, tb, va, vb, _ = _depth_batch(seed=2)
    no_mix = torch.zeros_like(va)
    for alignment, trim in (("median", 0.1), ("lstsq", 0.0)):
        out = cutmix_ssi_loss(pred, ta, tb, va, vb, no_mix, alignment=alignment, trim=trim)
        torch.testing.assert_close(out, ssi_loss(pred, ta, va, alignment=alignment, trim=trim))
    # a box covering everything is plain SSI against the partner's label
    full = torch.ones_like(va)
    torch.testing.assert_close(cutmix_ssi_loss(pred, ta, tb, va, vb, full), ssi_loss(pred, tb, vb))


def test_cutmix_ssi_gradients_and_empty_regions() -> None:
    pred, ta, tb, va, vb, mask = _depth_batch(seed=3)
    mask = sample_cutmix_boxes(5, 10, 12, p=1.0, area=(0.2, 0.4), generator=torch.Generator().manual_seed(1))
    pred.requires_grad_(True)
    cutmix_ssi_loss(pred, ta, tb, va, vb, mask).backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad * mask).abs().sum() > 0 and (pred.grad * ~mask).abs().sum() > 0
    # nothing valid inside the box: only the outside counts, with weight 1
    out = cutmix_ssi_loss(pred, ta, tb, va, torch.zeros_like(vb), mask)
    torch.testing.assert_close(out, ssi_loss(pred, ta, va & ~mask))
    # nothing valid at all: 0 with a graph; non-finite targets are invalid, never NaN
    nothing = torch.zeros_like(va)
    empty = cutmix_ssi_loss(pred, ta, tb, nothing, nothing, mask)
    assert empty.item() == 0.0
    empty.backward()
    tb_inf = tb.clone()
    tb_inf[:, :, :2] = float("inf")
    out = cutmix_ssi_loss(pred, ta, tb_inf, va, vb, mask)
    assert torch.isfinite(out)


def test_cutmix_ssi_module_and_validation() -> None:
    pred, ta, tb, va, vb, mask = _depth_batch(seed=4)
    module = CutMixScaleShiftInvariantLoss(alignment="lstsq", trim=0.1)
    torch.testing.assert_close(
        module(pred, ta, tb, va, vb, mask), cutmix_ssi_loss(pred, ta, tb, va, vb, mask, "lstsq", 0.1)
    )
    # (B, H, W) inputs and None valid masks are accepted
    out = cutmix_ssi_loss(pred[:, 0], ta[:, 0], tb[:, 0], None, None, mask[:, 0])
    torch.testing.assert_close(
        out, cutmix_ssi_loss(pred, ta, tb, torch.ones_like(va), torch.ones_like(vb), mask)
    )
    with pytest.raises(TypeError, match="bool"):
        cutmix_ssi_loss(pred, ta, tb, va, vb, mask.double())
    with pytest.raises(ValueError, match="target_b"):
        cutmix_ssi_loss(pred, ta, tb[:, :, :5], va, vb, mask)
    with pytest.raises(ValueError, match="trim"):
        cutmix_ssi_loss(pred, ta, tb, va, vb, mask, trim=1.0)


# ---------------------------------------------------------------- edge cases (mutation testing, issue 10)


def test_feature_alignment_margin_zero_counts_exactly_aligned_pixels() -> None:
    """α = 0 is the paper's eq. 4: 1 − mean cos over ALL pixels, the exactly aligned ones included."""
    frozen = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    frozen[0, 0] = 1.0
    student = frozen.clone()
    student[0, :2, 0, 1] = torch.tensor([0.5, 0.75**0.5], dtype=torch.float64)  # cos = 0.5; pixel 0: cos = 1
    assert feature_alignment_loss(student, frozen, margin=0.0).item() == pytest.approx(0.25, rel=1e-12)


def test_feature_alignment_pooled_features_eps_and_margin_bounds() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)  # (B, C) pooled embeddings
    f = torch.randn(4, 6, generator=g, dtype=torch.float64)
    cos = (s * f).sum(1) / (s.norm(dim=1) * f.norm(dim=1))
    assert feature_alignment_loss(s, f, margin=0.0).item() == pytest.approx(1 - cos.mean().item(), rel=1e-12)
    # eps bounds the norms: tiny features with a large eps have cosines near 0
    small_s, small_f = 1e-3 * s, 1e-3 * f
    ref = 1 - F.cosine_similarity(small_s, small_f, dim=1, eps=1.0).mean()
    assert feature_alignment_loss(small_s, small_f, margin=0.0, eps=1.0).item() == pytest.approx(ref.item())
    assert ref.item() == pytest.approx(1.0, abs=1e-4)
    for margin in (-0.1, 2.5):
        with pytest.raises(ValueError, match="margin"):
            feature_alignment_loss(s, f, margin=margin)
        with pytest.raises(ValueError, match="margin"):
            FeatureAlignmentLoss(6, 6, margin=margin)
    with pytest.raises(ValueError, match=r"\(B, C"):
        feature_alignment_loss(s[0], f[0])


def test_feature_alignment_module_settings() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 5, 4, 4, generator=g)
    f = s + 0.5 * torch.randn(2, 5, 4, 4, generator=g)
    # Depth Anything's α = 0.15 by default; the module passes its own margin
    assert FeatureAlignmentLoss(5, 5)(s, f).item() == pytest.approx(feature_alignment_loss(s, f, 0.15).item())
    for margin in (0.0, 0.5, 2.0):  # both ends of [0, 2] are accepted
        module = FeatureAlignmentLoss(5, 5, margin=margin)
        assert module(s, f).item() == pytest.approx(feature_alignment_loss(s, f, margin).item())
    assert feature_alignment_loss(s, f, 0.0).item() != pytest.approx(feature_alignment_loss(s, f, 0.5).item())
    FeatureAlignmentLoss(1, 1)  # one-channel features are features too
    FeatureAlignmentLoss(1, 3)
    for dims in ((0, 3), (3, 0)):
        with pytest.raises(ValueError, match="dims"):
            FeatureAlignmentLoss(*dims)


def test_cutmix_ssi_refuses_multi_channel_maps() -> None:
    pred, ta, tb, va, vb, mask = _depth_batch(b=2, seed=5)
    two = torch.cat([pred, pred], dim=1)  # (B, 2, H, W)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        cutmix_ssi_loss(
            two, torch.cat([ta, ta], 1), torch.cat([tb, tb], 1), None, None, torch.cat([mask, mask], 1)
        )


def test_cutmix_ssi_batch_mean_counts_exactly_the_images_with_counted_pixels() -> None:
    pred, ta, tb, va, vb, mask = _depth_batch(b=3, seed=6)
    mask[:] = False
    mask[:, :, 2:6, 3:8] = True
    per_image = [
        cutmix_ssi_loss(
            pred[i : i + 1], ta[i : i + 1], tb[i : i + 1], va[i : i + 1], vb[i : i + 1], mask[i : i + 1]
        )
        for i in range(3)
    ]
    # one image alone: its own loss (not halved)
    assert per_image[0].item() > 0
    # image 1 with nothing counted does not count; image 2 with one counted pixel (loss 0) does
    va[1], vb[1] = False, False
    va[2], vb[2] = False, False
    va[2, 0, 0, 0] = True
    out = cutmix_ssi_loss(pred, ta, tb, va, vb, mask)
    assert out.item() == pytest.approx(per_image[0].item() / 2, rel=1e-12)
