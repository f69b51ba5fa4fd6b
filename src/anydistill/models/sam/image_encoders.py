"""Image encoders for :class:`~anydistill.models.sam.sam.Sam`: ``(B, 3, S, S)`` → ``(B, 256, S/16, S/16)``.

Both take the normalised, padded square input of ``Sam.preprocess`` (``S = img_size``, 1024 for SAM)
and expose ``img_size`` (the predictor resizes the long side to it) and ``out_chans``.

* :class:`SamViTEncoder`: SAM's own ViT-B/L/H (Kirillov et al., ICCV 2023, appendix A "Image
  encoder": an MAE ViT/16 with 14×14 windowed attention, four global-attention blocks, decomposed
  relative positions, and a neck 1x1 conv → LayerNorm2d → 3x3 conv → LayerNorm2d to 256 channels).
  The ViT *is* timm's ``samvit_{base,large,huge}_patch16`` (``timm.models.vision_transformer_sam``),
  held as ``trunk``; its ``forward_features`` already ends with SAM's neck. ``checkpoint.py`` maps an
  official checkpoint's ``image_encoder.*`` to ``image_encoder.trunk.*``.
* :class:`StudentImageEncoder`: any timm backbone (through
  :class:`~anydistill.models.backbones.TimmBackbone`) plus a SAM-style neck. With a stride-32 last
  stage its feature is fused into the stride-16 one, FPN-style (Lin et al., CVPR 2017,
  https://arxiv.org/abs/1612.03144): ``y = P16(f16) + up2(P32(f32))`` where ``P`` are 1x1 convs to
  256 channels. (This is SAM's neck's 1x1 conv applied to the concatenation ``[f16, up2(f32)]``,
  with the stride-32 half moved before the upsampling, where it is 4× cheaper.) Then LayerNorm2d →
  3x3 conv → LayerNorm2d, as in SAM's neck.

Both have timm's feature API (see :mod:`anydistill.models.task_models`): ``forward_intermediates``
returns the image embedding (exactly ``forward``'s) and the selected taps, ``forward_embedding`` the
embedding's global average ``(B, out_chans)``, and ``feature_channels``/``feature_reductions`` describe
the taps: the ViT's blocks (before the neck), the student's backbone maps (before the laterals).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from anydistill.models.backbones import TimmBackbone, _feature_info_list, _meta_model, is_plain_vit
from anydistill.models.task_models import (
    FeatureIndices,
    check_output_fmt,
    format_taps,
    pooled_embedding,
    take_indices,
)

SAM_PATCH_SIZE = 16

#: SAM's ViT sizes (segment_anything/build_sam.py) and the timm model that implements each.
SAM_VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": dict(
        timm_name="samvit_base_patch16",
        embed_dim=768,
        depth=12,
        num_heads=12,
        global_attn_indexes=(2, 5, 8, 11),
    ),
    "vit_l": dict(
        timm_name="samvit_large_patch16",
        embed_dim=1024,
        depth=24,
        num_heads=16,
        global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": dict(
        timm_name="samvit_huge_patch16",
        embed_dim=1280,
        depth=32,
        num_heads=16,
        global_attn_indexes=(7, 15, 23, 31),
    ),
}


class SamViTEncoder(nn.Module):
    """SAM's ViT image encoder (timm ``samvit_*``): ``(B, 3, S, S)`` → ``(B, out_chans, S/16, S/16)``.

    Args:
        timm_name: ``samvit_base_patch16`` / ``samvit_large_patch16`` / ``samvit_huge_patch16``.
        img_size: S, the padded square input (1024). The absolute position embedding is
            ``(1, S/16, S/16, D)`` and global blocks' relative positions ``(2 S/16 - 1, D/heads)``.
        out_chans: neck width (256).
        embed_dim, depth, num_heads, global_attn_indexes, window_size: the ViT's shape; ``None``
            keeps the timm model's (i.e. SAM's) value. Tests use tiny ones.
        **timm_kwargs: more ``VisionTransformerSAM`` arguments (``drop_path_rate``, ...).

    LayerNorms use ``eps=1e-6`` as SAM's (timm's ``samvit_*`` default is 1e-5).

    Taps of :meth:`forward_intermediates`: every block's output ``(B, embed_dim, S/16, S/16)``, before
    the neck (timm's ``norm=False``; timm's ``norm=True`` would run the whole neck on each tap).
    """

    def __init__(
        self,
        timm_name: str = "samvit_base_patch16",
        img_size: int = 1024,
        out_chans: int = 256,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        global_attn_indexes: Sequence[int] | None = None,
        window_size: int | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if img_size % SAM_PATCH_SIZE:
            raise ValueError(f"img_size must be a multiple of {SAM_PATCH_SIZE}, got {img_size}")
        shape = dict(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            global_attn_indexes=None if global_attn_indexes is None else list(global_attn_indexes),
            window_size=window_size,
        )
        kwargs = {k: v for k, v in shape.items() if v is not None}
        self.trunk = timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=0,
            global_pool="",
            img_size=img_size,
            neck_chans=out_chans,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            **kwargs,
            **timm_kwargs,
        )
        self.timm_name = timm_name
        self.img_size = img_size
        self.out_chans = out_chans
        self.patch_size = SAM_PATCH_SIZE

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each tap (block output, ``embed_dim``) of :meth:`forward_intermediates`."""
        return [int(i["num_chs"]) for i in self.trunk.feature_info]

    @property
    def feature_reductions(self) -> list[int]:
        """Stride of each tap (the patch size, 16)."""
        return [int(i["reduction"]) for i in self.trunk.feature_info]

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, 3, S, S)`` normalised → ``(B, out_chans, S/16, S/16)``."""
        return self.trunk.forward_features(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: FeatureIndices = None,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """``x (B, 3, S, S)`` normalised → (image embedding, [block outputs]) through timm's samvit.

        Args:
            x: as :meth:`forward`.
            indices: blocks to return (:func:`~anydistill.models.task_models.take_indices`).
            output_fmt: "NCHW" → ``(B, embed_dim, S/16, S/16)``; "NLC" → ``(B, (S/16)², embed_dim)``.
            intermediates_only: return only the blocks' outputs (blocks after the last one asked for,
                and the neck, do not run).

        Returns:
            ``[taps]`` or ``(embedding (B, out_chans, S/16, S/16), [taps])``, the embedding being exactly
            :meth:`forward`'s.
        """
        take = take_indices(len(self.feature_channels), indices)
        check_output_fmt(output_fmt)
        out = self.trunk.forward_intermediates(
            x,
            indices=take,
            norm=False,  # raw blocks; timm's samvit only lays them out as NCHW
            stop_early=intermediates_only,
            output_fmt="NCHW",
            intermediates_only=intermediates_only,
        )
        if intermediates_only:
            return format_taps(out, output_fmt)
        embedding, taps = out
        return embedding, format_taps(taps, output_fmt)

    def forward_embedding(self, x: Tensor) -> Tensor:
        """``x (B, 3, S, S)`` normalised → ``(B, out_chans)``: the global average of the image embedding."""
        return pooled_embedding(self(x))


class StudentImageEncoder(nn.Module):
    """A light timm backbone + SAM-style neck: ``(B, 3, S, S)`` → ``(B, out_chans, S/16, S/16)``.

    Args:
        backbone: a timm model name with a stride-16 stage (CNNs: the last stride-16 stage is tapped,
            and the last stride-32 stage too if there is one; plain ViTs: the last block, patch 16).
        img_size: S, the padded square input (a multiple of 32 for CNNs).
        out_chans: neck width (256, the prompt embedding width).
        pretrained: initialise the backbone from ``backbone_checkpoint_path`` (a local timm weights
            file; nothing is downloaded).
        backbone_checkpoint_path: that file.
        backbone_kwargs: more ``timm.create_model`` arguments.
        channels_last: run the convolutions in channels-last memory format (the input is converted;
            ~20-30 % faster on CPU with oneDNN, and what tensor cores want). Results are unchanged.

    Attributes: ``backbone`` (:class:`TimmBackbone`), ``lateral`` (1x1 convs, one per tapped stage,
    stride 16 first), ``neck`` (LayerNorm2d → 3x3 conv → LayerNorm2d).

    Taps of :meth:`forward_intermediates`: the backbone's maps (``feature_channels``,
    ``feature_reductions``: stride 16, then 32 if fused).
    """

    def __init__(
        self,
        backbone: str = "mobilenetv4_conv_small",
        img_size: int = 1024,
        out_chans: int = 256,
        pretrained: bool = False,
        backbone_checkpoint_path: str | Path | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        kwargs = dict(backbone_kwargs or {})
        probe = _meta_model(backbone, **kwargs)
        reductions = [int(i["reduction"]) for i in _feature_info_list(probe)]
        at = {r: i for i, r in enumerate(reductions)}  # the last stage (ViT: block) of each stride
        if 16 not in at:
            raise ValueError(
                f"student backbone {backbone!r} has no stride-16 stage (strides {sorted(set(reductions))}); "
                "SAM's image embedding is at 1/16"
            )
        indices = [-1] if is_plain_vit(probe) else [at[16]] + ([at[32]] if 32 in at else [])
        self.backbone = TimmBackbone(
            backbone,
            pretrained=pretrained,
            out_indices=indices,
            checkpoint_path=backbone_checkpoint_path,
            **kwargs,
        )
        if self.backbone.reductions[0] != SAM_PATCH_SIZE:
            raise ValueError(
                f"student backbone {backbone!r} gives stride {self.backbone.reductions[0]}, need 16"
            )
        if img_size % self.backbone.input_multiple:
            raise ValueError(
                f"img_size {img_size} must be a multiple of {self.backbone.input_multiple} for {backbone!r}"
            )
        self.lateral = nn.ModuleList(
            nn.Conv2d(c, out_chans, kernel_size=1, bias=False) for c in self.backbone.channels
        )
        self.neck = nn.Sequential(
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.backbone_name = backbone
        self.channels_last = channels_last
        self.img_size = img_size
        self.out_chans = out_chans
        self.patch_size = SAM_PATCH_SIZE

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each tap (backbone map) of :meth:`forward_intermediates`."""
        return list(self.backbone.channels)

    @property
    def feature_reductions(self) -> list[int]:
        """Stride of each tap (16, then 32 when a stride-32 stage is fused)."""
        return list(self.backbone.reductions)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, 3, S, S)`` normalised → ``(B, out_chans, S/16, S/16)``."""
        return self._embed(self._backbone_maps(x))

    def _backbone_maps(self, x: Tensor) -> list[Tensor]:
        """``x (B, 3, S, S)`` → ``[(B, C16, S/16, S/16), optionally (B, C32, S/32, S/32)]``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def _embed(self, feats: list[Tensor]) -> Tensor:
        """Backbone maps → FPN-style fusion at 1/16 → neck → ``(B, out_chans, S/16, S/16)``."""
        y = self.lateral[0](feats[0])  # (B, out, S/16, S/16)
        for f, proj in zip(feats[1:], self.lateral[1:], strict=True):
            y = y + F.interpolate(proj(f), size=y.shape[-2:], mode="bilinear", align_corners=False)
        return self.neck(y)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: FeatureIndices = None,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """``x (B, 3, S, S)`` normalised → (image embedding, [backbone maps]) from one backbone pass.

        Args:
            x: as :meth:`forward`.
            indices: maps to return (:func:`~anydistill.models.task_models.take_indices`).
            output_fmt: "NCHW" → ``(B, C_i, S / r_i, S / r_i)``; "NLC" → ``(B, (S / r_i)², C_i)``.
            intermediates_only: return only the maps (the laterals and the neck do not run).

        Returns:
            ``[maps]`` or ``(embedding (B, out_chans, S/16, S/16), [maps])``, the embedding being exactly
            :meth:`forward`'s.
        """
        take = take_indices(len(self.feature_channels), indices)
        check_output_fmt(output_fmt)
        feats = self._backbone_maps(x)
        taps = format_taps([feats[i] for i in take], output_fmt)
        if intermediates_only:
            return taps
        return self._embed(feats), taps

    def forward_embedding(self, x: Tensor) -> Tensor:
        """``x (B, 3, S, S)`` normalised → ``(B, out_chans)``: the global average of the image embedding."""
        return pooled_embedding(self(x))
