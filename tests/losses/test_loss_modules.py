"""The ``nn.Module`` losses: each forwards every setting it holds to its function, refuses the settings its
function refuses, and its defaults are the papers' constants (mutation testing, issue 10, found wrappers
that dropped an argument: the function's default then silently replaced the user's setting)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from anydistill.losses import (
    CutMixScaleShiftInvariantLoss,
    DiceLoss,
    FocalLoss,
    KnowledgeDistillationLoss,
    SegmentationCrossEntropy,
    SoftmaxDiceLoss,
    SoftmaxFocalLoss,
    cutmix_ssi_loss,
    dice_loss,
    kd_loss,
    sigmoid_focal_loss,
    softmax_dice_loss,
    softmax_focal_loss,
)
from anydistill.losses.promptable import SamLoss, sam_loss


def _binary(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(2, 3, 5, 6, generator=g) > 0.6).double()
    valid = torch.rand(2, 3, 5, 6, generator=g) > 0.3
    return logits, targets, valid


def _multiclass(seed: int = 0, ignore: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[torch.rand(2, 5, 6, generator=g) < 0.25] = ignore
    return logits, target


# ---------------------------------------------------------------- sigmoid focal / dice


def test_focal_module_defaults_are_retinanets_and_valid_is_passed() -> None:
    logits, targets, valid = _binary()
    # RetinaNet's α = 0.25, γ = 2 (torchvision's defaults), mean over the elements
    ref = torchvision.ops.sigmoid_focal_loss(logits, targets).mean()
    assert FocalLoss()(logits, targets).item() == pytest.approx(ref.item(), rel=1e-12)
    expected = sigmoid_focal_loss(logits, targets, 0.25, 2.0, "mean", valid)
    assert FocalLoss()(logits, targets, valid).item() == pytest.approx(expected.item(), rel=1e-12)
    assert expected.item() != pytest.approx(ref.item(), rel=1e-3)  # the mask changes the value


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_dice_modules_pass_their_reduction(reduction: str) -> None:
    logits, targets, valid = _binary(seed=1)
    torch.testing.assert_close(
        DiceLoss(eps=0.5, reduction=reduction)(logits, targets, valid),  # type: ignore[arg-type]
        dice_loss(logits, targets, valid, 0.5, reduction),  # type: ignore[arg-type]
    )
    m_logits, target = _multiclass(seed=2, ignore=7)
    torch.testing.assert_close(
        SoftmaxDiceLoss(ignore_index=7, eps=0.5, reduction=reduction)(m_logits, target),  # type: ignore[arg-type]
        softmax_dice_loss(m_logits, target, 7, 0.5, reduction),  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- softmax focal


def test_softmax_focal_module_defaults_reduction_and_buffer() -> None:
    logits, target = _multiclass(seed=3)
    # defaults: γ = 2, no α, ignore 255, mean over counted pixels
    counted = target != 255
    log_pt = F.log_softmax(logits, 1).gather(1, target.clamp_max(3)[:, None])[:, 0]
    ref = (-((1 - log_pt.exp()) ** 2) * log_pt)[counted].mean()
    assert SoftmaxFocalLoss()(logits, target).item() == pytest.approx(ref.item(), rel=1e-12)
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    module = SoftmaxFocalLoss(alpha=alpha, gamma=1.5, reduction="none")
    torch.testing.assert_close(
        module(logits, target), softmax_focal_loss(logits, target, alpha, 1.5, reduction="none")
    )
    # the class weights follow .to(...) but are not saved: a checkpoint of a model holding the loss
    # keeps the keys it had without the loss's settings
    assert "alpha" not in module.state_dict()


# ---------------------------------------------------------------- knowledge distillation


def test_kd_module_defaults_are_t4_and_half_half() -> None:
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    expected = 0.5 * F.cross_entropy(s, y) + 0.5 * 16.0 * F.kl_div(
        F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean"
    )
    torch.testing.assert_close(KnowledgeDistillationLoss()(s, t, y), expected)


def test_kd_module_passes_valid_teacher_probs_and_ignore_index() -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    valid = torch.rand(2, 3, 3, generator=g) > 0.4
    module = KnowledgeDistillationLoss(temperature=2.0, alpha=0.25, ignore_index=-1)
    torch.testing.assert_close(module(s, t, valid=valid), kd_loss(s, t, 2.0, valid))
    probs = F.softmax(t, dim=1)
    torch.testing.assert_close(
        module(s, teacher_probs=probs), kd_loss(s, teacher_probs=probs, temperature=2.0)
    )
    y = torch.randint(0, 4, (2, 3, 3), generator=g)
    y[0, 0] = -1  # ignored by this module's ignore_index, not by the default 255
    expected = 0.75 * F.cross_entropy(s, y, ignore_index=-1) + 0.25 * kd_loss(s, t, 2.0)
    torch.testing.assert_close(module(s, t, y), expected)


def test_kd_module_accepts_exactly_the_valid_settings() -> None:
    for temperature, alpha in ((1.0, 0.0), (0.5, 1.0), (1e-3, 0.5)):  # α = 0: soft targets only
        KnowledgeDistillationLoss(temperature, alpha)
    for temperature, alpha in ((0.0, 0.5), (-1.0, 0.5), (4.0, -0.1), (4.0, 1.5)):
        with pytest.raises(ValueError, match="temperature" if temperature <= 0 else "alpha"):
            KnowledgeDistillationLoss(temperature, alpha)


# ---------------------------------------------------------------- SAM, CutMix SSI


def test_sam_loss_module_defaults_and_reduction() -> None:
    g = torch.Generator().manual_seed(6)
    logits = torch.randn((3, 3, 6, 5), generator=g, dtype=torch.float64) * 3
    gt = torch.rand((3, 6, 5), generator=g) > 0.5
    iou_pred = torch.rand((3, 3), generator=g, dtype=torch.float64)
    # SAM's 20 : 1 : 1 weights, RetinaNet's α, γ, the selected mask's IoU supervised
    ref = sam_loss(logits, gt, iou_pred, None, 20.0, 1.0, 1.0, "selected", 0.25, 2.0, "none")
    out = SamLoss()(logits, gt, iou_pred, reduction="none")
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert out.loss.shape == (3,)


def test_cutmix_ssi_module_passes_eps() -> None:
    g = torch.Generator().manual_seed(7)
    pred = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64)
    ta, tb = torch.rand(2, 2, 1, 6, 6, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    mask[:, :, 1:4, 2:5] = True
    # an eps above the targets' mean absolute deviation (≈ 0.25) changes the median normalisation
    module = CutMixScaleShiftInvariantLoss(alignment="median", trim=0.1, eps=2.0)
    out = module(pred, ta, tb, None, None, mask)
    torch.testing.assert_close(out, cutmix_ssi_loss(pred, ta, tb, None, None, mask, "median", 0.1, 2.0))
    assert not math.isclose(out.item(), cutmix_ssi_loss(pred, ta, tb, None, None, mask, "median", 0.1))


def test_segmentation_cross_entropy_defaults_and_weight_buffer() -> None:
    logits, target = _multiclass(seed=8)
    ref = F.cross_entropy(logits, target, ignore_index=255)  # no smoothing, no weights
    assert SegmentationCrossEntropy()(logits, target).item() == pytest.approx(ref.item(), rel=1e-12)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    module = SegmentationCrossEntropy(weight=weight)
    assert "weight" not in module.state_dict()  # settings, not learned state: checkpoints stay as they were


def test_function_defaults_are_the_papers() -> None:
    logits, target = _multiclass(seed=9)
    # RetinaNet's γ = 2 for the softmax focal loss too
    ref = softmax_focal_loss(logits, target, gamma=2.0)
    assert softmax_focal_loss(logits, target).item() == pytest.approx(ref.item(), rel=1e-12)
    g = torch.Generator().manual_seed(10)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert kd_loss(s, t).item() == pytest.approx(kd_loss(s, t, temperature=4.0).item(), rel=1e-12)
