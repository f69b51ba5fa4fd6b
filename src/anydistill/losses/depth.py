"""Affine-invariant depth losses: scale-and-shift-invariant (SSI) loss and gradient matching.

Everything here works in the space the caller gives. Depth Anything (and MiDaS) train in DISPARITY
(``1 / depth`` on valid pixels), and the training code of this project passes disparity; nothing in
this file converts between depth and disparity.

Reduction (all losses): every image gets its own loss, normalised by its own number of valid pixels;
the batch loss is the mean over the images that have at least one valid pixel. Images without valid
pixels neither add to the loss nor dilute it, and a batch with no valid pixel at all gives 0 (with a
graph, so ``backward()`` still works).

- [0] Ranftl et al., "Towards Robust Monocular Depth Estimation: Mixing Datasets for Zero-shot
  Cross-dataset Transfer" (MiDaS), TPAMI 2020, https://arxiv.org/abs/1907.01341
- [1] Yang et al., "Depth Anything: Unleashing the Power of Large-Scale Unlabeled Data", CVPR 2024,
  https://arxiv.org/abs/2401.10891
- [2] Yang et al., "Depth Anything V2", 2024, https://arxiv.org/abs/2406.09414
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "depth_to_disparity",
    "align_scale_shift",
    "normalize_median_mad",
    "ssi_loss",
    "gradient_matching_loss",
    "ScaleShiftInvariantLoss",
    "GradientMatchingLoss",
]

Alignment = Literal["median", "lstsq"]


def _prepare(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validates the inputs and returns ``(pred, target, mask)`` each of shape ``(B, H, W)``.

    Pixels outside the mask, or with a non-finite target, are invalid; their values are replaced by 0
    (with ``torch.where``, so an ``inf`` disparity from a zero depth cannot turn into NaN values or
    NaN gradients). Half-precision inputs are computed in float32.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.dim() == 4:
        if pred.shape[1] != 1:
            raise ValueError(
                f"expected (B, 1, H, W) or (B, H, W), got {tuple(pred.shape)} with {pred.shape[1]} channels"
            )
        pred, target = pred[:, 0], target[:, 0]  # (B, H, W)
    elif pred.dim() != 3:
        raise ValueError(f"expected (B, 1, H, W) or (B, H, W), got {tuple(pred.shape)}")
    mask = torch.ones_like(pred, dtype=torch.bool) if mask is None else _squeeze_mask(mask)
    if mask.shape != pred.shape:
        raise ValueError(f"mask must have the shape of pred {tuple(pred.shape)}, got {tuple(mask.shape)}")
    mask = mask & torch.isfinite(target)
    # Sums over H*W pixels lose too much in half precision (autocast): compute in float32 at least.
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    if target.dtype in (torch.float16, torch.bfloat16):
        target = target.float()
    zero = pred.new_zeros(())
    return torch.where(mask, pred, zero), torch.where(mask, target, zero.to(target.dtype)), mask


def _squeeze_mask(mask: Tensor) -> Tensor:
    """Accepts a bool mask ``(B, 1, H, W)`` or ``(B, H, W)`` and returns ``(B, H, W)``."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        return mask[:, 0]  # (B, H, W)
    return mask


def _mean_over_valid_images(per_image: Tensor, has_valid: Tensor) -> Tensor:
    """Mean of ``per_image`` ``(B,)`` over the images with ``has_valid`` ``(B,)``; 0 when there are none."""
    total = torch.where(has_valid, per_image, per_image.new_zeros(())).sum()
    return total / has_valid.sum().clamp_min(1)


