"""Tests of the segmentation losses against torchvision / torch and formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from anydistill.losses import (
    DiceLoss,
    FocalLoss,
    SegmentationCrossEntropy,
    SoftmaxDiceLoss,
    SoftmaxFocalLoss,
    cross_entropy,
    dice_loss,
    sigmoid_focal_loss,
    softmax_dice_loss,
    softmax_focal_loss,
)

B, C, H, W = 2, 4, 5, 6


def _multiclass(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, C, (B, H, W), generator=g)
    target[torch.rand(B, H, W, generator=g) < 0.25] = 255
    return logits, target


def _binary(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, 3, H, W, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(B, 3, H, W, generator=g) > 0.6).double()
    valid = torch.rand(B, 3, H, W, generator=g) > 0.2
    return logits, targets, valid


def _perfect_logits(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    safe = target.clamp_max(num_classes - 1)
    return F.one_hot(safe, num_classes).movedim(-1, 1).double() * 60 - 30  # (B, C, H, W)


# ---------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(smoothing: float, weighted: bool) -> None:
    logits, target = _multiclass()
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64) if weighted else None
    ref = F.cross_entropy(logits, target, weight=weight, ignore_index=255, label_smoothing=smoothing)
    assert cross_entropy(logits, target, 255, smoothing, weight).item() == pytest.approx(
        ref.item(), rel=1e-10
    )
    module = SegmentationCrossEntropy(label_smoothing=smoothing, weight=weight)
    assert module(logits, target).item() == pytest.approx(ref.item(), rel=1e-10)


def test_cross_entropy_all_ignored_is_zero_with_graph() -> None:
    logits, target = _multiclass()
    logits.requires_grad_(True)
    target = torch.full_like(target, 255)
    assert torch.isnan(F.cross_entropy(logits, target, ignore_index=255))  # the behaviour this fixes
    loss = cross_entropy(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


def test_cross_entropy_perfect_and_validation() -> None:
    _, target = _multiclass()
    assert cross_entropy(_perfect_logits(target, C), target).item() < 1e-20
    with pytest.raises(ValueError, match="target"):
        cross_entropy(torch.zeros(B, C, H, W), target[:, :3])
    with pytest.raises(TypeError, match="integer"):
        cross_entropy(torch.zeros(B, C, H, W), target.float())


# ---------------------------------------------------------------- sigmoid focal


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 1.5), (0.7, 0.0)])
def test_sigmoid_focal_equals_torchvision(reduction: str, alpha: float, gamma: float) -> None:
    logits, targets, _ = _binary()
    ref = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    out = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(FocalLoss(alpha, gamma, reduction)(logits, targets), ref, rtol=0, atol=0)  # type: ignore[arg-type]


def test_sigmoid_focal_valid_mask_equals_torchvision_on_valid_elements() -> None:
    logits, targets, valid = _binary(seed=1)
    ref = torchvision.ops.sigmoid_focal_loss(logits[valid], targets[valid], reduction="mean")
    assert sigmoid_focal_loss(logits, targets, valid=valid).item() == pytest.approx(ref.item(), rel=1e-12)
    none = sigmoid_focal_loss(logits, targets, valid=valid, reduction="none")
    assert none.shape == logits.shape and (none[~valid] == 0).all()
    # invalid elements change nothing
    changed = torch.where(valid, logits, torch.full_like(logits, 1e3))
    assert sigmoid_focal_loss(changed, targets, valid=valid).item() == pytest.approx(ref.item(), rel=1e-12)


def test_sigmoid_focal_perfect_empty_and_gradients() -> None:
    _, targets, valid = _binary(seed=2)
    perfect = (targets * 2 - 1) * 30
    assert sigmoid_focal_loss(perfect, targets).item() < 1e-20
    logits = torch.randn_like(targets).requires_grad_(True)
    loss = sigmoid_focal_loss(logits, targets, valid=torch.zeros_like(valid))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()
    logits.grad = None
    sigmoid_focal_loss(logits, targets, valid=valid).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[valid].abs().min() > 0
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_focal_loss(logits, targets[:, :1])
    with pytest.raises(TypeError, match="bool"):
        sigmoid_focal_loss(logits, targets, valid=valid.float())


# ---------------------------------------------------------------- softmax focal


def _reference_softmax_focal(logits, target, alpha, gamma) -> float:
    """Pixel by pixel, softmax written out: −α_y (1 − p_y)^γ log p_y, mean over non-ignored pixels."""
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for y in range(logits.shape[2]):
            for x in range(logits.shape[3]):
                cls = int(target[b, y, x])
                if cls == 255:
                    continue
                z = [float(v) for v in logits[b, :, y, x]]
                p = math.exp(z[cls]) / sum(math.exp(v) for v in z)
                a = 1.0 if alpha is None else (float(alpha[cls]) if torch.is_tensor(alpha) else alpha)
                total += -a * (1 - p) ** gamma * math.log(p)
                count += 1
    return total / max(count, 1)


@pytest.mark.parametrize(
    ("alpha", "gamma"), [(None, 2.0), (0.25, 2.0), (torch.tensor([0.1, 0.2, 0.3, 0.4]), 1.5), (None, 0.5)]
)
def test_softmax_focal_matches_formula(alpha, gamma: float) -> None:
    logits, target = _multiclass(seed=3)
    ref = _reference_softmax_focal(logits, target, alpha, gamma)
    assert softmax_focal_loss(logits, target, alpha, gamma).item() == pytest.approx(ref, rel=1e-10)
    assert SoftmaxFocalLoss(alpha, gamma)(logits, target).item() == pytest.approx(ref, rel=1e-10)


def test_softmax_focal_gamma0_is_cross_entropy_and_ignore_respected() -> None:
    logits, target = _multiclass(seed=4)
    ref = F.cross_entropy(logits, target, ignore_index=255)
    assert softmax_focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ref.item(), rel=1e-12)
    changed = torch.where((target == 255)[:, None], torch.randn_like(logits) * 50, logits)
    assert softmax_focal_loss(changed, target).item() == pytest.approx(
        softmax_focal_loss(logits, target).item()
    )
    none = softmax_focal_loss(logits, target, reduction="none")
    assert none.shape == target.shape and (none[target == 255] == 0).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_focal_perfect_empty_and_gradients(gamma: float) -> None:
    _, target = _multiclass(seed=5)
    perfect = _perfect_logits(target, C).requires_grad_(True)
    loss = softmax_focal_loss(perfect, target, gamma=gamma)
    assert loss.item() < 1e-12
    loss.backward()
    assert torch.isfinite(perfect.grad).all()
    logits = torch.randn(B, C, H, W, requires_grad=True)
    empty = softmax_focal_loss(logits, torch.full_like(target, 255), gamma=gamma)
    assert empty.item() == 0.0
    empty.backward()
    assert (logits.grad == 0).all()
    logits.grad = None
    softmax_focal_loss(logits, target, gamma=gamma).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="alpha"):
        softmax_focal_loss(logits, target, alpha=torch.ones(C + 1))


# ---------------------------------------------------------------- dice


def test_dice_matches_formula() -> None:
    logits, targets, valid = _binary(seed=6)
    p = torch.sigmoid(logits)
    expected = []
    for b in range(B):
        for n in range(3):
            m = valid[b, n]
            pp, gg = p[b, n][m], targets[b, n][m]
            expected.append(1 - (2 * (pp * gg).sum() + 1) / (pp.sum() + gg.sum() + 1))
    expected = torch.stack(expected).reshape(B, 3)
    torch.testing.assert_close(dice_loss(logits, targets, valid, reduction="none"), expected)
    assert dice_loss(logits, targets, valid).item() == pytest.approx(expected.mean().item(), rel=1e-12)
    assert DiceLoss()(logits, targets, valid).item() == pytest.approx(expected.mean().item(), rel=1e-12)
    assert dice_loss(logits, targets, valid, reduction="sum").item() == pytest.approx(
        expected.sum().item(), rel=1e-12
    )


def test_dice_without_valid_matches_sam_form() -> None:
    logits, targets, _ = _binary(seed=7)
    p = logits.sigmoid().flatten(2)  # (B, N, H*W)
    g = targets.flatten(2)
    expected = 1 - (2 * (p * g).sum(-1) + 1) / (p.sum(-1) + g.sum(-1) + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(expected.mean().item(), rel=1e-12)


def test_dice_perfect_empty_and_gradients() -> None:
    _, targets, valid = _binary(seed=8)
    perfect = (targets * 2 - 1) * 30
    assert dice_loss(perfect, targets).item() < 1e-6
    empty_gt = torch.zeros_like(targets)
    assert dice_loss(torch.full_like(targets, -30.0), empty_gt).item() < 1e-6
    logits = torch.randn_like(targets).requires_grad_(True)
    loss = dice_loss(logits, empty_gt, valid=torch.zeros_like(valid))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()
    logits.grad = None
    dice_loss(logits, targets, valid).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[valid].abs().min() > 0


def _softmax_dice_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image and class, by loops: 1 - (2 sum(p g) + 1) / (sum p + sum g + 1) over non-ignored pixels."""
    p = torch.softmax(logits, dim=1)
    expected = torch.zeros(B, C, dtype=torch.float64)
    for b in range(B):
        keep = target[b] != 255
        for c in range(C):
            pc, gc = p[b, c][keep], (target[b][keep] == c).double()
            expected[b, c] = 1 - (2 * (pc * gc).sum() + 1) / (pc.sum() + gc.sum() + 1)
    return expected


