"""Feature alignment with a tolerance margin (Depth Anything [0] §3.3).

:func:`feature_alignment_loss` / :class:`FeatureAlignmentLoss`: the student's features are pulled
towards a frozen semantic encoder's (DINOv2), per pixel, except where they are already close
(tolerance margin α).

- [0] Yang et al., "Depth Anything: Unleashing the Power of Large-Scale Unlabeled Data", CVPR 2024,
  https://arxiv.org/abs/2401.10891
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["feature_alignment_loss", "FeatureAlignmentLoss"]


def _upcast(x: Tensor) -> Tensor:
    """float32 for half-precision inputs (autocast): means over many pixels lose too much in fp16/bf16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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