def _align_prepared(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares scale and shift on prepared ``(B, H, W)`` inputs; see :func:`align_scale_shift`."""
    m = mask.to(pred.dtype)
    n = m.sum(dim=(1, 2))  # (B,)
    n_safe = n.clamp_min(1)
    p_mean = (pred * m).sum(dim=(1, 2)) / n_safe  # (B,)
    t_mean = (target * m).sum(dim=(1, 2)) / n_safe  # (B,)
    p_c = (pred - p_mean[:, None, None]) * m  # (B, H, W), centred, 0 off the mask
    t_c = (target - t_mean[:, None, None]) * m  # (B, H, W)
    var = (p_c * p_c).sum(dim=(1, 2))  # (B,)
    cov = (p_c * t_c).sum(dim=(1, 2))  # (B,)
    second_moment = (pred * pred * m).sum(dim=(1, 2))  # (B,)
    # Constant prediction (or < 2 valid pixels): every scale is optimal, so take the shift-only fit.
    # "Constant" = spread within rounding noise of the mean: std / rms <= 64 * machine eps.
    degenerate = (n < 2) | (var <= (64 * torch.finfo(pred.dtype).eps) ** 2 * second_moment)
    var_safe = torch.where(degenerate, torch.ones_like(var), var)  # avoids 0/0 in the unused branch's grad
    scale = torch.where(degenerate, torch.ones_like(var), cov / var_safe)
    shift = torch.where(n > 0, t_mean - scale * p_mean, torch.zeros_like(t_mean))
    return scale, shift


def depth_to_disparity(depth: Tensor, valid: Tensor) -> Tensor:
    """The relative-depth target: ``1 / depth`` on valid pixels, 0 elsewhere. Shapes ``(B, 1, H, W)``."""
    return torch.where(valid, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))


def align_scale_shift(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-image least-squares scale and shift that map ``pred`` onto ``target`` (MiDaS [0], eq. 4).

    Solves, for every image independently and in closed form,

        (s, t) = argmin_{s,t}  Σ_{i ∈ mask} (s · pred_i + t − target_i)²

    i.e. the 2×2 normal equations, written with centred values for numerical stability:
    ``s = Σ (p − p̄)(d* − d̄*) / Σ (p − p̄)²``, ``t = d̄* − s · p̄`` (means over the mask).

    Fallbacks (never NaN): when an image has fewer than 2 valid pixels or a constant prediction on
    them, every scale fits equally well and the shift-only fit ``s = 1, t = d̄* − p̄`` is returned; an
    image with no valid pixel gets ``s = 1, t = 0``. Gradients flow through ``s`` and ``t``.

    Args:
        pred: prediction, ``(B, 1, H, W)`` or ``(B, H, W)``.
        target: ground truth in the same space, same shape as ``pred``.
        mask: bool, same shape; ``None`` means every pixel. Non-finite targets are always invalid.

    Returns:
        ``(scale, shift)``, each ``(B,)``.
    """
    pred, target, mask = _prepare(pred, target, mask)
    return _align_prepared(pred, target.to(pred.dtype), mask)


def _masked_median(x: Tensor, mask: Tensor) -> Tensor:
    """Per-image median of ``x`` ``(B, H, W)`` over ``mask``; 0 for an empty mask. Returns ``(B,)``.

    For an even count this is the lower of the two middle values (``torch.nanmedian``'s convention).
    """
    flat = torch.where(mask, x, x.new_full((), float("nan"))).flatten(1)  # (B, H*W)
    med = torch.nanmedian(flat, dim=1).values  # (B,), NaN where the mask is empty
    return torch.where(mask.flatten(1).any(dim=1), med, torch.zeros_like(med))


def _normalize_prepared(x: Tensor, mask: Tensor, eps: float) -> Tensor:
    m = mask.to(x.dtype)
    t = _masked_median(x, mask)  # (B,)
    centred = (x - t[:, None, None]) * m  # (B, H, W)
    s = centred.abs().sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1)  # (B,)
    return centred / s.clamp_min(eps)[:, None, None]  # (B, H, W)


