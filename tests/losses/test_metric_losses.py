"""Tests of the metric-learning losses (margin contrastive, triplet with batch-hard, semi-hard and
all-triplet mining) against hand-computed values and brute force over every triplet."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from anydistill.losses import MarginContrastiveLoss, TripletLoss, margin_contrastive_loss, triplet_loss

# ---------------------------------------------------------------- margin contrastive (Hadsell et al.)


def test_margin_contrastive_on_three_pairs_by_hand() -> None:
    x1 = torch.zeros(3, 2, dtype=torch.float64)
    x2 = torch.tensor([[0.3, 0.4], [2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)  # d = 0.5, 2, 0.5
    same = torch.tensor([True, False, False])
    # similar: d² = 0.25; dissimilar beyond the margin: 0; dissimilar inside it: (1 − 0.5)² = 0.25
    assert margin_contrastive_loss(x1, x2, same).item() == pytest.approx((0.25 + 0.0 + 0.25) / 3, rel=1e-12)
    # margin 3: the second pair is inside it, (3 − 2)² = 1; the third (3 − 0.5)² = 6.25
    out = MarginContrastiveLoss(margin=3.0)(x1, x2, same.long())
    assert out.item() == pytest.approx((0.25 + 1.0 + 6.25) / 3, rel=1e-12)
    # all similar: the mean squared distance
    assert margin_contrastive_loss(x1, x2, torch.ones(3)).item() == pytest.approx((0.25 + 4 + 0.25) / 3)


def test_margin_contrastive_matches_a_loop_with_soft_labels() -> None:
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    x2 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.rand(6, generator=g, dtype=torch.float64)
    expected = 0.0
    for n in range(6):
        d = math.sqrt(sum((x1[n, j].item() - x2[n, j].item()) ** 2 for j in range(4)))
        expected += y[n].item() * d * d + (1 - y[n].item()) * max(0.0, 2.5 - d) ** 2
    assert margin_contrastive_loss(x1, x2, y, margin=2.5).item() == pytest.approx(expected / 6, rel=1e-12)


def test_margin_contrastive_gradients() -> None:
    x1 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    x2 = torch.tensor([[0.6, 0.8], [1.0, 1.0], [5.0, 0.0]], dtype=torch.float64, requires_grad=True)
    same = torch.tensor([1, 0, 0])  # pair 1: identical but dissimilar (d = 0), pair 2 beyond the margin
    margin_contrastive_loss(x1, x2, same).backward()
    assert torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()
    # similar pair: d(d²)/dx1 = 2 (x1 − x2) / N
    torch.testing.assert_close(x1.grad[0], 2 * (x1[0] - x2[0]).detach() / 3)
    assert x1.grad[2].abs().sum() == 0  # beyond the margin: no gradient
    torch.testing.assert_close(x2.grad, -x1.grad)


def test_margin_contrastive_validation_and_half_precision() -> None:
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="same shape"):
        margin_contrastive_loss(x, torch.randn(3, 5), torch.ones(3))
    with pytest.raises(ValueError, match=r"same must be \(N,\)"):
        margin_contrastive_loss(x, x, torch.ones(4))
    with pytest.raises(ValueError, match="margin"):
        MarginContrastiveLoss(margin=0.0)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    same = torch.rand(16, generator=g) > 0.5
    ref = margin_contrastive_loss(a, b, same, margin=4.0)
    for dtype in (torch.float16, torch.bfloat16):
        out = margin_contrastive_loss(a.to(dtype), b.to(dtype), same, margin=4.0)
        assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=2e-2)


# ---------------------------------------------------------------- triplet: brute force over triplets


def _distances(x: np.ndarray, squared: bool) -> np.ndarray:
    n = len(x)
    d = np.zeros((n, n))
    for i, j in itertools.product(range(n), range(n)):
        d[i, j] = np.sum((x[i] - x[j]) ** 2) if squared else math.sqrt(np.sum((x[i] - x[j]) ** 2))
    return d


def _brute_batch_hard(x: np.ndarray, y: np.ndarray, m: float, squared: bool) -> float:
    """max over an anchor's triplets of the hinge = the hinge of its hardest positive and negative."""
    d = _distances(x, squared)
    per_anchor = []
    for a in range(len(x)):
        hinges = [
            max(0.0, d[a, p] - d[a, n] + m)
            for p in range(len(x))
            for n in range(len(x))
            if p != a and y[p] == y[a] and y[n] != y[a]
        ]
        if hinges:
            per_anchor.append(max(hinges))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def _brute_semi_hard(x: np.ndarray, y: np.ndarray, m: float, squared: bool) -> float:
    """TF-Addons' triplet_semihard_loss: per (anchor, positive), the nearest negative farther than the
    positive, else the farthest negative; mean of the hinge over the pairs (anchors with a negative)."""
    d = _distances(x, squared)
    hinges = []
    for a in range(len(x)):
        negatives = [d[a, n] for n in range(len(x)) if y[n] != y[a]]
        if not negatives:
            continue
        for p in range(len(x)):
            if p == a or y[p] != y[a]:
                continue
            farther = [dn for dn in negatives if dn > d[a, p]]
            chosen = min(farther) if farther else max(negatives)
            hinges.append(max(0.0, d[a, p] - chosen + m))
    return float(np.mean(hinges)) if hinges else 0.0


