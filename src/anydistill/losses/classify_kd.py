"""Classification distillation (Hinton et al. [1]): :func:`classification_kd_loss` /
:class:`ClassificationKDLoss`, soft targets (possibly CutMix-mixed [2]) plus hard labels.

Unlike :func:`anydistill.losses.kd.kd_loss`, which softens the targets it is given, the soft targets
here are already the teacher's distribution *at temperature T*, ``q = softmax(z_t / T)``: a CutMix mixture
of two images' targets is then their mixture at ``T``, ``λ·q_a + (1 − λ)·q_b``, whose KL gradient equals
the area-weighted sum of the two images' KD gradients (KL is linear in its first argument up to the
target's entropy, a constant).

- [1] Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
  https://arxiv.org/abs/1503.02531
- [2] Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
  Features", ICCV 2019, https://arxiv.org/abs/1905.04899
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassificationKDLoss", "classification_kd_loss", "soft_targets"]


def soft_targets(teacher_logits: Tensor, temperature: float) -> Tensor:
    """``softmax(z_t / T)`` over the classes: logits ``(B, K)`` → probabilities ``(B, K)`` (float32)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.softmax(teacher_logits.detach().float() / temperature, dim=1)


def classification_kd_loss(
    student_logits: Tensor,
    teacher_probs: Tensor | None = None,
    target_probs: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Hinton's distillation loss for a classifier, with optional hard labels:

        L = α · T² · mean_b KL(q_b ‖ softmax(z_b / T)) + (1 − α) · mean_b CE(z_b, ỹ_b)
        KL(q ‖ p) = Σ_k q_k (log q_k − log p_k),   CE(z, ỹ) = −Σ_k ỹ_k log softmax(z)_k,
        ỹ = (1 − ε) · y + ε / K   (label smoothing ε)

    where ``z`` are the student's logits, ``q`` the teacher's probabilities at temperature ``T``
    (:func:`soft_targets`, or a CutMix mixture of them) and ``y`` the label distribution (one-hot, or a
    CutMix mixture of one-hots). The ``T²`` keeps the soft term's gradient scale independent of ``T`` [1].
    With ``target_probs=None`` the loss is the KD term alone (``α`` unused: unlabeled images); with
    ``teacher_probs=None`` the cross-entropy alone (supervised training). With a one-hot ``y`` the CE
    term equals ``F.cross_entropy(z, labels, label_smoothing=ε)``; with ``q = softmax(z_t / T)`` the KD
    term equals ``kd_loss(z, z_t, T)``.

    Args:
        student_logits: ``(B, K)``.
        teacher_probs: ``(B, K)``, rows summing to 1 (detached); a zero stays zero (``0 · log 0 = 0``).
        target_probs: ``(B, K)``, rows summing to 1.
        temperature: ``T > 0``.
        alpha: ``α`` in ``[0, 1]``, the weight of the KD term when both are given.
        label_smoothing: ``ε`` in ``[0, 1)``.

    Returns:
        scalar loss.
    """
    if teacher_probs is None and target_probs is None:
        raise ValueError("give teacher_probs, target_probs or both")
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be (B, K), got {tuple(student_logits.shape)}")
    for name, t in (("teacher_probs", teacher_probs), ("target_probs", target_probs)):
        if t is not None and t.shape != student_logits.shape:
            raise ValueError(f"{name} must be {tuple(student_logits.shape)}, got {tuple(t.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    z = student_logits.float()  # (B, K); autocast's half precision loses too much in the sums
    kd = ce = None
    if teacher_probs is not None:
        q = teacher_probs.detach().float()  # (B, K)
        log_p = F.log_softmax(z / temperature, dim=1)  # (B, K)
        kl = (torch.xlogy(q, q) - q * log_p).sum(dim=1)  # (B,)
        kd = kl.mean() * temperature**2
    if target_probs is not None:
        ce = F.cross_entropy(z, target_probs.detach().float(), label_smoothing=label_smoothing)
    if kd is None:
        assert ce is not None
        return ce
    if ce is None:
        return kd
    return alpha * kd + (1.0 - alpha) * ce


class ClassificationKDLoss(nn.Module):
    """:func:`classification_kd_loss` with fixed ``temperature``, ``alpha`` and ``label_smoothing``.

    Shapes: ``student_logits`` ``(B, K)``; ``teacher_probs`` and ``target_probs`` ``(B, K)`` probabilities.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.temperature = temperature
        self.alpha = alpha
        self.label_smoothing = label_smoothing

    def forward(
        self, student_logits: Tensor, teacher_probs: Tensor | None = None, target_probs: Tensor | None = None
    ) -> Tensor:
        return classification_kd_loss(
            student_logits, teacher_probs, target_probs, self.temperature, self.alpha, self.label_smoothing
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, label_smoothing={self.label_smoothing}"
