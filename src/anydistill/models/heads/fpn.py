"""FPN semantic-segmentation decoder (the semantic branch of Panoptic FPN).

Adapted from https://github.com/facebookresearch/detectron2/blob/21b8d10c3dfa238fbaded7d5c4922d379d037f0b/detectron2/modeling/meta_arch/semantic_seg.py
(``SemSegFPNHead``), after Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019. The lateral
1×1 convs + top-down path + 3×3 output convs are torchvision's ``FeaturePyramidNetwork``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from anydistill.models.heads.dpt import pyramid_factors, resize_layer


def _conv_gn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3×3 conv → GroupNorm (≤ 32 groups dividing ``out_ch``) → ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, out_ch), out_ch),
        nn.ReLU(inplace=True),
    )


class FPNDecoder(nn.Module):
    """Panoptic-FPN semantic branch → per-pixel class logits.

    For levels i = 0 (finest) … n-1 with inputs ``f_i (B, C_i, H / r_i, W / r_i)``:

    1. (same-stride ViT maps only) ViTDet-style simple pyramid: 4×/2× transposed conv, identity,
       stride-2 conv so the maps get strides p/4 … 2p (:func:`pyramid_factors`);
    2. FPN: ``l_i = conv1x1(f_i)``; top-down ``m_{n-1} = l_{n-1}``, ``m_i = l_i + nearest_up(m_{i+1})``;
       ``p_i = conv3x3(m_i)`` → (B, fpn_channels, ·);
    3. semantic branch: each ``p_i`` goes through max(1, log2(r_i / r_0)) blocks of
       [conv3x3 → GN → ReLU → bilinear ×2] to the finest stride r_0 → (B, head_channels, H / r_0, W / r_0);
       the levels are summed;
    4. ``conv1x1(→ num_classes)`` and bilinear upsampling to (H, W): logits (B, num_classes, H, W).

    Args:
        in_channels: channels C_i of each input map (finest first).
        in_reductions: stride r_i of each input map.
        num_classes: K output classes.
        fpn_channels: FPN width (256 in Panoptic FPN).
        head_channels: semantic-branch width (128 in Panoptic FPN).
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_reductions: Sequence[int],
        num_classes: int,
        fpn_channels: int = 128,
        head_channels: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_reductions) or not in_channels:
            raise ValueError("in_channels and in_reductions must have the same non-zero length")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        factors = pyramid_factors(in_reductions)
        self.resize_layers = nn.ModuleList(
            resize_layer(c, f) for c, f in zip(in_channels, factors, strict=True)
        )
        self.reductions = [r / f for r, f in zip(in_reductions, factors, strict=True)]
        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels)
        self.scale_heads = nn.ModuleList()
        for r in self.reductions:
            n_up = max(0, round(math.log2(r / self.reductions[0])))
            blocks: list[nn.Module] = []
            for k in range(max(1, n_up)):
                blocks.append(_conv_gn_relu(fpn_channels if k == 0 else head_channels, head_channels))
                if n_up > 0:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*blocks))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, features: Sequence[Tensor], image_size: Sequence[int]) -> Tensor:
        """``features``: list of (B, C_i, h_i, w_i), finest first; ``image_size``: (H, W).
        Returns logits (B, num_classes, H, W)."""
        if len(features) != len(self.scale_heads):
            raise ValueError(f"expected {len(self.scale_heads)} feature maps, got {len(features)}")
        maps = OrderedDict(
            (str(i), resize(f))
            for i, (f, resize) in enumerate(zip(features, self.resize_layers, strict=True))
        )
        pyramid = list(self.fpn(maps).values())  # each (B, fpn_channels, h_i, w_i)
        finest = pyramid[0].shape[-2:]
        out: Tensor | None = None
        for p, head in zip(pyramid, self.scale_heads, strict=True):
            y = head(p)  # (B, head_channels, ~h_0, ~w_0)
            if y.shape[-2:] != finest:
                y = F.interpolate(y, size=finest, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        logits = self.classifier(self.dropout(out))  # (B, K, h_0, w_0)
        return F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)