def normalize_median_mad(x: Tensor, mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Scale-and-shift normalisation by median and mean absolute deviation (MiDaS [0] eq. 6-7, DA [1] eq. 2).

        d̂ = (d − t(d)) / s(d),   t(d) = median_{i ∈ mask}(d_i),   s(d) = (1/M) Σ_{i ∈ mask} |d_i − t(d)|

    with M the number of valid pixels of the image. ``s`` is clamped to ``eps`` (a constant image
    becomes all zeros, not NaN). Invalid pixels are 0 in the output.

    Args:
        x: ``(B, 1, H, W)`` or ``(B, H, W)``.
        mask: bool, same shape; ``None`` means every finite pixel.
        eps: lower bound of ``s(d)``, in the units of ``x``.

    Returns:
        the normalised map, same shape as ``x``.
    """
    x_p, _, m = _prepare(x, x, mask)
    return _normalize_prepared(x_p, m, eps).reshape(x.shape)


def _residuals(pred: Tensor, target: Tensor, mask: Tensor, alignment: str, eps: float) -> Tensor:
    """Aligned signed residual ``R = d̂ − d̂*`` on prepared ``(B, H, W)`` inputs (0 off the mask)."""
    target = target.to(pred.dtype)
    if alignment == "median":
        return _normalize_prepared(pred, mask, eps) - _normalize_prepared(target, mask, eps)
    if alignment == "lstsq":
        scale, shift = _align_prepared(pred, target, mask)
        aligned = scale[:, None, None] * pred + shift[:, None, None]  # (B, H, W)
        return torch.where(mask, aligned - target, pred.new_zeros(()))
    if alignment == "none":
        return pred - target
    raise ValueError(f"alignment must be 'median', 'lstsq' or 'none', got {alignment!r}")


def ssi_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    alignment: Alignment = "median",
    trim: float = 0.0,
    eps: float = 1e-6,
) -> Tensor:
    """Scale-and-shift-invariant loss (MiDaS [0] eq. 5-8; Depth Anything [1] eq. 1-2).

    ``alignment="median"`` (Depth Anything / MiDaS "ssimae"): prediction and target are each
    normalised by :func:`normalize_median_mad` and

        ρ_i = |d̂_i − d̂*_i|

    ``alignment="lstsq"`` (MiDaS "ssimse"): the prediction is aligned to the target by
    :func:`align_scale_shift` (gradients flow through ``s, t`` as in the reference) and

        ρ_i = ½ (s · d_i + t − d*_i)²

    Per image the loss is the mean of ρ over the kept valid pixels. ``trim`` drops, per image, the
    ``⌊trim · M⌋`` largest ρ before the mean (MiDaS "trimmed" loss with trim=0.2; Depth Anything V2 [2]
    drops the top 10% on pseudo labels). MiDaS divides the trimmed sum by 2M; here it is divided by the
    number of kept pixels, so ``trim=0`` is the plain mean and the value does not shrink with ``trim``.
    Batch reduction: mean over images with valid pixels (see the module docstring).

    Zero for a perfect prediction and for any positive affine transform of the target (``lstsq``
    also accepts negative scales).

    Args:
        pred: predicted disparity (or whatever space the caller trains in), ``(B, 1, H, W)`` or ``(B, H, W)``.
        target: ground truth in the same space, same shape.
        mask: bool valid pixels, same shape; ``None`` means every finite target pixel.
        alignment: ``"median"`` or ``"lstsq"``.
        trim: fraction in ``[0, 1)`` of largest per-pixel losses to drop per image.
        eps: lower bound of the median-MAD scale ``s(d)``.

    Returns:
        scalar loss.
    """
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    if alignment not in ("median", "lstsq"):
        raise ValueError(f"alignment must be 'median' or 'lstsq', got {alignment!r}")
    pred, target, mask = _prepare(pred, target, mask)
    residual = _residuals(pred, target, mask, alignment, eps)  # (B, H, W)
    rho = residual.abs() if alignment == "median" else 0.5 * residual * residual  # (B, H, W)
    n_valid = mask.sum(dim=(1, 2))  # (B,)
    if trim > 0.0:
        rho_flat = torch.where(mask, rho, rho.new_full((), float("inf"))).flatten(1)  # (B, H*W)
        rho_sorted = rho_flat.sort(dim=1).values  # (B, H*W), invalid (inf) last
        n_keep = n_valid - torch.floor(trim * n_valid.to(rho.dtype)).long()  # (B,)
        rank = torch.arange(rho_sorted.shape[1], device=rho.device)  # (H*W,)
        keep = rank[None, :] < n_keep[:, None]  # (B, H*W)
        per_image = torch.where(keep, rho_sorted, rho.new_zeros(())).sum(dim=1) / n_keep.clamp_min(1)
    else:
        per_image = (rho * mask).sum(dim=(1, 2)) / n_valid.clamp_min(1)  # (B,)
    return _mean_over_valid_images(per_image, n_valid > 0)


def gradient_matching_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    scales: int = 4,
    alignment: Literal["lstsq", "median", "none"] = "lstsq",
    eps: float = 1e-6,
) -> Tensor:
    """Multi-scale gradient matching loss (MiDaS [0] eq. 11; used on synthetic labels by DA V2 [2]).

        L_reg = Σ_{k=0}^{K−1} (1/M_k) Σ_i ( |∇x R^k_i| + |∇y R^k_i| )

    where ``R = s · d + t − d*`` is the residual after least-squares alignment (``alignment="lstsq"``;
    ``"median"`` uses ``R = d̂ − d̂*`` of :func:`normalize_median_mad`, ``"none"`` uses ``R = d − d*`` for
    inputs the caller already aligned). ``R^k`` is ``R`` subsampled by ``2^k`` (every ``2^k``-th row and
    column); a finite difference counts only where both of its pixels are valid, and ``M_k`` is the
    number of valid pixels at scale ``k``. The alignment is computed once, at full resolution.
    Batch reduction: mean over images with valid pixels (see the module docstring).

    Args:
        pred: ``(B, 1, H, W)`` or ``(B, H, W)``, in the training space (disparity for Depth Anything).
        target: same shape and space.
        mask: bool valid pixels, same shape; ``None`` means every finite target pixel.
        scales: number of scales ``K`` (>= 1).
        alignment: how ``R`` is formed, see above.
        eps: lower bound of the median-MAD scale for ``alignment="median"``.

    Returns:
        scalar loss.
    """
    # Adapted from https://gist.github.com/dvdhfnr/732c26b61a0e63a0abc8a5d769dbebd0 (MiDaS authors' loss)
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    pred, target, mask = _prepare(pred, target, mask)
    residual = _residuals(pred, target, mask, alignment, eps)  # (B, H, W), 0 off the mask
    per_image = residual.new_zeros(residual.shape[0])  # (B,)
    for k in range(scales):
        step = 2**k
        r = residual[:, ::step, ::step]  # (B, H_k, W_k)
        m = mask[:, ::step, ::step]  # (B, H_k, W_k)
        mx = m[:, :, 1:] & m[:, :, :-1]  # (B, H_k, W_k - 1)
        my = m[:, 1:, :] & m[:, :-1, :]  # (B, H_k - 1, W_k)
        gx = (r[:, :, 1:] - r[:, :, :-1]).abs() * mx
        gy = (r[:, 1:, :] - r[:, :-1, :]).abs() * my
        n_k = m.sum(dim=(1, 2)).clamp_min(1)  # (B,)
        per_image = per_image + (gx.sum(dim=(1, 2)) + gy.sum(dim=(1, 2))) / n_k
    return _mean_over_valid_images(per_image, mask.flatten(1).any(dim=1))


class ScaleShiftInvariantLoss(nn.Module):
    """Scale-and-shift-invariant loss of Depth Anything / MiDaS; see :func:`ssi_loss`.

    Args:
        alignment: ``"median"`` (median/MAD normalisation + L1, Depth Anything) or ``"lstsq"``
            (least-squares alignment + ½ squared error, MiDaS ssimse).
        trim: fraction of the largest per-pixel losses dropped per image (0.1 in Depth Anything V2).
        eps: lower bound of the median-MAD scale.

    Shapes: ``pred``, ``target`` ``(B, 1, H, W)`` or ``(B, H, W)``; ``mask`` bool, same shape.
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

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return ssi_loss(pred, target, mask, alignment=self.alignment, trim=self.trim, eps=self.eps)

    def extra_repr(self) -> str:
        return f"alignment={self.alignment!r}, trim={self.trim}"


class GradientMatchingLoss(nn.Module):
    """Multi-scale gradient matching loss of MiDaS; see :func:`gradient_matching_loss`.

    Args:
        scales: number of scales (subsampling by ``2^k``, ``k < scales``).
        alignment: ``"lstsq"`` (MiDaS), ``"median"`` or ``"none"`` (inputs already aligned).
        eps: lower bound of the median-MAD scale.

    Shapes: ``pred``, ``target`` ``(B, 1, H, W)`` or ``(B, H, W)``; ``mask`` bool, same shape.
    """

    def __init__(
        self, scales: int = 4, alignment: Literal["lstsq", "median", "none"] = "lstsq", eps: float = 1e-6
    ) -> None:
        super().__init__()
        if scales < 1:
            raise ValueError(f"scales must be >= 1, got {scales}")
        if alignment not in ("lstsq", "median", "none"):
            raise ValueError(f"alignment must be 'lstsq', 'median' or 'none', got {alignment!r}")
        self.scales = scales
        self.alignment = alignment
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return gradient_matching_loss(
            pred, target, mask, scales=self.scales, alignment=self.alignment, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"scales={self.scales}, alignment={self.alignment!r}"
