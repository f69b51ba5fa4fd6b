"""U-Net decoder (Ronneberger et al., "U-Net", MICCAI 2015) over a backbone's multi-scale maps.

The block structure is segmentation_models_pytorch's ``UnetDecoder`` (nearest upsampling to the skip's
size, concatenation ``[upsampled, skip]``, two conv3×3 → BN → ReLU), so a decoder built here computes what
smp's computes with the same weights (``tests/models/test_heads.py`` checks it against smp). It is
written here rather than imported because the zoo's checkpoints must not depend on another package's
module layout, and smp is only a benchmark dependency. Unlike the Panoptic-FPN branch (``fpn.py``), whose
prediction is made at the finest tap's stride and upsampled bilinearly, the U-Net decodes up to full
resolution with skip connections, which keeps thin structures (cell membranes, object edges).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3×3 conv (no bias) → BatchNorm → ReLU (smp's ``Conv2dReLU`` with batch norm)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


class UNetBlock(nn.Module):
    """``x (B, C_in, h, w)``, ``skip (B, C_skip, H, W)`` or None → nearest-upsample x to the target size,
    concatenate the skip, conv3×3-BN-ReLU twice → ``(B, C_out, H, W)``."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = _conv_bn_relu(out_channels, out_channels)

    def forward(self, x: Tensor, size: Sequence[int], skip: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, size=tuple(size), mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """U-Net decoder → per-pixel class logits.

    For taps ``f_0 … f_{n-1}`` (finest first) of shapes ``(B, C_i, H / r_i, W / r_i)``:

    1. ``x = f_{n-1}``; for i = n-2 … 0: ``x = block(x ↑ to f_i's size, skip f_i)``;
    2. then log2(r_0 / s) blocks without skip, each ×2, up to stride ``s = output_stride`` (smp: s = 1,
       its last block decodes at the input resolution);
    3. ``conv3×3(→ num_classes)`` (smp's segmentation head) at stride s, then (s > 1) bilinear upsampling
       to the input size: logits ``(B, num_classes, H, W)``.

    ``output_stride = 2`` drops the full-resolution block, the most expensive one of a light decoder
    (two 3×3 convs over every input pixel).

    Args:
        in_channels: channels C_i of each tap (finest first).
        in_reductions: stride r_i of each tap (strictly increasing powers of two).
        num_classes: K output classes.
        decoder_channels: output width of each block, deepest first: ``n - 1 + log2(r_0 / s)`` values
            (smp's U-Net: (256, 128, 64, 32, 16) over ResNet taps at strides 2 … 32).
        output_stride: the stride s of the last decoder block, a power of two ≤ r_0 (1: full resolution).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_reductions: Sequence[int],
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_reductions) or len(in_channels) < 2:
            raise ValueError("in_channels and in_reductions must have the same length, at least 2")
        if (
            any(b <= a for a, b in zip(in_reductions, in_reductions[1:], strict=False))
            or in_reductions[0] < 1
        ):
            raise ValueError(f"in_reductions must increase from >= 1, got {list(in_reductions)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        final = round(math.log2(in_reductions[0]))
        if 2**final != in_reductions[0]:
            raise ValueError(f"the finest tap's stride must be a power of two, got {in_reductions[0]}")
        out_log = round(math.log2(output_stride)) if output_stride >= 1 else -1
        if out_log < 0 or 2**out_log != output_stride or output_stride > in_reductions[0]:
            raise ValueError(
                f"output_stride must be a power of two <= the finest tap's stride {in_reductions[0]}, got {output_stride}"
            )
        final -= out_log
        n_blocks = len(in_channels) - 1 + final
        if len(decoder_channels) != n_blocks:
            raise ValueError(
                f"decoder_channels needs {n_blocks} values ({len(in_channels) - 1} skip blocks + {final} up to "
                f"stride {output_stride}), got {len(decoder_channels)}"
            )
        skips = list(in_channels[-2::-1]) + [0] * final  # deepest-but-one first, then the no-skip blocks
        ins = [in_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            UNetBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)
        self.num_classes = num_classes
        self.reductions = list(in_reductions)
        self.output_stride = int(output_stride)

    def forward(self, features: Sequence[Tensor], image_size: Sequence[int]) -> Tensor:
        """``features``: list of (B, C_i, h_i, w_i), finest first; ``image_size``: (H, W).
        Returns logits (B, num_classes, H, W)."""
        if len(features) != len(self.reductions):
            raise ValueError(f"expected {len(self.reductions)} feature maps, got {len(features)}")
        x = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1], strict=False):  # deepest-but-one skip first
            x = block(x, skip.shape[-2:], skip)
        h, w = x.shape[-2:]
        for block in self.blocks[len(features) - 1 :]:  # no skip: ×2 each, up to full resolution
            h, w = h * 2, w * 2
            x = block(x, (h, w))
        if self.output_stride == 1:
            if (h, w) != tuple(image_size):
                x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False)
            return self.classifier(x)
        logits = self.classifier(x)  # (B, K, H / s, W / s)
        return F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)
