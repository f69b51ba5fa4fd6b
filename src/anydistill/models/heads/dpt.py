"""DPT depth head as used by Depth Anything (V1/V2) — relative disparity from a feature pyramid.

Adapted from https://github.com/DepthAnything/Depth-Anything-V2/blob/2cbc36a8ce2cec41d38ee51153f112e87c8e42d8/depth_anything_v2/dpt.py
(``DPTHead``) and its ``util/blocks.py`` (``FeatureFusionBlock``, ``ResidualConvUnit``), which follow
DPT (Ranftl et al., "Vision Transformers for Dense Prediction", ICCV 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def pyramid_factors(in_reductions: Sequence[int]) -> list[float]:
    """Resize factor per level that turns the inputs into a stride pyramid.

    Same-stride maps (a plain ViT, stride p) become strides p/4, p/2, p, 2p as in DPT/Depth Anything:
    factors (4, 2, 1, 0.5), generally ``2 ** (n - 2 - i)``. Maps that are already multi-scale (a CNN,
    strides 4, 8, 16, 32) are kept: factor 1.
    """
    n = len(in_reductions)
    if n > 1 and len(set(in_reductions)) == 1:
        return [2.0 ** (n - 2 - i) for i in range(n)]
    return [1.0] * n


def resize_layer(channels: int, factor: float) -> nn.Module:
    """DPT "reassemble" resize: ``factor`` > 1 → k×k stride-k transposed conv (k = factor); 1 → identity;
    < 1 → 3×3 conv with stride 1/factor. Shapes: (B, C, h, w) → (B, C, h·factor, w·factor)."""
    if factor > 1:
        k = round(factor)
        if not math.isclose(k, factor):
            raise ValueError(f"upsampling factor must be an integer, got {factor}")
        return nn.ConvTranspose2d(channels, channels, kernel_size=k, stride=k, padding=0)
    if factor == 1:
        return nn.Identity()
    s = round(1 / factor)
    if not math.isclose(s, 1 / factor):
        raise ValueError(f"downsampling factor must be 1/integer, got {factor}")
    return nn.Conv2d(channels, channels, kernel_size=3, stride=s, padding=1)


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: ``y = x + conv3x3(relu(conv3x3(relu(x))))``; (B, C, H, W) → same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        return x + out


class FeatureFusionBlock(nn.Module):
    """RefineNet-style fusion of a coarse path with a skip map.

    ``y = up(conv1x1(RCU_2(x + RCU_1(skip))))`` (= the reference's ``conv1x1(up(·))``) where ``up`` is bilinear (align_corners=True) to
    ``size`` (the next finer level) or ×2 when ``size`` is None. ``x``, ``skip``: (B, F, h, w) →
    (B, F, size) or (B, F, 2h, 2w).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.res_conv_unit1 = ResidualConvUnit(features)
        self.res_conv_unit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None) -> Tensor:
        if skip is not None:
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        # A 1×1 conv commutes with bilinear interpolation (weights sum to 1), so it runs before the
        # upsampling (the reference runs it after): same result, 4× fewer multiply-adds.
        x = self.out_conv(x)
        if size is None:
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class DPTHead(nn.Module):
    """DPT head (Depth Anything structure) → non-negative relative disparity.

    For levels i = 0 (finest) … n-1 with inputs ``f_i (B, C_i, H / r_i, W / r_i)``:

    1. reassemble: ``g_i = resize_i(conv1x1_i(f_i))`` → (B, out_channels[i], ·) where ``resize_i`` is a
       4×/2× transposed conv, identity or 3×3 stride-2 conv for same-stride ViT maps (strides p/4, p/2,
       p, 2p of the patch grid), identity for a CNN pyramid (see :func:`pyramid_factors`);
    2. ``layer_rn``: ``h_i = conv3x3(g_i)`` → (B, features, ·) (no bias);
    3. fuse coarse → fine: ``p_{n-1} = Fuse_{n-1}(h_{n-1}, size(h_{n-2}))``,
       ``p_i = Fuse_i(p_{i+1}, h_i, size(h_{i-1}))``, ``p_0`` upsampled ×2;
    4. output: ``conv3x3(features → features/2)`` → bilinear to (H, W) → ``conv3x3(→ head_hidden)`` →
       ReLU → ``conv1x1(→ 1)`` → ReLU: disparity (B, 1, H, W) ≥ 0.

    Args:
        in_channels: channels C_i of each input map (finest first).
        in_reductions: stride r_i of each input map w.r.t. the image.
        features: fusion width F (64 for Depth-Anything-V2-Small, 128 for Base).
        out_channels: per-level projection widths ([48, 96, 192, 384] for V2-Small).
        head_hidden: width of the last 3×3 conv (32 in Depth Anything).
        resize_factors: override :func:`pyramid_factors` (e.g. (4, 2, 1, 0.5)).
        late_upsample: False (Depth Anything): step 4 upsamples the (B, F/2, ·) map to (H, W) and runs
            the last two convs at full resolution. True: run them at stride r_0'/2 and upsample the
            1-channel disparity (bilinear keeps it ≥ 0) — ~90 % of the head's cost at 518² on a CPU
            is those full-resolution convs, so CPU students use this.
        output_bias: initial bias of the last 1×1 conv (> 0 keeps the final ReLU alive at init).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_reductions: Sequence[int],
        features: int,
        out_channels: Sequence[int],
        head_hidden: int = 32,
        resize_factors: Sequence[float] | None = None,
        late_upsample: bool = False,
        output_bias: float = 1.0,
    ) -> None:
        super().__init__()
        n = len(in_channels)
        if not (len(in_reductions) == len(out_channels) == n) or n == 0:
            raise ValueError(
                f"in_channels ({len(in_channels)}), in_reductions ({len(in_reductions)}) and out_channels "
                f"({len(out_channels)}) must have the same non-zero length"
            )
        factors = list(resize_factors) if resize_factors is not None else pyramid_factors(in_reductions)
        if len(factors) != n:
            raise ValueError(f"resize_factors needs {n} entries, got {len(factors)}")
        self.resize_factors = factors
        self.late_upsample = late_upsample
        self.reductions = [r / f for r, f in zip(in_reductions, factors, strict=True)]
        self.projects = nn.ModuleList(
            nn.Conv2d(c, o, 1) for c, o in zip(in_channels, out_channels, strict=True)
        )
        self.resize_layers = nn.ModuleList(
            resize_layer(o, f) for o, f in zip(out_channels, factors, strict=True)
        )
        self.layer_rn = nn.ModuleList(nn.Conv2d(o, features, 3, padding=1, bias=False) for o in out_channels)
        self.refinenets = nn.ModuleList(FeatureFusionBlock(features) for _ in range(n))
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, head_hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_hidden, 1, 1),
            nn.ReLU(inplace=True),
        )
        # With PyTorch's default init the last pre-activation is nearly constant (the bias dominates), so
        # about half of all random heads output 0 everywhere and get no gradient through the final ReLU.
        nn.init.constant_(self.output_conv2[2].bias, output_bias)

    def forward(self, features: Sequence[Tensor], image_size: Sequence[int]) -> Tensor:
        """``features``: list of (B, C_i, h_i, w_i), finest first; ``image_size``: (H, W).
        Returns disparity (B, 1, H, W) ≥ 0."""
        if len(features) != len(self.projects):
            raise ValueError(f"expected {len(self.projects)} feature maps, got {len(features)}")
        layers = [
            rn(resize(proj(f)))
            for f, proj, resize, rn in zip(
                features, self.projects, self.resize_layers, self.layer_rn, strict=True
            )
        ]  # each (B, F, h_i', w_i')
        path: Tensor | None = None
        for i in reversed(range(len(layers))):
            size = layers[i - 1].shape[-2:] if i > 0 else None
            if path is None:
                path = self.refinenets[i](layers[i], size=size)
            else:
                path = self.refinenets[i](path, layers[i], size=size)
        out = self.output_conv1(path)  # (B, F/2, h_0'·2, w_0'·2)
        if self.late_upsample:
            out = self.output_conv2(out)  # (B, 1, h_0'·2, w_0'·2)
            return F.interpolate(out, size=tuple(image_size), mode="bilinear", align_corners=True)
        out = F.interpolate(out, size=tuple(image_size), mode="bilinear", align_corners=True)
        return self.output_conv2(out)  # (B, 1, H, W)
