"""SAM's multi-mask loss against an independent per-mask computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anydistill.losses.promptable import SamLoss, binary_iou, mask_ious, sam_loss


def _focal_np(logits: np.ndarray, target: np.ndarray, valid: np.ndarray, alpha=0.25, gamma=2.0) -> float:
    p = 1.0 / (1.0 + np.exp(-logits))
    ce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    loss = a_t * (1 - p_t) ** gamma * ce
    return float(loss[valid].sum() / max(valid.sum(), 1))


def _dice_np(logits: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    p = 1.0 / (1.0 + np.exp(-logits)) * valid
    g = target * valid
    return float(1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1))


def _iou_np(logits: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    pred = (logits > 0) & valid
    g = target.astype(bool) & valid
    union = (pred | g).sum()
    return 1.0 if union == 0 else float((pred & g).sum() / union)


def _reference(logits, gt, iou_pred, valid, supervision="selected"):
    """Per prompt: (loss, best index, focal, dice, iou term) computed mask by mask in float64 numpy."""
    out = []
    for b in range(logits.shape[0]):
        per_mask, ious = [], []
        for m in range(logits.shape[1]):
            f = _focal_np(logits[b, m], gt[b], valid[b])
            d = _dice_np(logits[b, m], gt[b], valid[b])
            per_mask.append((20 * f + d, f, d))
            ious.append(_iou_np(logits[b, m], gt[b], valid[b]))
        best = int(np.argmin([x[0] for x in per_mask]))
        errs = (iou_pred[b] - np.array(ious)) ** 2
        iou_term = errs[best] if supervision == "selected" else errs.mean()
        out.append((per_mask[best][0] + iou_term, best, per_mask[best][1], per_mask[best][2], iou_term))
    return out


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((4, 3, 12, 10), generator=g, dtype=torch.float64) * 3
    gt = torch.rand((4, 12, 10), generator=g) > 0.6
    iou_pred = torch.rand((4, 3), generator=g, dtype=torch.float64)
    valid = torch.ones((4, 12, 10), dtype=torch.bool)
    valid[:, 9:, :] = False  # bottom padding
    valid[1, :, 7:] = False
    return logits, gt, iou_pred, valid


@pytest.mark.parametrize("supervision", ["selected", "all"])
def test_sam_loss_matches_independent_per_mask_computation(inputs, supervision) -> None:
    logits, gt, iou_pred, valid = inputs
    out = sam_loss(logits, gt, iou_pred, valid, iou_supervision=supervision, reduction="none")
    ref = _reference(
        logits.numpy(), gt.numpy().astype(np.float64), iou_pred.numpy(), valid.numpy(), supervision
    )
    assert out.best.tolist() == [r[1] for r in ref]
    assert out.loss.tolist() == pytest.approx([r[0] for r in ref], rel=1e-6)
    assert out.focal.tolist() == pytest.approx([r[2] for r in ref], rel=1e-6)
    assert out.dice.tolist() == pytest.approx([r[3] for r in ref], rel=1e-6)
    assert out.iou.tolist() == pytest.approx([r[4] for r in ref], rel=1e-6, abs=1e-12)
    mean = sam_loss(logits, gt, iou_pred, valid, iou_supervision=supervision)
    assert mean.loss.item() == pytest.approx(np.mean([r[0] for r in ref]), rel=1e-6)
    module = SamLoss(iou_supervision=supervision)(logits, gt, iou_pred, valid)
    assert module.loss.item() == pytest.approx(mean.loss.item(), rel=1e-12)


def test_weights_scale_terms(inputs) -> None:
    logits, gt, iou_pred, valid = inputs
    base = sam_loss(logits, gt, iou_pred, valid, reduction="none")
    other = sam_loss(
        logits, gt, iou_pred, valid, focal_weight=0.0, dice_weight=1.0, iou_weight=0.0, reduction="none"
    )
    # With only dice weighted, the selection is by dice: the loss is the smallest dice over masks.
    dice_all = torch.stack(
        [
            sam_loss(logits[:, m : m + 1], gt, iou_pred[:, m : m + 1], valid, reduction="none").dice
            for m in range(3)
        ],
        1,
    )
    assert torch.allclose(other.loss, dice_all.min(dim=1).values)
    assert torch.allclose(base.loss, 20 * base.focal + base.dice + base.iou)


def test_min_is_picked_and_gradient_flows_only_through_it() -> None:
    gt = torch.zeros((2, 8, 8), dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    good = torch.where(gt, 8.0, -8.0)  # (2, 8, 8)
    logits = torch.stack([-good, good, torch.zeros_like(good)], dim=1).clone()  # mask 1 is right
    logits[1] = logits[1][[2, 0, 1]]  # for prompt 1, the right mask is index 2
    logits.requires_grad_(True)
    iou_pred = torch.full((2, 3), 0.5, requires_grad=True)
    out = sam_loss(logits, gt, iou_pred, iou_weight=0.0)
    assert out.best.tolist() == [1, 2]
    out.loss.backward()
    grad_norm = logits.grad.flatten(2).abs().sum(-1)  # (2, 3)
    assert grad_norm[0, 1] > 0 and grad_norm[1, 2] > 0
    assert grad_norm[0, [0, 2]].eq(0).all() and grad_norm[1, [0, 1]].eq(0).all()
    assert out.actual_iou[0].tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_iou_supervision_selected_vs_all_gradients() -> None:
    gt = torch.zeros((1, 6, 6), dtype=torch.bool)
    gt[0, 1:4, 1:4] = True
    logits = torch.stack([torch.where(gt[0], 5.0, -5.0), -torch.ones(6, 6) * 5, torch.ones(6, 6) * 5])[None]
    iou_pred = torch.full((1, 3), 0.3, requires_grad=True)
    sam_loss(logits, gt, iou_pred, iou_supervision="selected").loss.backward()
    assert iou_pred.grad[0, 0] != 0 and iou_pred.grad[0, 1:].eq(0).all()
    iou_pred.grad = None
    out = sam_loss(logits, gt, iou_pred, iou_supervision="all")
    out.loss.backward()
    actual = torch.tensor([1.0, 0.0, 9 / 36])
    assert torch.allclose(out.actual_iou[0], actual)
    assert torch.allclose(iou_pred.grad[0], 2 * (0.3 - actual) / 3)
    assert out.iou.item() == pytest.approx(((0.3 - actual) ** 2).mean().item())


def test_padding_pixels_do_not_count() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn((2, 3, 10, 10), generator=g)
    gt = torch.rand((2, 10, 10), generator=g) > 0.5
    iou_pred = torch.rand((2, 3), generator=g)
    valid = torch.zeros((2, 10, 10), dtype=torch.bool)
    valid[:, :7, :6] = True
    changed = logits.clone()
    changed[..., 7:, :] = 50.0
    changed[..., :, 6:] = -50.0
    gt2 = gt.clone()
    gt2[:, 8:, :] = ~gt2[:, 8:, :]
    a = sam_loss(logits, gt, iou_pred, valid, reduction="none")
    b = sam_loss(changed, gt2, iou_pred, valid, reduction="none")
    assert torch.allclose(a.loss, b.loss) and torch.equal(a.best, b.best)
    cropped = sam_loss(logits[..., :7, :6], gt[:, :7, :6], iou_pred, reduction="none")
    assert torch.allclose(a.loss, cropped.loss)


def test_a_prompt_with_one_valid_pixel() -> None:
    """The focal term is a mean over the valid pixels, also when there is only one."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn((2, 3, 5, 4), generator=g, dtype=torch.float64) * 3
    gt = torch.rand((2, 5, 4), generator=g) > 0.5
    iou_pred = torch.rand((2, 3), generator=g, dtype=torch.float64)
    valid = torch.zeros((2, 5, 4), dtype=torch.bool)
    valid[0, 1, 2] = True
    valid[1] = True
    out = sam_loss(logits, gt, iou_pred, valid, reduction="none")
    ref = _reference(logits.numpy(), gt.numpy(), iou_pred.numpy(), valid.numpy())
    for b in range(2):
        assert out.focal[b].item() == pytest.approx(ref[b][2], rel=1e-10)
        assert out.loss[b].item() == pytest.approx(ref[b][0], rel=1e-6)  # IoUs are float32


