"""classification_kd_loss: Hinton's T²-scaled KL to softened targets + (1 − α) cross-entropy, checked
against an explicit formula, ``kd_loss`` and ``F.cross_entropy``; CutMix-mixed targets; argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anydistill.losses import ClassificationKDLoss, classification_kd_loss, kd_loss, soft_targets


def _explicit(z_s, z_t, y, T, alpha, eps=0.0):
    """Written out per sample in float64: α · T² · Σ q (log q − log p) + (1 − α) · (−Σ ỹ log softmax(z))."""
    z_s, z_t = z_s.double(), z_t.double()
    K = z_s.shape[1]
    total = 0.0
    for b in range(z_s.shape[0]):
        q = torch.exp(z_t[b] / T) / torch.exp(z_t[b] / T).sum()
        p = torch.exp(z_s[b] / T) / torch.exp(z_s[b] / T).sum()
        kl = (q * (q.log() - p.log())).sum()
        smooth = (1 - eps) * F.one_hot(y[b], K).double() + eps / K
        ce = -(smooth * torch.log_softmax(z_s[b], 0)).sum()
        total = total + alpha * T**2 * kl + (1 - alpha) * ce
    return total / z_s.shape[0]


@pytest.mark.parametrize(
    ("T", "alpha", "eps"), [(4.0, 0.9, 0.0), (1.0, 0.5, 0.1), (2.5, 0.0, 0.0), (8.0, 1.0, 0.2)]
)
def test_matches_the_written_out_formula(T, alpha, eps):
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    got = classification_kd_loss(z_s, soft_targets(z_t, T), F.one_hot(y, 5).float(), T, alpha, eps)
    assert got.item() == pytest.approx(_explicit(z_s, z_t, y, T, alpha, eps).item(), rel=1e-5)


def test_its_parts_are_kd_loss_and_cross_entropy():
    g = torch.Generator().manual_seed(1)
    z_s, z_t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    kd = classification_kd_loss(z_s, soft_targets(z_t, 4.0), None, temperature=4.0)
    torch.testing.assert_close(kd, kd_loss(z_s, z_t, temperature=4.0))  # T² · KL, as Hinton's
    ce = classification_kd_loss(z_s, None, F.one_hot(y, 10).float(), label_smoothing=0.1)
    torch.testing.assert_close(ce, F.cross_entropy(z_s, y, label_smoothing=0.1))
    both = ClassificationKDLoss(4.0, 0.3)(z_s, soft_targets(z_t, 4.0), F.one_hot(y, 10).float())
    torch.testing.assert_close(both, 0.3 * kd + 0.7 * F.cross_entropy(z_s, y))


def test_the_gradient_scale_does_not_depend_on_T():
    """The T² factor: for large T the soft term's gradient tends to (z_s − z_t) / (K·B) whatever T [Hinton §2.1]."""
    g = torch.Generator().manual_seed(2)
    z_t = torch.randn(4, 6, generator=g)
    norms = []
    for T in (10.0, 100.0):
        z_s = torch.randn(4, 6, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
        classification_kd_loss(z_s, soft_targets(z_t, T), None, T).backward()
        norms.append(z_s.grad.norm().item())
    assert norms[0] == pytest.approx(norms[1], rel=0.02)


def test_mixed_targets_give_the_area_weighted_gradient():
    """A CutMix mixture λ·q_a + (1 − λ)·q_b has the gradient of λ·KD(q_a) + (1 − λ)·KD(q_b)."""
    g = torch.Generator().manual_seed(4)
    z_a, z_b = torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g)
    lam, T = 0.3, 4.0
    q = lam * soft_targets(z_a, T) + (1 - lam) * soft_targets(z_b, T)
    z1 = torch.randn(1, 5, generator=g).requires_grad_(True)
    z2 = z1.detach().clone().requires_grad_(True)
    classification_kd_loss(z1, q, None, T).backward()
    (lam * kd_loss(z2, z_a, T) + (1 - lam) * kd_loss(z2, z_b, T)).backward()
    torch.testing.assert_close(z1.grad, z2.grad)


def test_teacher_and_student_are_not_interchangeable():
    """KL(q ‖ p) is not symmetric: swapping the roles changes the value (a swap would be caught)."""
    z_s, z_t = torch.tensor([[3.0, 0.0, -2.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    right = classification_kd_loss(z_s, soft_targets(z_t, 2.0), None, 2.0)
    swapped = classification_kd_loss(z_t, soft_targets(z_s, 2.0), None, 2.0)
    assert right.item() == pytest.approx(_explicit(z_s, z_t, torch.tensor([0]), 2.0, 1.0).item(), rel=1e-6)
    assert abs(right.item() - swapped.item()) > 0.05


def test_zero_target_probabilities_add_nothing_and_the_targets_are_detached():
    z_s = torch.randn(2, 3, requires_grad=True)
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], requires_grad=True)
    loss = classification_kd_loss(z_s, q, None, 1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert q.grad is None and z_s.grad is not None


def test_bad_arguments():
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="give teacher_probs"):
        classification_kd_loss(z)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        classification_kd_loss(z[None], target_probs=z[None])
    with pytest.raises(ValueError, match="teacher_probs must be"):
        classification_kd_loss(z, torch.ones(2, 4) / 4)
    with pytest.raises(ValueError, match="temperature"):
        classification_kd_loss(z, torch.ones(2, 3) / 3, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        ClassificationKDLoss(alpha=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationKDLoss(label_smoothing=1.0)
