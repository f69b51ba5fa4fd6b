"""SSI loss on CutMixed images (Depth Anything [0] §3.2).

:func:`cutmix_ssi_loss` / :class:`CutMixScaleShiftInvariantLoss`: the SSI loss on a CutMixed unlabeled
image, computed inside the pasted box against the partner's pseudo label and outside against the base
image's, each region with its own scale-and-shift alignment.

- [0] Yang et al., "Depth Anything: Unleashing the Power of Large-Scale Unlabeled Data", CVPR 2024,
  https://arxiv.org/abs/2401.10891
- [2] Yang et al., "Depth Anything V2", 2024, https://arxiv.org/abs/2406.09414
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.losses.depth import Alignment, ScaleShiftInvariantLoss, ssi_loss

__all__ = ["cutmix_ssi_loss", "CutMixScaleShiftInvariantLoss"]


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


class CutMixScaleShiftInvariantLoss(ScaleShiftInvariantLoss):
    """SSI loss on CutMixed images, each region aligned on its own; see :func:`cutmix_ssi_loss`.

    Args:
        alignment: ``"median"`` (Depth Anything) or ``"lstsq"``.
        trim: fraction of the largest per-pixel losses dropped per region (0.1 in Depth Anything V2).
        eps: lower bound of the median-MAD scale.

    Shapes: ``pred``, ``target_a``, ``target_b`` ``(B, 1, H, W)``; ``valid_a``, ``valid_b``, ``mask`` bool,
    same shape (``mask`` True inside the box pasted from the partner ``b``).
    """

    # Its settings and their checks are ScaleShiftInvariantLoss's (alignment, trim, eps); only forward differs.

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
