"""Knowledge distillation (Hinton et al. [1]): :func:`kd_loss` / :class:`KnowledgeDistillationLoss`.

The temperature-softened teacher distribution is the target, optionally combined with hard-label
cross-entropy.

- [1] Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
  https://arxiv.org/abs/1503.02531
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.losses.segmentation import _upcast, cross_entropy

__all__ = ["kd_loss", "KnowledgeDistillationLoss"]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    temperature: float = 4.0,
    valid: Tensor | None = None,
    *,
    teacher_probs: Tensor | None = None,
) -> Tensor:
    """Soft-target knowledge distillation loss (Hinton et al. [1]).

        L_KD = T² · mean_n KL( p_t^{(n)} ‖ p_s^{(n)} ),   p_t = softmax(z_t / T),  p_s = softmax(z_s / T)
        KL(p ‖ q) = Σ_k p_k (log p_k − log q_k)

    summed over the classes ``k`` (dim 1) and averaged over the positions ``n``: samples for logits
    ``(B, K)`` (then equal to ``T² · KLDivLoss(reduction="batchmean")``), pixels of every image for
    ``(B, K, H, W)``. The ``T²`` factor keeps the gradient scale independent of ``T`` [1].

    Soft targets can be given as probabilities instead (``teacher_probs``, e.g. CutMix-mixed soft
    labels). They are read as the teacher's distribution at temperature 1 and softened the same way,
    ``p_t = softmax(log p / T)`` (= ``p^{1/T}`` renormalised), so ``teacher_probs=softmax(z_t)`` gives the
    same loss as ``teacher_logits=z_t``; zero probabilities stay zero. The targets are detached.

    Args:
        student_logits: ``(B, K)`` or ``(B, K, H, W)`` (any ``(B, K, ...)``).
        teacher_logits: same shape; give exactly one of ``teacher_logits`` and ``teacher_probs``.
        temperature: ``T > 0``.
        valid: optional bool ``(B, ...)`` (the logits' shape without ``K``): positions that count.
            With none valid the loss is 0 (with a graph).
        teacher_probs: same shape as the logits, non-negative, summing to 1 over dim 1.

    Returns:
        scalar loss.
    """
    if (teacher_logits is None) == (teacher_probs is None):
        raise ValueError("give exactly one of teacher_logits and teacher_probs")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher = teacher_logits if teacher_logits is not None else teacher_probs
    assert teacher is not None
    if student_logits.dim() < 2:
        raise ValueError(f"logits must be (B, K, ...), got {tuple(student_logits.shape)}")
    if teacher.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student must have the same shape, got {tuple(teacher.shape)} and "
            f"{tuple(student_logits.shape)}"
        )
    position_shape = student_logits.shape[:1] + student_logits.shape[2:]
    if valid is not None:
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
        if valid.shape != position_shape:
            raise ValueError(f"valid must be {tuple(position_shape)}, got {tuple(valid.shape)}")
    log_p_s = F.log_softmax(_upcast(student_logits) / temperature, dim=1)  # (B, K, ...)
    teacher = _upcast(teacher.detach())
    if teacher_probs is not None:
        # Not validated (a check would sync the device every step): negative entries give NaN.
        teacher = torch.log(teacher)  # (B, K, ...), −inf where p = 0 (softmax maps it back to 0)
    p_t = F.softmax(teacher / temperature, dim=1)  # (B, K, ...)
    # xlogy: 0 · log 0 = 0, so classes the teacher rules out add nothing (and no NaN).
    kl = (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(dim=1)  # (B, ...)
    if valid is None:
        return kl.mean() * temperature**2
    total = torch.where(valid, kl, kl.new_zeros(())).sum()
    return total / valid.sum().clamp_min(1) * temperature**2


class KnowledgeDistillationLoss(nn.Module):
    """Hinton et al. [1] distillation: ``α · T² · KL(p_t ‖ p_s) + (1 − α) · CE(z_s, y)``.

    ``α`` weights the soft term, as ``classify.alpha`` and
    :class:`~anydistill.losses.classify_kd.ClassificationKDLoss` (Hinton: most weight on the soft targets).

    The hard-label cross-entropy (temperature 1, pixels/samples equal to ``ignore_index`` skipped) is
    added only when ``labels`` are given; otherwise the loss is :func:`kd_loss` alone.

    Shapes: logits ``(B, K)`` with labels ``(B,)``, or ``(B, K, H, W)`` with labels ``(B, H, W)``;
    ``teacher_probs`` like the logits; ``valid`` bool like the labels.

    Args:
        temperature: ``T`` of the soft targets.
        alpha: weight ``α`` in ``[0, 1]`` of the soft (distillation) term; ``1 − α`` goes to the labels.
        ignore_index: label id that the cross-entropy skips.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, ignore_index: int = 255) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature = temperature
        self.alpha = alpha
        self.ignore_index = ignore_index

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        teacher_probs: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        soft = kd_loss(
            student_logits, teacher_logits, self.temperature, valid=valid, teacher_probs=teacher_probs
        )
        if labels is None:
            return soft
        hard = cross_entropy(_upcast(student_logits), labels, ignore_index=self.ignore_index)
        return self.alpha * soft + (1.0 - self.alpha) * hard

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, ignore_index={self.ignore_index}"
