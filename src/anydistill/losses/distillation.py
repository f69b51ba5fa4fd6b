"""Distillation losses: feature alignment with a tolerance margin, knowledge distillation, CutMix-aware SSI.

- :func:`feature_alignment_loss` / :class:`FeatureAlignmentLoss`: Depth Anything [0] §3.3, the student's
  features are pulled towards a frozen semantic encoder's (DINOv2), per pixel, except where they are
  already close (tolerance margin α).
- :func:`kd_loss` / :class:`KnowledgeDistillationLoss`: Hinton et al. [1], temperature-softened teacher
  distribution as the target, optionally combined with hard-label cross-entropy.
- :func:`cutmix_ssi_loss` / :class:`CutMixScaleShiftInvariantLoss`: Depth Anything [0] §3.2, the SSI loss
  on a CutMixed unlabeled image, computed inside the pasted box against the partner's pseudo label and
  outside against the base image's, each region with its own scale-and-shift alignment.

- [0] Yang et al., "Depth Anything: Unleashing the Power of Large-Scale Unlabeled Data", CVPR 2024,
  https://arxiv.org/abs/2401.10891
- [1] Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
  https://arxiv.org/abs/1503.02531
- [2] Yang et al., "Depth Anything V2", 2024, https://arxiv.org/abs/2406.09414
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.losses.depth import Alignment, ssi_loss
from anydistill.losses.segmentation import cross_entropy

__all__ = [
    "feature_alignment_loss",
    "kd_loss",
    "cutmix_ssi_loss",
    "FeatureAlignmentLoss",
    "KnowledgeDistillationLoss",
    "CutMixScaleShiftInvariantLoss",
]


def _upcast(x: Tensor) -> Tensor:
    """float32 for half-precision inputs (autocast): means over many pixels lose too much in fp16/bf16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --------------------------------------------------------------------------------------------------
# Feature alignment (Depth Anything §3.3)
# --------------------------------------------------------------------------------------------------


def feature_alignment_loss(
    student_feat: Tensor, frozen_feat: Tensor, margin: float = 0.15, eps: float = 1e-8
) -> Tensor:
    """Feature alignment loss with a tolerance margin (Depth Anything [0] §3.3, eq. 4).

        L_feat = 1 − (1/HW) Σ_i cos(f_i, f'_i)        (the paper's eq. 4, over the H·W pixels)

    with ``f_i`` the student's and ``f'_i`` the frozen encoder's feature at pixel ``i``. Tolerance
    margin α: a pixel whose ``cos(f_i, f'_i) > 1 − α`` is already aligned enough and is left out (no loss,
    no gradient), so the student keeps room for depth-specific features. Normalisation used here: the
    mean of ``1 − cos`` over the pixels kept, pooled over the whole batch (every kept pixel of every
    image weighs the same),

        L = Σ_{i ∈ K} (1 − cos_i) / |K|,     K = {i : cos_i ≤ 1 − α}

    which equals eq. 4 when nothing is excluded (α = 0, or every cos ≤ 1 − α). When no pixel is kept
    the loss is 0 (with a graph, so ``backward()`` works and gives zero gradients). The frozen features
    are detached.

    Args:
        student_feat: ``(B, C, H, W)`` (any ``(B, C, ...)``), already projected to the frozen encoder's
            dimension and resolution (see :class:`FeatureAlignmentLoss`).
        frozen_feat: same shape, from the frozen semantic encoder.
        margin: tolerance margin α in ``[0, 2]`` (0.15 in Depth Anything).
        eps: lower bound of the feature norms in the cosine.

    Returns:
        scalar loss.
    """
    if student_feat.shape != frozen_feat.shape:
        raise ValueError(
            f"student_feat and frozen_feat must have the same shape, got {tuple(student_feat.shape)} and "
            f"{tuple(frozen_feat.shape)}; use FeatureAlignmentLoss to project and resize"
        )
    if student_feat.dim() < 2:
        raise ValueError(f"features must be (B, C, ...), got {tuple(student_feat.shape)}")
    if not 0.0 <= margin <= 2.0:
        raise ValueError(f"margin must be in [0, 2], got {margin}")
    cos = F.cosine_similarity(
        _upcast(student_feat), _upcast(frozen_feat.detach()), dim=1, eps=eps
    )  # (B, H, W)
    keep = cos <= 1.0 - margin  # (B, H, W), the tolerance margin leaves out near-aligned pixels
    loss = torch.where(keep, 1.0 - cos, cos.new_zeros(())).sum()
    return loss / keep.sum().clamp_min(1)


