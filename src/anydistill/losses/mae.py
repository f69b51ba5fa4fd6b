"""Masked autoencoder reconstruction loss [0]: :func:`mae_loss` / :class:`MAELoss`, with
:func:`patchify` / :func:`unpatchify` in the reference code's patch order.

- [0] He, Chen, Xie, Li, Dollár, Girshick, "Masked Autoencoders Are Scalable Vision Learners" (MAE),
  CVPR 2022, https://arxiv.org/abs/2111.06377; reference code ``patchify``, ``unpatchify`` and
  ``forward_loss`` in
  https://github.com/facebookresearch/mae/blob/6a2ba402291005b003a70e99f7c87d1a2c376b0d/models_mae.py
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from anydistill.losses.segmentation import _upcast

__all__ = ["patchify", "unpatchify", "mae_loss", "MAELoss"]


def patchify(images: Tensor, patch: int) -> Tensor:
    """Images to rows of patches, in MAE's order [0]: patches row-major, each flattened ``(p, p, C)``.

    Any ``H, W`` divisible by ``p`` (the reference assumes square images).

    Args:
        images: ``(B, C, H, W)``.
        patch: ``p``, the patch side.

    Returns:
        ``(B, L, p·p·C)`` with ``L = (H/p)·(W/p)``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    b, c, h, w = images.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"the image size {h}x{w} must be a multiple of the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)  # (B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (B, h, w, p, p, C)
    return x.reshape(b, gh * gw, patch * patch * c)  # (B, L, p·p·C)


def unpatchify(patches: Tensor, patch: int, size: tuple[int, int] | None = None) -> Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: ``(B, L, p·p·C)``.
        patch: ``p``.
        size: ``(H, W)`` of the images; None for square images (``L`` a perfect square, as [0]).

    Returns:
        ``(B, C, H, W)``.
    """
    if patches.dim() != 3:
        raise ValueError(f"patches must be (B, L, p·p·C), got {tuple(patches.shape)}")
    b, length, dim = patches.shape
    if patch < 1 or dim % (patch * patch):
        raise ValueError(f"the patch dimension {dim} must be a multiple of patch² = {patch * patch}")
    c = dim // (patch * patch)
    if size is None:
        gh = gw = math.isqrt(length)
    else:
        if size[0] % patch or size[1] % patch:
            raise ValueError(f"the image size {size} must be a multiple of the patch size {patch}")
        gh, gw = size[0] // patch, size[1] // patch
    if gh * gw != length:
        raise ValueError(f"{length} patches do not tile the image ({gh}x{gw} patches of {patch})")
    x = patches.reshape(b, gh, gw, patch, patch, c)  # (B, h, w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h, p, w, p)
    return x.reshape(b, c, gh * patch, gw * patch)  # (B, C, H, W)


def mae_loss(
    pred: Tensor, target_patches: Tensor, mask: Tensor, norm_pix: bool = True, eps: float = 1e-6
) -> Tensor:
    """MAE's reconstruction loss [0]: per-patch MSE, averaged over the masked (removed) patches.

        t̂ = (t − μ_t) / sqrt(σ²_t + ε)          (norm_pix; μ, σ² over the patch's p·p·C values, σ²
                                                  unbiased, as ``target.var(dim=-1)`` in [0])
        ℓ_bl = 1/(p·p·C) · Σ_j (pred_blj − t̂_blj)²
        L = Σ_{b,l} ℓ_bl · mask_bl / Σ_{b,l} mask_bl

    The visible patches (``mask = 0``) do not count. The targets are detached.

    Args:
        pred: ``(B, L, p·p·C)`` decoder predictions.
        target_patches: ``(B, L, p·p·C)``, e.g. ``patchify(images, p)``.
        mask: ``(B, L)``, 1 (or True) = masked / removed, 0 = visible; at least one patch masked.
        norm_pix: normalise each target patch by its own mean and variance (MAE's default recipe).
        eps: ``ε`` of the normalisation.

    Returns:
        scalar loss.
    """
    if pred.dim() != 3:
        raise ValueError(f"pred must be (B, L, p·p·C), got {tuple(pred.shape)}")
    if target_patches.shape != pred.shape:
        raise ValueError(
            f"pred and target_patches must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target_patches.shape)}"
        )
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be (B, L) = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    if norm_pix and pred.shape[2] < 2:
        raise ValueError("norm_pix needs patches of 2 or more values (a variance of one value is undefined)")
    pred = _upcast(pred)
    target = _upcast(target_patches.detach()).to(pred.dtype)  # (B, L, p·p·C)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
        var = target.var(dim=-1, keepdim=True)  # (B, L, 1), unbiased
        target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, L)
    weight = mask.to(per_patch.dtype)  # (B, L)
    count = weight.sum()
    if count == 0:  # one host sync per call
        raise ValueError("mask has no masked patch: the loss counts only masked patches")
    return (per_patch * weight).sum() / count


class MAELoss(nn.Module):
    """MAE's reconstruction loss [0]; see :func:`mae_loss`.

    Shapes: ``pred``, ``target_patches`` ``(B, L, p·p·C)``; ``mask`` ``(B, L)``, 1 = masked.

    Args:
        norm_pix: normalise each target patch by its mean and variance.
        eps: ``ε`` of the normalisation.
    """

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix = norm_pix
        self.eps = eps

    def forward(self, pred: Tensor, target_patches: Tensor, mask: Tensor) -> Tensor:
        return mae_loss(pred, target_patches, mask, self.norm_pix, self.eps)

    def extra_repr(self) -> str:
        return f"norm_pix={self.norm_pix}, eps={self.eps}"
