"""DINO's self-distillation loss [0]: :func:`dino_loss` / :class:`DINOLoss`.

The student's distribution on every view is pulled towards the teacher's centred, sharpened
distribution on each *other* global view; the centre is an EMA of the teacher's batch mean (with the
sharpening, it keeps the teacher from collapsing).

- [0] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021,
  https://arxiv.org/abs/2104.14294; reference code ``DINOLoss`` in
  https://github.com/facebookresearch/dino/blob/cc72fe982d650ff28e974d0f5a7c974fecb56209/main_dino.py
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.losses.segmentation import _upcast

__all__ = ["dino_loss", "DINOLoss"]


def _stack_views(views: Sequence[Tensor], name: str, dim: int | None = None) -> Tensor:
    """``(V, B, K)`` from a non-empty list of ``(B, K)`` views, upcast from fp16/bf16."""
    if isinstance(views, Tensor) or len(views) == 0:
        raise ValueError(f"{name} must be a non-empty list of (B, K) tensors")
    shape = views[0].shape
    for v in views:
        if v.dim() != 2 or v.shape != shape or v.shape[0] == 0:
            raise ValueError(
                f"{name} must hold (B, K) views of one shape, got {[tuple(x.shape) for x in views]}"
            )
    if dim is not None and shape[1] != dim:
        raise ValueError(f"{name} must hold (B, {dim}) views, got {tuple(shape)}")
    return torch.stack([_upcast(v) for v in views])  # (V, B, K)


def dino_loss(
    student_out: Sequence[Tensor],
    teacher_out: Sequence[Tensor],
    center: Tensor,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
) -> Tensor:
    """DINO's cross-entropy [0] between teacher and student views, for a given centre (not updated).

        P_t^{(i)} = softmax((g_t^{(i)} − c) / τ_t),   log P_s^{(v)} = log_softmax(g_s^{(v)} / τ_s)
        L = 1/|𝒫| · Σ_{(i, v) ∈ 𝒫} mean_b [ −Σ_k P_t^{(i)}_{bk} log P_s^{(v)}_{bk} ]
        𝒫 = {(i, v) : i < n_teacher views, v < n_student views, v ≠ i}

    The student's views come global first, in the teacher's order, then the local crops, so the pair
    of a global view with itself (``v = i``) is skipped. The teacher outputs are detached.

    Args:
        student_out: list of ``(B, K)`` student outputs, the global views first, then the local ones.
        teacher_out: list of ``(B, K)`` teacher outputs of the global views.
        center: ``(1, K)`` centre ``c`` subtracted from the teacher outputs.
        teacher_temp: ``τ_t > 0`` (sharpening).
        student_temp: ``τ_s > 0``.

    Returns:
        scalar loss.
    """
    if teacher_temp <= 0 or student_temp <= 0:
        raise ValueError(f"temperatures must be > 0, got teacher {teacher_temp}, student {student_temp}")
    s = _stack_views(student_out, "student_out")  # (S, B, K)
    t = _stack_views([v.detach() for v in teacher_out], "teacher_out", s.shape[2])  # (T, B, K)
    if t.shape[1] != s.shape[1]:
        raise ValueError(f"teacher and student views must share the batch, got {t.shape[1]} and {s.shape[1]}")
    if center.shape != (1, s.shape[2]):
        raise ValueError(f"center must be (1, {s.shape[2]}), got {tuple(center.shape)}")
    n_teacher, n_student, batch = t.shape[0], s.shape[0], s.shape[1]
    if n_teacher * n_student == min(n_teacher, n_student):
        raise ValueError("DINO needs a pair of different views: one teacher and one student view give none")
    pairs = ~torch.eye(n_teacher, n_student, dtype=torch.bool, device=s.device)  # (T, S), v ≠ i
    p_t = F.softmax((t - center.to(t)) / teacher_temp, dim=-1)  # (T, B, K)
    log_p_s = F.log_softmax(s / student_temp, dim=-1)  # (S, B, K)
    cross_entropy = -torch.einsum("tbk,sbk->ts", p_t.to(log_p_s), log_p_s) / batch  # (T, S), mean over B
    return cross_entropy[pairs].mean()


class DINOLoss(nn.Module):
    """DINO's loss [0] with the teacher's centre and temperature schedule; see :func:`dino_loss`.

    Each call computes the loss with the current centre, then updates the centre (no gradient):

        c ← m·c + (1 − m)·mean_{views, batch}(g_t)

    the mean taken over all the teacher's views and over the batches of every rank under
    ``torch.distributed`` (an all-reduce, as the reference code; the ranks' batches must be of equal
    size). The centre is a persistent buffer, so a checkpoint resumes with it. It is updated in eval
    mode too, as in the reference code.

    The teacher temperature follows the reference's linear warm-up, ``np.linspace(warmup_teacher_temp,
    teacher_temp, warmup_teacher_temp_epochs)`` indexed by the epoch, then ``teacher_temp``; a fractional
    epoch interpolates between the values of the integer epochs around it (:meth:`teacher_temperature`).

    Shapes: ``student_out`` list of ``(B, K)`` (global views, then local); ``teacher_out`` list of
    ``(B, K)`` (global views); ``K = out_dim``.

    Args:
        out_dim: ``K``, the head's output dimension.
        teacher_temp: ``τ_t`` after the warm-up.
        warmup_teacher_temp: ``τ_t`` at epoch 0.
        warmup_teacher_temp_epochs: length of the warm-up in epochs (0: no warm-up).
        student_temp: ``τ_s``.
        center_momentum: ``m`` in ``[0, 1]``.

    Buffers:
        center: ``(1, K)``, zeros at the start.
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        if min(teacher_temp, warmup_teacher_temp, student_temp) <= 0:
            raise ValueError("temperatures must be > 0")
        if warmup_teacher_temp_epochs < 0:
            raise ValueError(f"warmup_teacher_temp_epochs must be >= 0, got {warmup_teacher_temp_epochs}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, epoch: int | float) -> float:
        """``τ_t`` at ``epoch``: ``w + (τ − w)·min(epoch / max(E − 1, 1), 1)`` for ``E`` warm-up epochs
        (the reference's linspace at integer epochs), ``τ`` when ``E = 0``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        warmup = self.warmup_teacher_temp_epochs
        if warmup == 0:
            return self.teacher_temp
        progress = min(epoch / max(warmup - 1, 1), 1.0)
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * progress

    def forward(
        self, student_out: Sequence[Tensor], teacher_out: Sequence[Tensor], epoch: int | float = 0
    ) -> Tensor:
        loss = dino_loss(
            student_out, teacher_out, self.center, self.teacher_temperature(epoch), self.student_temp
        )
        self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: Sequence[Tensor]) -> None:
        """EMA of the teacher's mean output: ``c ← m·c + (1 − m)·mean`` (all-reduced under DDP)."""
        t = _stack_views([v.detach() for v in teacher_out], "teacher_out", self.out_dim)  # (T, B, K)
        batch_center = t.flatten(0, 1).mean(dim=0, keepdim=True)  # (1, K)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            batch_center = batch_center / dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(
            batch_center.to(self.center), alpha=1.0 - self.center_momentum
        )

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, teacher_temp={self.teacher_temp}, "
            f"warmup_teacher_temp={self.warmup_teacher_temp}, "
            f"warmup_teacher_temp_epochs={self.warmup_teacher_temp_epochs}, "
            f"student_temp={self.student_temp}, center_momentum={self.center_momentum}"
        )