class FeatureAlignmentLoss(nn.Module):
    """Feature alignment to a frozen encoder with a learned projection (Depth Anything [0] §3.3).

    Structure::

        student (B, C_s, h_s, w_s) ─► 1×1 conv C_s→C_f (identity when C_s = C_f)
                                   ─► bilinear resize to (h_f, w_f) (skipped when equal)
                                   ─► feature_alignment_loss(·, frozen (B, C_f, h_f, w_f), margin)

    The 1×1 projection and the bilinear resize are both linear and the interpolation weights sum to 1,
    so they commute (bias included); the projection runs at whichever resolution is smaller. Only the
    student and the projection receive gradients; the frozen features are detached.

    Args:
        student_dim: ``C_s``, channels of the student's feature map.
        frozen_dim: ``C_f``, channels of the frozen encoder's feature map.
        margin: tolerance margin α (0.15 in Depth Anything).
    """

    def __init__(self, student_dim: int, frozen_dim: int, margin: float = 0.15) -> None:
        super().__init__()
        if student_dim < 1 or frozen_dim < 1:
            raise ValueError(f"dims must be positive, got student_dim={student_dim}, frozen_dim={frozen_dim}")
        if not 0.0 <= margin <= 2.0:
            raise ValueError(f"margin must be in [0, 2], got {margin}")
        self.student_dim = student_dim
        self.frozen_dim = frozen_dim
        self.margin = margin
        self.proj: nn.Module = (
            nn.Identity() if student_dim == frozen_dim else nn.Conv2d(student_dim, frozen_dim, kernel_size=1)
        )

    def project(self, student_feat: Tensor, size: tuple[int, int]) -> Tensor:
        """Maps ``(B, C_s, h_s, w_s)`` to ``(B, C_f, *size)``."""
        if student_feat.dim() != 4 or student_feat.shape[1] != self.student_dim:
            raise ValueError(
                f"student_feat must be (B, {self.student_dim}, h, w), got {tuple(student_feat.shape)}"
            )
        h, w = student_feat.shape[-2:]
        same_size = (h, w) == tuple(size)
        if same_size or h * w <= size[0] * size[1]:
            x = self.proj(student_feat)  # (B, C_f, h_s, w_s)
            if not same_size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (B, C_f, h_f, w_f)
            return x
        x = F.interpolate(student_feat, size=size, mode="bilinear", align_corners=False)  # (B, C_s, h_f, w_f)
        return self.proj(x)  # (B, C_f, h_f, w_f)

    def forward(self, student_feat: Tensor, frozen_feat: Tensor) -> Tensor:
        if frozen_feat.dim() != 4 or frozen_feat.shape[1] != self.frozen_dim:
            raise ValueError(
                f"frozen_feat must be (B, {self.frozen_dim}, h, w), got {tuple(frozen_feat.shape)}"
            )
        if frozen_feat.shape[0] != student_feat.shape[0]:
            raise ValueError(
                f"batch sizes differ: student {student_feat.shape[0]}, frozen {frozen_feat.shape[0]}"
            )
        x = self.project(student_feat, (frozen_feat.shape[-2], frozen_feat.shape[-1]))
        return feature_alignment_loss(x, frozen_feat, margin=self.margin)

    def extra_repr(self) -> str:
        return f"student_dim={self.student_dim}, frozen_dim={self.frozen_dim}, margin={self.margin}"


