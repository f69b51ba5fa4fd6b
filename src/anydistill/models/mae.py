"""Masked autoencoder (He et al. [0]) over any timm ViT.

Structure (``N`` images, ``L = (S/p)²`` patches of ``p²·3`` pixels, ``r`` = ``mask_ratio``):

- random masking: per image, a uniformly random subset of ``L_keep = int(L·(1 − r))`` patches is kept
  (argsort of uniform noise, as the official ``random_masking``); ``mask (N, L)`` is 1 on the removed
  patches;
- encoder: the timm ViT's patch embedding + a fixed 2-D sine-cosine position embedding (as MAE; the
  ViT's own is overwritten and frozen) (+ class/register tokens), then only the kept tokens through its
  blocks and final norm → ``(N, P + L_keep, D)``;
- decoder: a linear map to ``decoder_dim``, a learned mask token in every removed position (tokens
  un-shuffled back to image order), fixed 2-D sine-cosine position embedding, ``decoder_depth``
  transformer blocks (timm's ``Block``), LayerNorm and a linear prediction of each patch's pixels →
  ``(N, L, p²·3)`` (prefix tokens dropped).

The loss (:func:`anydistill.losses.mae.mae_loss`) is taken on the removed patches only. The official
decoder is 8 blocks of width 512 with 16 heads; smaller ones (e.g. 2 × 128) suit small images.
After pre-training only ``encoder`` is kept (its timm weights: :meth:`EmbeddingEncoder.save_timm_weights`).

Written here: timm has the ViT but not MAE's masking and decoder; lightly's ``MaskedVisionTransformerTIMM``
and ``MAEDecoderTIMM`` are the reference the tests and benchmarks compare with.

- [0] He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
  https://arxiv.org/abs/2111.06377 (``models_mae.py`` in
  https://github.com/facebookresearch/mae/blob/efb2a8062c206524e35e47d04501ed4f544c0ae8/models_mae.py)
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from anydistill.models.ssl_heads import EmbeddingEncoder

__all__ = ["MaskedAutoencoder", "random_masking"]


def random_masking(
    batch: int, length: int, mask_ratio: float, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """MAE's per-sample random masking.

    Returns:
        ``ids_keep (N, L_keep)`` (the kept patches, in shuffled order), ``mask (N, L)`` float, 1 = removed,
        in image order, and ``ids_restore (N, L)`` (the inverse permutation), with
        ``L_keep = int(L · (1 − mask_ratio))``, at least 1.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = max(1, int(length * (1 - mask_ratio)))
    noise = torch.rand(batch, length, device=device, generator=generator)  # (N, L)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to image order
    return ids_shuffle[:, :keep], mask, ids_restore


class MaskedAutoencoder(nn.Module):
    """MAE on the timm ViT ``encoder`` (e.g. ``vit_small_patch16_224``) at input size ``img_size``.

    ``forward(x (N, 3, S, S)) -> (pred (N, L, p²·3), mask (N, L))``.

    Args:
        encoder: a timm ViT name (a plain ViT: patch embedding, position embedding, blocks).
        img_size: the (square) input size, a multiple of the patch size.
        mask_ratio: fraction of patches removed (MAE: 0.75).
        decoder_dim, decoder_depth, decoder_heads: the decoder's width, blocks and heads (MAE: 512, 8, 16).
        **timm_kwargs: for ``timm.create_model``.
    """

    def __init__(
        self,
        encoder: str = "vit_small_patch16_224",
        img_size: int = 224,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        probe = EmbeddingEncoder.probe(encoder, **timm_kwargs)
        if not probe.is_vit or not hasattr(probe.model, "_pos_embed"):
            raise ValueError(f"MAE needs a plain ViT encoder; {encoder!r} is not one")
        self.encoder = EmbeddingEncoder(encoder, img_size=img_size, **timm_kwargs)
        vit = self.encoder.model
        patch = self.encoder.patch_size
        assert patch is not None
        if img_size % patch:
            raise ValueError(
                f"{encoder!r}: image size {img_size} is not a multiple of the patch size {patch}; use "
                f"{max(patch, round(img_size / patch) * patch)}"
            )
        self.patch_size, self.img_size, self.mask_ratio = patch, img_size, mask_ratio
        self.grid = img_size // patch
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        dim = self.encoder.dim
        if getattr(vit, "pos_embed", None) is not None:
            # MAE's encoder position embedding is fixed 2-D sine-cosine (class/register tokens: 0), not
            # learned: the official code builds it so and sets requires_grad=False.
            with torch.no_grad():
                grid_pos = build_sincos2d_pos_embed((self.grid, self.grid), dim)  # (L, D)
                prefix_len = vit.pos_embed.shape[1] - grid_pos.shape[0]
                vit.pos_embed.copy_(torch.cat([grid_pos.new_zeros(prefix_len, dim), grid_pos])[None])
            vit.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = build_sincos2d_pos_embed((self.grid, self.grid), decoder_dim)  # (L, decoder_dim)
        prefix = torch.zeros(self.num_prefix_tokens, decoder_dim)
        self.register_buffer("decoder_pos_embed", torch.cat([prefix, pos])[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_pred, *self.decoder_blocks, self.decoder_norm):
            module.apply(_init_weights)

    def forward_encoder(self, x: Tensor, ids_keep: Tensor) -> Tensor:
        """``x (N, 3, S, S)``, ``ids_keep (N, L_keep)`` → ``(N, P + L_keep, D)`` (P prefix tokens)."""
        vit = self.encoder.model
        tokens = vit._pos_embed(vit.patch_embed(x))  # (N, P + L, D), position embedding added
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens :]
        index = ids_keep[..., None].expand(-1, -1, patches.shape[-1])
        tokens = torch.cat([prefix, torch.gather(patches, 1, index)], dim=1)
        tokens = vit.norm_pre(tokens)
        for block in vit.blocks:
            tokens = block(tokens)
        return vit.norm(tokens)

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``latent (N, P + L_keep, D)`` → predicted pixels ``(N, L, p²·3)`` of every patch."""
        y = self.decoder_embed(latent)  # (N, P + L_keep, d)
        prefix, visible = y[:, : self.num_prefix_tokens], y[:, self.num_prefix_tokens :]
        n, length = ids_restore.shape
        masks = self.mask_token.expand(n, length - visible.shape[1], -1)
        patches = torch.cat([visible, masks], dim=1)  # (N, L, d), shuffled order
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))
        y = torch.cat([prefix, patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            y = block(y)
        return self.decoder_pred(self.decoder_norm(y))[:, self.num_prefix_tokens :]

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"MAE input must be {self.img_size}², got {tuple(x.shape[-2:])}")
        ids_keep, mask, ids_restore = random_masking(
            x.shape[0], self.grid * self.grid, self.mask_ratio, x.device, generator
        )
        return self.forward_decoder(self.forward_encoder(x, ids_keep), ids_restore), mask


def _init_weights(m: nn.Module) -> None:
    """MAE's initialisation of the decoder: Xavier-uniform linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