def _brute_all(x: np.ndarray, y: np.ndarray, m: float, squared: bool) -> float:
    d = _distances(x, squared)
    active = []
    for a, p, n in itertools.product(range(len(x)), repeat=3):
        if p != a and y[p] == y[a] and y[n] != y[a]:
            loss = d[a, p] - d[a, n] + m
            if loss > 0:
                active.append(loss)
    return float(np.mean(active)) if active else 0.0


BRUTE = {"batch_hard": _brute_batch_hard, "semi_hard": _brute_semi_hard, "all": _brute_all}


def _batch(seed: int, n: int = 12, d: int = 5, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, classes, (n,), generator=g)
    y[-1] = classes  # a label of its own: an anchor without a positive
    return x, y


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "all"])
@pytest.mark.parametrize("squared", [False, True])
def test_triplet_matches_brute_force(mining: str, squared: bool) -> None:
    for seed, margin in ((0, 0.2), (1, 0.5), (2, 1.0)):
        x, y = _batch(seed)
        expected = BRUTE[mining](x.numpy(), y.numpy(), margin, squared)
        assert expected > 0
        out = triplet_loss(x, y, margin, mining, squared)  # type: ignore[arg-type]
        assert out.item() == pytest.approx(expected, rel=1e-10)
        module = TripletLoss(margin, mining, squared)  # type: ignore[arg-type]
        assert module(x, y).item() == pytest.approx(expected, rel=1e-10)


def test_triplet_modes_differ_on_one_batch() -> None:
    """A batch where the three minings pick different negatives (so swapping them fails a test)."""
    x, y = _batch(3)
    minings = ("batch_hard", "semi_hard", "all")
    values = {mining: triplet_loss(x, y, 0.3, mining).item() for mining in minings}  # type: ignore[arg-type]
    assert len({round(v, 6) for v in values.values()}) == 3
    assert values["batch_hard"] >= values["semi_hard"]


