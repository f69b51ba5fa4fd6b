"""DPT head (parity with transformers' Depth Anything neck + head) and FPN decoder."""

from __future__ import annotations

import pytest
import torch

from anydistill.models.heads import DPTHead, FPNDecoder, UNetDecoder, pyramid_factors
from anydistill.models.heads.dpt import resize_layer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _hf_to_ours(hf_state: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Rename transformers' DepthAnythingNeck/Head keys to DPTHead keys (fusion order is reversed)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in hf_state.items():
        parts = k.split(".")
        if k.startswith("neck.reassemble_stage.layers."):
            i, kind = parts[3], parts[4]
            name = {"projection": "projects", "resize": "resize_layers"}[kind]
            out[f"{name}.{i}.{parts[5]}"] = v
        elif k.startswith("neck.convs."):
            out[f"layer_rn.{parts[2]}.{parts[3]}"] = v
        elif k.startswith("neck.fusion_stage.layers."):
            i = n - 1 - int(parts[3])
            if parts[4] == "projection":
                out[f"refinenets.{i}.out_conv.{parts[5]}"] = v
            else:
                unit = {"residual_layer1": "res_conv_unit1", "residual_layer2": "res_conv_unit2"}[parts[4]]
                conv = {"convolution1": "conv1", "convolution2": "conv2"}[parts[5]]
                out[f"refinenets.{i}.{unit}.{conv}.{parts[6]}"] = v
        elif k.startswith("head."):
            name = {"conv1": "output_conv1", "conv2": "output_conv2.0", "conv3": "output_conv2.2"}[parts[1]]
            out[f"{name}.{parts[2]}"] = v
        else:
            raise KeyError(k)
    return out


def test_dpt_head_matches_transformers_depth_anything() -> None:
    """Same weights, same ViT maps → same disparity as transformers' DepthAnythingNeck + head
    (an independent implementation of the Depth Anything DPT head)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.depth_anything import modeling_depth_anything as hf

    width, patch, h, w, b = 32, 14, 3, 5, 2
    neck_sizes, fusion = [8, 16, 24, 32], 16
    config = transformers.DepthAnythingConfig(
        backbone_config=transformers.Dinov2Config(hidden_size=width, num_attention_heads=2, patch_size=patch),
        reassemble_hidden_size=width,
        patch_size=patch,
        neck_hidden_sizes=neck_sizes,
        fusion_hidden_size=fusion,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )
    neck, head = hf.DepthAnythingNeck(config).eval(), hf.DepthAnythingDepthEstimationHead(config).eval()
    with torch.no_grad():
        head.conv3.bias.fill_(0.05)  # keep most outputs above the final ReLU so the check bites
    hf_state = {f"neck.{k}": v for k, v in neck.state_dict().items()}
    hf_state |= {f"head.{k}": v for k, v in head.state_dict().items()}

    ours = DPTHead([width] * 4, [patch] * 4, features=fusion, out_channels=neck_sizes).eval()
    ours.load_state_dict(_hf_to_ours(hf_state, 4), strict=True)

    maps = [torch.randn(b, width, h, w) for _ in range(4)]  # (B, C, h, w)
    tokens = [
        torch.cat([torch.randn(b, 1, width), m.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + h·w, C)
        for m in maps
    ]
    with torch.no_grad():
        expected = head(neck(tokens, h, w), h, w)  # (B, H, W)
        got = ours(maps, (h * patch, w * patch))  # (B, 1, H, W)
    assert got.shape == (b, 1, h * patch, w * patch)
    assert (got > 0).float().mean() > 0.5
    torch.testing.assert_close(got[:, 0], expected, rtol=1e-4, atol=1e-5)


def test_pyramid_factors() -> None:
    assert pyramid_factors([14, 14, 14, 14]) == [4, 2, 1, 0.5]
    assert pyramid_factors([4, 8, 16, 32]) == [1, 1, 1, 1]
    assert pyramid_factors([16]) == [1]


def test_resize_layer_rejects_fractional_factors() -> None:
    with pytest.raises(ValueError):
        resize_layer(8, 1.5)
    with pytest.raises(ValueError):
        resize_layer(8, 0.4)


@pytest.mark.parametrize("late_upsample", [False, True])
def test_dpt_head_on_cnn_pyramid_shape_nonneg_and_grads(late_upsample: bool) -> None:
    chans, reds = [8, 16, 24, 32], [4, 8, 16, 32]
    head = DPTHead(chans, reds, features=16, out_channels=[8, 8, 16, 16], late_upsample=late_upsample)
    assert all(isinstance(m, torch.nn.Identity) for m in head.resize_layers)
    H, W = 64, 96
    feats = [torch.randn(2, c, H // r, W // r, requires_grad=True) for c, r in zip(chans, reds, strict=True)]
    out = head(feats, (H, W))
    assert out.shape == (2, 1, H, W)
    assert out.min() >= 0
    out.mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_dpt_head_vit_resize_strides() -> None:
    head = DPTHead([12] * 4, [14] * 4, features=8, out_channels=[4, 4, 8, 8])
    assert head.reductions == [3.5, 7, 14, 28]


def test_dpt_head_argument_errors() -> None:
    with pytest.raises(ValueError):
        DPTHead([8, 8], [4, 8, 16], features=8, out_channels=[8, 8])
    head = DPTHead([8, 8], [4, 8], features=8, out_channels=[8, 8])
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        head([torch.randn(1, 8, 4, 4)], (16, 16))


@pytest.mark.parametrize(("reds", "hw"), [([4, 8, 16, 32], (64, 96)), ([16, 16, 16, 16], (48, 64))])
def test_fpn_decoder_shape_and_all_levels_contribute(reds: list[int], hw: tuple[int, int]) -> None:
    chans = [8, 16, 24, 32]
    dec = FPNDecoder(chans, reds, num_classes=5, fpn_channels=16, head_channels=8)
    H, W = hw
    feats = [torch.randn(2, c, H // r, W // r, requires_grad=True) for c, r in zip(chans, reds, strict=True)]
    logits = dec(feats, (H, W))
    assert logits.shape == (2, 5, H, W)
    logits.square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_fpn_vit_pyramid_strides_and_errors() -> None:
    dec = FPNDecoder([8] * 4, [16] * 4, num_classes=3, fpn_channels=8, head_channels=8)
    assert dec.reductions == [4, 8, 16, 32]
    with pytest.raises(ValueError):
        FPNDecoder([8], [4], num_classes=0)
    with pytest.raises(ValueError):
        FPNDecoder([8, 8], [4], num_classes=3)


def test_unet_decoder_matches_segmentation_models_pytorch() -> None:
    smp_unet = pytest.importorskip("segmentation_models_pytorch.decoders.unet.decoder")
    smp_modules = pytest.importorskip("segmentation_models_pytorch.base.heads")
    chans, reds, widths = [16, 24, 32, 48, 64], [2, 4, 8, 16, 32], (40, 32, 24, 16, 8)
    ours = UNetDecoder(chans, reds, num_classes=3, decoder_channels=widths).eval()
    ref = smp_unet.UnetDecoder([3, *chans], widths, n_blocks=5).eval()
    head = smp_modules.SegmentationHead(widths[-1], 3, kernel_size=3).eval()
    # Same weights: the blocks share smp's layout; the classifier is smp's segmentation head's conv.
    for name, p in [*ours.named_parameters(), *ours.named_buffers()]:
        if name.endswith("running_var"):
            p.data.uniform_(0.5, 1.5)  # a variance is positive
        elif p.dtype.is_floating_point:
            p.data.normal_(0, 0.2)
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if k.startswith("blocks.")}, strict=True)
    head[0].load_state_dict(ours.classifier.state_dict())
    H, W = 64, 96
    feats = [torch.randn(2, c, H // r, W // r) for c, r in zip(chans, reds, strict=True)]
    with torch.no_grad():
        expected = head(ref([torch.randn(2, 3, H, W), *feats]))
        torch.testing.assert_close(ours(feats, (H, W)), expected, rtol=1e-5, atol=1e-5)


def test_unet_decoder_from_stride_four_taps_reaches_full_resolution_with_gradients() -> None:
    chans, reds = [8, 16, 24, 32], [4, 8, 16, 32]
    dec = UNetDecoder(chans, reds, num_classes=5, decoder_channels=(24, 16, 12, 8, 8))
    assert len(dec.blocks) == 3 + 2  # three skip blocks, then two ×2 blocks from stride 4 to 1
    feats = [
        torch.randn(2, c, 64 // r, 96 // r, requires_grad=True) for c, r in zip(chans, reds, strict=True)
    ]
    logits = dec(feats, (64, 96))
    assert logits.shape == (2, 5, 64, 96)
    logits.square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    # an input size that is not a multiple of the deepest stride still gets logits of its own size
    odd = [torch.randn(1, c, -(-50 // r), -(-70 // r)) for c, r in zip(chans, reds, strict=True)]
    assert dec(odd, (50, 70)).shape == (1, 5, 50, 70)


def test_unet_decoder_output_stride_drops_the_full_resolution_block() -> None:
    """``output_stride=2``: the same blocks as the full decoder minus the last, the classifier at stride 2
    and the logits upsampled bilinearly, i.e. exactly ``interpolate(classifier(blocks[:-1](x)))``."""
    import torch.nn.functional as F

    chans, reds = [8, 16, 24, 32, 40], [2, 4, 8, 16, 32]
    torch.manual_seed(0)
    full = UNetDecoder(chans, reds, num_classes=3, decoder_channels=(24, 16, 12, 8, 8)).eval()
    half = UNetDecoder(chans, reds, num_classes=3, decoder_channels=(24, 16, 12, 8), output_stride=2).eval()
    assert len(half.blocks) == 4
    half.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("blocks.4.")})
    feats = [
        torch.randn(2, c, 64 // r, 96 // r, requires_grad=True) for c, r in zip(chans, reds, strict=True)
    ]
    out = half(feats, (64, 96))
    x = feats[-1]
    for block, skip in zip(full.blocks[:4], feats[-2::-1], strict=True):
        x = block(x, skip.shape[-2:], skip)
    expected = F.interpolate(full.classifier(x), size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)
    assert out.shape == (2, 3, 64, 96)
    out.square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    # stride-4 taps decoding to stride 4: no block without skip at all
    assert len(UNetDecoder(chans[1:], reds[1:], 2, (8, 8, 8), output_stride=4).blocks) == 3
    for bad in (0, 3, 4):
        with pytest.raises(
            ValueError, match="output_stride must be a power of two <= the finest tap's stride 2"
        ):
            UNetDecoder(chans, reds, 2, (8, 8, 8, 8), output_stride=bad)


def test_unet_decoder_argument_errors() -> None:
    with pytest.raises(ValueError, match="needs 5 values"):
        UNetDecoder([8, 8, 8, 8], [4, 8, 16, 32], num_classes=2, decoder_channels=(8, 8, 8))
    with pytest.raises(ValueError, match="increase"):
        UNetDecoder([8, 8], [8, 4], num_classes=2, decoder_channels=(8,))
    with pytest.raises(ValueError, match="power of two"):
        UNetDecoder([8, 8], [3, 6], num_classes=2, decoder_channels=(8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        UNetDecoder([8, 8], [1, 2], num_classes=0, decoder_channels=(8,))
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        UNetDecoder([8, 8], [1, 2], num_classes=2, decoder_channels=(8,))([torch.randn(1, 8, 4, 4)], (4, 4))