# --------------------------------------------------------------------------------------------------
# Knowledge distillation (Hinton et al. 2015)
# --------------------------------------------------------------------------------------------------


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
    """Hinton et al. [1] distillation: ``α · CE(z_s, y) + (1 − α) · T² · KL(p_t ‖ p_s)``.

    The hard-label cross-entropy (temperature 1, pixels/samples equal to ``ignore_index`` skipped) is
    added only when ``labels`` are given; otherwise the loss is :func:`kd_loss` alone.

    Shapes: logits ``(B, K)`` with labels ``(B,)``, or ``(B, K, H, W)`` with labels ``(B, H, W)``;
    ``teacher_probs`` like the logits; ``valid`` bool like the labels.

    Args:
        temperature: ``T`` of the soft targets.
        alpha: weight ``α`` in ``[0, 1]`` of the hard-label term.
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
        return self.alpha * hard + (1.0 - self.alpha) * soft

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, ignore_index={self.ignore_index}"


# --------------------------------------------------------------------------------------------------
# SSI loss on CutMixed images (Depth Anything §3.2)
# --------------------------------------------------------------------------------------------------


def _as_b1hw(x: Tensor, name: str) -> Tensor:
    if x.dim() == 3:
        return x[:, None]  # (B, 1, H, W)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    return x


def cutmix_ssi_loss(
    pred: Tensor,
    target_a: Tensor,
    target_b: Tensor,
    valid_a: Tensor | None,
    valid_b: Tensor | None,
    mask: Tensor,
    alignment: Alignment = "median",
    trim: float = 0.0,
    eps: float = 1e-6,
) -> Tensor:
    """SSI loss of a prediction on a CutMixed image (Depth Anything [0] §3.2).

    The student saw ``where(mask, image_b, image_a)`` (``anydistill.data.perturb.cutmix``): image ``a`` is
    the base, ``b`` the partner pasted inside the box. Per image, with ``M`` the box,

        L = w_M · ρ_SSI(pred|_M, target_b|_M) + w_{1−M} · ρ_SSI(pred|_{1−M}, target_a|_{1−M})

    i.e. INSIDE the box against the partner's pseudo label ``target_b`` (valid where ``valid_b``),
    OUTSIDE against the base's ``target_a`` (valid where ``valid_a``); each term is
    :func:`anydistill.losses.depth.ssi_loss` on that image with the ``region ∧ valid`` mask, so each
    region gets its OWN scale-and-shift alignment (and its own ``trim``). The weights are each region's
    share of the image's counted pixels, ``w_M = N_M / (N_M + N_{1−M})``: with fully valid pseudo labels
    this is the box's area fraction (the paper's weighting); a region without valid pixels gets weight 0
    instead of diluting the other. A sample without a mix (empty ``M``) reduces to the plain SSI loss
    against ``target_a``. Batch reduction as ``ssi_loss``: mean over the images with at least one counted
    pixel; 0 (with a graph) when there are none.

    Implementation: the ``2B`` per-(image, region) SSI losses come from one ``torch.func.vmap`` of
    ``ssi_loss`` over single images (vectorised; numerically the same as a loop over images).

    Args:
        pred: ``(B, 1, H, W)`` (or ``(B, H, W)``), the student's prediction on the mixed image (disparity
            for Depth Anything).
        target_a: the base image's pseudo label, same shape (used outside the box).
        target_b: the partner's pseudo label, same shape (used inside the box); for a partner made by
            ``roll_partner``, ``roll_partner(target_a)``.
        valid_a, valid_b: bool masks of the same shape, or ``None`` (every finite target pixel).
        mask: bool ``(B, 1, H, W)``, True inside the pasted box (from ``sample_cutmix_boxes``).
        alignment: ``"median"`` (Depth Anything) or ``"lstsq"``; see ``ssi_loss``.
        trim: fraction of the largest per-pixel losses dropped per region (0.1 on pseudo labels in V2 [2]).
        eps: lower bound of the median-MAD scale.

    Returns:
        scalar loss.
    """
    pred = _as_b1hw(pred, "pred")
    target_a = _as_b1hw(target_a, "target_a")
    target_b = _as_b1hw(target_b, "target_b")
    mask = _as_b1hw(mask, "mask")
    for name, t in (("target_a", target_a), ("target_b", target_b), ("mask", mask)):
        if t.shape != pred.shape:
            raise ValueError(f"{name} must have the shape of pred {tuple(pred.shape)}, got {tuple(t.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    valid_a = torch.ones_like(mask) if valid_a is None else _as_b1hw(valid_a, "valid_a")
    valid_b = torch.ones_like(mask) if valid_b is None else _as_b1hw(valid_b, "valid_b")
    for name, v in (("valid_a", valid_a), ("valid_b", valid_b)):
        if v.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {v.dtype}")
        if v.shape != pred.shape:
            raise ValueError(f"{name} must have the shape of pred {tuple(pred.shape)}, got {tuple(v.shape)}")
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    if alignment not in ("median", "lstsq"):
        raise ValueError(f"alignment must be 'median' or 'lstsq', got {alignment!r}")

    inside = mask & valid_b & torch.isfinite(target_b)  # (B, 1, H, W), counted pixels of the box
    outside = ~mask & valid_a & torch.isfinite(target_a)  # (B, 1, H, W), counted pixels around it
    b = pred.shape[0]
    preds = torch.cat([pred, pred])  # (2B, 1, H, W): images 0..B-1 inside, B..2B-1 outside
    targets = torch.cat([target_b.to(pred.dtype), target_a.to(pred.dtype)])  # (2B, 1, H, W)
    regions = torch.cat([inside, outside])  # (2B, 1, H, W)

    def one_image(p: Tensor, t: Tensor, m: Tensor) -> Tensor:
        return ssi_loss(p[None], t[None], m[None], alignment=alignment, trim=trim, eps=eps)  # ()

    per_region = torch.func.vmap(one_image)(preds, targets, regions)  # (2B,)
    counts = regions.flatten(1).sum(dim=1).to(per_region.dtype)  # (2B,)
    n_in, n_out = counts[:b], counts[b:]  # (B,), (B,)
    n_total = n_in + n_out  # (B,)
    weighted = n_in * per_region[:b] + n_out * per_region[b:]  # (B,)
    per_image = weighted / n_total.clamp_min(1)  # (B,)
    has_valid = n_total > 0  # (B,)
    total = torch.where(has_valid, per_image, per_image.new_zeros(())).sum()
    return total / has_valid.sum().clamp_min(1)


class CutMixScaleShiftInvariantLoss(nn.Module):
    """SSI loss on CutMixed images, each region aligned on its own; see :func:`cutmix_ssi_loss`.

    Args:
        alignment: ``"median"`` (Depth Anything) or ``"lstsq"``.
        trim: fraction of the largest per-pixel losses dropped per region (0.1 in Depth Anything V2).
        eps: lower bound of the median-MAD scale.

    Shapes: ``pred``, ``target_a``, ``target_b`` ``(B, 1, H, W)``; ``valid_a``, ``valid_b``, ``mask`` bool,
    same shape (``mask`` True inside the box pasted from the partner ``b``).
    """

    def __init__(self, alignment: Alignment = "median", trim: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        if alignment not in ("median", "lstsq"):
            raise ValueError(f"alignment must be 'median' or 'lstsq', got {alignment!r}")
        if not 0.0 <= trim < 1.0:
            raise ValueError(f"trim must be in [0, 1), got {trim}")
        self.alignment = alignment
        self.trim = trim
        self.eps = eps

    def forward(
        self,
        pred: Tensor,
        target_a: Tensor,
        target_b: Tensor,
        valid_a: Tensor | None,
        valid_b: Tensor | None,
        mask: Tensor,
    ) -> Tensor:
        return cutmix_ssi_loss(
            pred,
            target_a,
            target_b,
            valid_a,
            valid_b,
            mask,
            alignment=self.alignment,
            trim=self.trim,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"alignment={self.alignment!r}, trim={self.trim}"