def test_semi_hard_picks_the_nearest_negative_farther_than_the_positive() -> None:
    """Points on a line, margin 0.5; per (anchor, positive) the chosen negative by hand."""
    x = torch.tensor([[0.0], [1.0], [0.5], [1.2], [1.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1])
    hinges = [
        1.0 - 1.2 + 0.5,  # a=0, p=1 (d 1): negatives 0.5, 1.2, 1.5; nearest farther 1.2
        1.0 - 0.5 + 0.5,  # a=1, p=0 (d 1): negatives 0.5, 0.2, 0.5; none farther: the farthest 0.5
        0.7 - 0.5 + 0.5,  # a=2, p=3 (d 0.7): negatives 0.5, 0.5; none farther
        1.0 - 0.5 + 0.5,  # a=2, p=4 (d 1)
        0.0,  # a=3, p=2 (d 0.7): negatives 1.2, 0.2; 1.2 → 0.7 − 1.2 + 0.5 = 0
        0.0,  # a=3, p=4 (d 0.3): 1.2 → −0.4
        0.0,  # a=4, p=2 (d 1): negatives 1.5, 0.5; 1.5 → 0
        0.3 - 0.5 + 0.5,  # a=4, p=3 (d 0.3): 0.5 is the nearest farther (batch-hard would take it too)
    ]
    expected = sum(hinges) / len(hinges)
    assert expected == pytest.approx(3.3 / 8)
    assert _brute_semi_hard(x.numpy(), y.numpy(), 0.5, False) == pytest.approx(expected, rel=1e-12)
    assert triplet_loss(x, y, 0.5, "semi_hard").item() == pytest.approx(expected, rel=1e-12)


def test_triplet_without_valid_triplets_is_zero_with_a_graph() -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for mining in ("batch_hard", "semi_hard", "all"):
        # one label (no negatives; TF-Addons' semi-hard would give m + mean d_ap) / all labels distinct
        for labels in (torch.zeros(4, dtype=torch.long), torch.arange(4)):
            out = triplet_loss(x, labels, 0.2, mining)  # type: ignore[arg-type]
            assert out.item() == 0.0
            (grad,) = torch.autograd.grad(out, x)
            assert torch.equal(grad, torch.zeros_like(x))
        # the anchors of a singleton label are skipped, the others count
        y = torch.tensor([0, 0, 1, 2])
        out = triplet_loss(x, y, 5.0, mining)  # type: ignore[arg-type]
        assert out.item() == pytest.approx(
            BRUTE[mining](x.detach().numpy(), y.numpy(), 5.0, False), rel=1e-12
        )
        assert out.item() > 0


def test_triplet_gradients_are_finite_with_duplicates() -> None:
    x, y = _batch(4, n=8)
    x = torch.cat([x, x[:2]]).requires_grad_(True)  # exact duplicates: zero distances off the diagonal
    y = torch.cat([y, y[:1], torch.tensor([99])])  # one duplicate with its label, one with another
    for mining in ("batch_hard", "semi_hard", "all"):
        out = triplet_loss(x, y, 0.5, mining)  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(out, x)
        assert out.item() > 0 and torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert out.item() == pytest.approx(
            BRUTE[mining](x.detach().numpy(), y.numpy(), 0.5, False), rel=1e-10
        )


def test_batch_hard_gradient_reaches_only_the_hardest_pairs() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.5], [3.0, 3.0]], dtype=torch.float64)
    x.requires_grad_(True)
    y = torch.tensor([0, 0, 0, 1, 1])
    out = triplet_loss(x, y, 1.0, "batch_hard")
    assert out.item() == pytest.approx(
        _brute_batch_hard(x.detach().numpy(), y.numpy(), 1.0, False), rel=1e-12
    )
    out.backward()
    assert torch.isfinite(x.grad).all()


def test_triplet_validation_and_half_precision() -> None:
    x, y = _batch(5)
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(x, y, mining="hardest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="semihard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"labels must be \(N,\)"):
        triplet_loss(x, y[:-1])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        triplet_loss(x[0], y[:1])
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-0.1)
    assert TripletLoss().margin == 0.2 and TripletLoss().mining == "batch_hard"
    for mining in ("batch_hard", "semi_hard", "all"):
        ref = triplet_loss(x, y, 0.2, mining)  # type: ignore[arg-type]
        for dtype in (torch.float16, torch.bfloat16):
            out = triplet_loss(x.to(dtype), y, 0.2, mining)  # type: ignore[arg-type]
            assert out.dtype == torch.float32 and torch.isfinite(out)
            assert out.item() == pytest.approx(ref.item(), rel=5e-2, abs=1e-2)
