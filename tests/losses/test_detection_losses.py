"""Dense one-stage classification losses: focal (parity with torchvision), plain and hard-negative CE."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from anydistill.losses.detection import DenseClassificationLoss, dense_classification_loss


def _anchors(a: int = 50, k: int = 4, positives: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(a, k, generator=g) * 3
    targets = torch.zeros(a, k)
    targets[torch.arange(positives), torch.randint(0, k, (positives,), generator=g)] = 1.0
    valid = torch.rand(a, generator=g) > 0.2
    valid[:positives] = True
    return logits, targets, valid


def _bce_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−[y log σ(z) + (1 − y) log(1 − σ(z))] summed over classes, written out (not torch's BCE)."""
    p = torch.sigmoid(logits.double())
    y = targets.double()
    return -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).sum(1)


def test_focal_is_torchvision_sigmoid_focal_loss_over_valid_anchors() -> None:
    logits, targets, valid = _anchors()
    expected = torchvision.ops.sigmoid_focal_loss(logits[valid], targets[valid], 0.25, 2.0, reduction="sum")
    torch.testing.assert_close(dense_classification_loss(logits, targets, valid), expected)
    # and the formula itself, FL = −α_t (1 − p_t)^γ log p_t, computed here independently
    p = torch.sigmoid(logits.double())
    pt = torch.where(targets > 0, p, 1 - p)
    at = torch.where(targets > 0, 0.25, 0.75)
    manual = (-at * (1 - pt) ** 2 * torch.log(pt))[valid].sum()
    torch.testing.assert_close(dense_classification_loss(logits, targets, valid).double(), manual)


def test_plain_ce_counts_every_valid_anchor_at_full_weight() -> None:
    logits, targets, valid = _anchors()
    expected = _bce_rows(logits, targets)[valid].sum()
    torch.testing.assert_close(
        dense_classification_loss(logits, targets, valid, kind="ce").double(), expected
    )
    assert dense_classification_loss(logits, targets, valid, kind="ce") > dense_classification_loss(
        logits, targets, valid
    )


@pytest.mark.parametrize(
    ("positives", "ratio", "kept_negatives"), [(5, 3.0, 15), (5, 1.0, 5), (0, 3.0, 1), (5, 100.0, None)]
)
def test_hard_negative_mining_keeps_the_positives_and_the_hardest_negatives(
    positives, ratio, kept_negatives
) -> None:
    logits, targets, valid = _anchors(positives=positives)
    rows = _bce_rows(logits, targets)
    pos = valid & (targets.sum(1) > 0)
    neg_losses = sorted(rows[valid & ~pos].tolist(), reverse=True)
    n = len(neg_losses) if kept_negatives is None else kept_negatives  # capped by the negatives there are
    expected = rows[pos].sum() + sum(neg_losses[:n])
    got = dense_classification_loss(logits, targets, valid, kind="ce_hard_negatives", neg_pos_ratio=ratio)
    assert math.isclose(float(got), float(expected), rel_tol=1e-5)


def test_gradients_reach_only_counted_anchors() -> None:
    logits, targets, valid = _anchors()
    for kind in ("focal", "ce", "ce_hard_negatives"):
        z = logits.clone().requires_grad_(True)
        DenseClassificationLoss(kind)(z, targets, valid).backward()
        assert z.grad[~valid].abs().sum() == 0 and z.grad[valid].abs().sum() > 0
    z = logits.clone().requires_grad_(True)
    dense_classification_loss(z, targets, valid, kind="ce_hard_negatives", neg_pos_ratio=1.0).backward()
    assert int((z.grad.abs().sum(1) > 0).sum()) == 5 + 5  # five positives, five hardest negatives


def test_argument_errors() -> None:
    logits, targets, valid = _anchors()
    with pytest.raises(ValueError, match="kind must be one of focal, ce, ce_hard_negatives"):
        dense_classification_loss(logits, targets, valid, kind="ohem")
    with pytest.raises(ValueError, match="kind must be one of"):
        DenseClassificationLoss("softmax")
    with pytest.raises(ValueError, match=r"expected logits and targets \(A, K\)"):
        dense_classification_loss(logits, targets[:, :2], valid)
    with pytest.raises(ValueError, match="neg_pos_ratio must be > 0"):
        dense_classification_loss(logits, targets, valid, kind="ce_hard_negatives", neg_pos_ratio=0)