def test_empty_and_full_ground_truth() -> None:
    empty = torch.zeros((1, 8, 8), dtype=torch.bool)
    full = torch.ones((1, 8, 8), dtype=torch.bool)
    neg = torch.full((1, 3, 8, 8), -30.0)
    neg[0, 1] = 30.0
    out = sam_loss(neg, empty, torch.tensor([[1.0, 0.0, 1.0]]), reduction="none")
    assert torch.isfinite(out.loss).all()
    assert out.best.item() in (0, 2) and out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert out.actual_iou[0].tolist() == [1.0, 0.0, 1.0]  # empty vs empty counts as exact
    out = sam_loss(-neg, full, torch.tensor([[1.0, 0.0, 1.0]]), reduction="none")
    assert out.best.item() in (0, 2) and out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert out.actual_iou[0].tolist() == [1.0, 0.0, 1.0]


def test_mask_ious_against_numpy() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn((3, 2, 9, 7), generator=g)
    gt = torch.rand((3, 9, 7), generator=g) > 0.5
    valid = torch.rand((3, 9, 7), generator=g) > 0.2
    ious = mask_ious(logits, gt, valid)
    for b in range(3):
        for m in range(2):
            assert ious[b, m].item() == pytest.approx(
                _iou_np(logits[b, m].numpy(), gt[b].numpy(), valid[b].numpy())
            )


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="gt"):
        sam_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="iou_pred"):
        sam_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="iou_supervision"):
        SamLoss(iou_supervision="best")  # type: ignore[arg-type]


def test_binary_iou_of_single_and_stacked_masks() -> None:
    """Any ``(..., H, W)``: one (H, W) mask pair, or (N, H, W); a union of one pixel divides by one."""
    pred = torch.zeros(5, 4, dtype=torch.bool)
    gt = torch.zeros(5, 4, dtype=torch.bool)
    pred[0, 0] = gt[0, 0] = True  # the same single pixel
    assert binary_iou(pred, gt).item() == 1.0
    pred[1:3, 1:3] = True  # 4 more predicted pixels -> 1 / 5
    assert binary_iou(pred, gt).item() == pytest.approx(1 / 5)
    stacked = binary_iou(torch.stack([pred, gt, ~gt]), torch.stack([gt, gt, gt]))  # (3,)
    assert stacked.tolist() == pytest.approx([1 / 5, 1.0, 0.0])
    with pytest.raises(ValueError, match="H, W"):
        binary_iou(pred[0], gt[0])