def test_softmax_dice_matches_formula_and_ignores() -> None:
    logits, target = _multiclass(seed=9)
    expected = _softmax_dice_reference(logits, target)
    torch.testing.assert_close(softmax_dice_loss(logits, target, reduction="none"), expected)
    assert SoftmaxDiceLoss()(logits, target).item() == pytest.approx(expected.mean().item(), rel=1e-12)
    changed = torch.where((target == 255)[:, None], torch.randn_like(logits) * 50, logits)
    assert softmax_dice_loss(changed, target).item() == pytest.approx(expected.mean().item(), rel=1e-12)


def test_softmax_dice_perfect_empty_and_gradients() -> None:
    _, target = _multiclass(seed=10)
    assert softmax_dice_loss(_perfect_logits(target, C), target).item() < 1e-6
    logits = torch.randn(B, C, H, W, requires_grad=True)
    loss = softmax_dice_loss(logits, torch.full_like(target, 255))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()
    logits.grad = None
    softmax_dice_loss(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_half_precision_logits_are_computed_in_float32() -> None:
    logits, target = _multiclass(seed=11)
    half = logits.bfloat16()
    for fn in (softmax_focal_loss, softmax_dice_loss):
        out = fn(half, target)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(fn(half.double(), target).item(), rel=1e-5)
    b_logits, b_targets, valid = _binary(seed=12)
    out = dice_loss(b_logits.bfloat16(), b_targets, valid)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(
        dice_loss(b_logits.bfloat16().double(), b_targets, valid).item(), rel=1e-5
    )


# ---------------------------------------------------------------- edge cases (mutation testing, issue 10)


def test_softmax_dice_with_a_class_absent_from_the_batch() -> None:
    """The one-hot target has C channels even when the highest class ids appear nowhere."""
    logits, target = _multiclass(seed=13)
    target = torch.where(target == 255, target, target.clamp_max(1))  # only classes 0 and 1 (and ignored)
    expected = _softmax_dice_reference(logits, target)
    torch.testing.assert_close(softmax_dice_loss(logits, target, reduction="none"), expected)


@pytest.mark.parametrize("shape", [(H, W), (B, H, W), (B, 2, 3, H, W)])
def test_dice_sums_over_the_last_two_dimensions_of_any_shape(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    targets = (torch.rand(shape, generator=g) > 0.5).double()
    p = logits.sigmoid().flatten(-2)  # (..., H*W)
    g_flat = targets.flatten(-2)
    expected = 1 - (2 * (p * g_flat).sum(-1) + 1) / (p.sum(-1) + g_flat.sum(-1) + 1)  # (...)
    torch.testing.assert_close(dice_loss(logits, targets, reduction="none"), expected)
    with pytest.raises(ValueError, match="H, W"):
        dice_loss(torch.zeros(W), torch.zeros(W))


def test_dice_refuses_a_bad_valid_mask() -> None:
    logits, targets, valid = _binary(seed=15)
    with pytest.raises(TypeError, match="bool"):
        dice_loss(logits, targets, valid.double())
    with pytest.raises(ValueError, match="valid"):
        dice_loss(logits, targets, valid[:, :1])  # would broadcast silently


def test_sigmoid_focal_casts_targets_to_the_logits_dtype() -> None:
    logits, targets, valid = _binary(seed=16)
    ref = sigmoid_focal_loss(logits, targets, valid=valid)
    for other in (targets.bool(), targets.float()):
        assert sigmoid_focal_loss(logits, other, valid=valid).item() == pytest.approx(ref.item(), rel=1e-6)


def _softmax_focal_by_autograd(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """−(1 − p_y)^γ log p_y written with plain autograd ops, mean over the non-ignored pixels."""
    keep = target != 255
    p = torch.softmax(logits, dim=1).gather(1, target.clamp_max(logits.shape[1] - 1)[:, None])[:, 0]
    return (-((1 - p) ** gamma) * torch.log(p))[keep].mean()


@pytest.mark.parametrize("gamma", [1.0, 2.0, 0.5])
def test_softmax_focal_value_and_gradient_match_plain_autograd(gamma: float) -> None:
    """γ = 1 included (the focal factor is then 1 − p, not 1); the gradient flows through the factor."""
    logits, target = _multiclass(seed=17)
    logits.requires_grad_(True)
    ref = _softmax_focal_by_autograd(logits, target, gamma)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    out = softmax_focal_loss(logits, target, gamma=gamma)
    (grad,) = torch.autograd.grad(out, logits)
    assert out.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_softmax_focal_takes_any_b_c_shape() -> None:
    """Classes are dim 1 for (B, C) and (B, C, N) logits too (as in ``cross_entropy``)."""
    g = torch.Generator().manual_seed(18)
    for shape in ((6, C), (2, C, 7)):
        logits = torch.randn(shape, generator=g, dtype=torch.float64)
        target = torch.randint(0, C, shape[:1] + shape[2:], generator=g)
        ref = F.cross_entropy(logits, target)
        assert softmax_focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ref.item(), rel=1e-12)


def test_mean_over_a_single_counted_pixel_is_its_loss() -> None:
    logits, target = _multiclass(seed=19)
    one = torch.full_like(target, 255)
    one[1, 2, 3] = target[1, 2, 3].clamp_max(C - 1)
    per_pixel = softmax_focal_loss(logits, one, reduction="none")
    assert softmax_focal_loss(logits, one).item() == pytest.approx(per_pixel[1, 2, 3].item(), rel=1e-12)
    b_logits, b_targets, _ = _binary(seed=20)
    valid = torch.zeros_like(b_targets, dtype=torch.bool)
    valid[0, 1, 2, 3] = True
    per_element = sigmoid_focal_loss(b_logits, b_targets, reduction="none")
    assert sigmoid_focal_loss(b_logits, b_targets, valid=valid).item() == pytest.approx(
        per_element[0, 1, 2, 3].item(), rel=1e-12
    )
