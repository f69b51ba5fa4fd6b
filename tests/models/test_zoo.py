"""Registered models: every one builds and trains a step; weights round-trip; overrides; errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from anydistill.errors import DataError
from anydistill.models import (
    DEFAULT_DEPTH_STUDENT,
    MODELS,
    DepthModel,
    SegmentationModel,
    build_model,
    list_models,
)

SLOW = {"depth_vitb14"}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _size(model: DepthModel | SegmentationModel) -> tuple[int, int]:
    m = model.input_multiple
    return 4 * m, 3 * m  # small, non-square: 64×48 for a CNN, 56×42 for a /14 ViT


def test_list_models_has_the_promised_names() -> None:
    names = list_models()
    expected = {
        "depth_tiny",
        "depth_small",
        "depth_vits14",
        "depth_vitb14",
        "seg_tiny",
        "seg_small",
        "seg_vits14",
    }
    assert expected <= set(names)
    assert DEFAULT_DEPTH_STUDENT == "depth_tiny"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
        for n in list_models()
        if not n.startswith(
            ("sam_", "det_")
        )  # promptable: test_sam_model.py, detection: test_detection_models.py
    ],
)
def test_every_model_builds_and_trains_a_step(name: str) -> None:
    kwargs = {"num_classes": 4} if name.startswith("seg") else {}
    model = build_model(name, **kwargs)
    H, W = _size(model)
    x = model.normalize(torch.rand(2, 3, H, W))
    out = model(x)
    if isinstance(model, DepthModel):
        assert out.shape == (2, 1, H, W)
        assert out.min() >= 0
    else:
        assert isinstance(model, SegmentationModel)
        assert out.shape == (2, 4, H, W)
        assert model.num_classes == 4
    feats = model.forward_features(x)
    assert [f.shape[1] for f in feats] == model.feature_channels
    assert [H // f.shape[2] for f in feats] == model.feature_reductions
    (out.square().mean() + out.mean()).backward()
    first = next(model.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_depth_vits14_matches_depth_anything_v2_small_sizes() -> None:
    model = build_model("depth_vits14")
    assert model.backbone.out_indices == [2, 5, 8, 11]
    assert [p.out_channels for p in model.head.projects] == [48, 96, 192, 384]
    assert model.head.layer_rn[0].out_channels == 64
    # 24.785 M in transformers' version, which also holds DINOv2's 384-d mask token.
    assert sum(p.numel() for p in model.parameters()) == 24_785_089 - 384


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    model = build_model("depth_tiny").eval()
    ckpt = tmp_path / "student.pt"
    torch.save(model.state_dict(), ckpt)
    again = build_model("depth_tiny", checkpoint_path=ckpt).eval()
    x = model.normalize(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
        assert not torch.equal(build_model("depth_tiny").eval()(x), model(x))  # loading mattered


def test_checkpoint_inside_lightning_style_file(tmp_path: Path) -> None:
    model = build_model("seg_tiny", num_classes=3).eval()
    state = {f"student.{k}": v for k, v in model.state_dict().items()}
    state["teacher.weight"] = torch.zeros(1)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, ckpt)
    again = build_model("seg_tiny", num_classes=3, checkpoint_path=ckpt).eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_wrong_checkpoint_is_a_data_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "seg.pt"
    torch.save(build_model("seg_tiny", num_classes=3).state_dict(), ckpt)
    with pytest.raises(DataError, match="seg.pt"):
        build_model("seg_tiny", num_classes=5, checkpoint_path=ckpt)  # classifier shape differs
    with pytest.raises(DataError, match="seg.pt"):
        build_model("depth_tiny", checkpoint_path=ckpt)
    with pytest.raises(DataError, match="not found"):
        build_model("depth_tiny", checkpoint_path=tmp_path / "missing.pt")


def test_pretrained_backbone_from_local_timm_file(tmp_path: Path) -> None:
    ref = timm.create_model("mobilenetv4_conv_small", pretrained=False)
    path = tmp_path / "mnv4.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("depth_tiny", pretrained=True, backbone_checkpoint_path=path)
    ours = model.backbone.model.state_dict()
    theirs = ref.state_dict()
    assert ours.keys() <= theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items())
    with pytest.raises(ValueError, match="checkpoint_path"):
        build_model("depth_tiny", pretrained=True)


def test_any_timm_backbone_override() -> None:
    model = build_model("depth_tiny", backbone="resnet18")
    assert model.backbone.name == "resnet18"
    assert model.feature_channels == [64, 128, 256, 512]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    vit = build_model(
        "seg_tiny", num_classes=2, backbone="vit_tiny_patch16_224", backbone_kwargs={"depth": 4}
    )
    assert vit.input_multiple == 16 and vit.backbone.out_indices == [0, 1, 2, 3]
    assert vit(torch.randn(1, 3, 32, 48)).shape == (1, 2, 32, 48)


def test_segmentation_decoder_choice() -> None:
    from anydistill.errors import ConfigError
    from anydistill.models.heads import FPNDecoder, UNetDecoder

    assert isinstance(build_model("seg_tiny", num_classes=2).decoder, FPNDecoder)
    unet = build_model("seg_tiny", num_classes=3, decoder="unet", out_indices=[0, 1, 2, 3, 4],
                       decoder_channels=[32, 24, 16, 8, 8])  # fmt: skip
    assert isinstance(unet.decoder, UNetDecoder) and unet.feature_reductions == [2, 4, 8, 16, 32]
    assert [b.conv2[0].out_channels for b in unet.decoder.blocks] == [32, 24, 16, 8, 8]
    assert unet(torch.randn(2, 3, 64, 96)).shape == (2, 3, 64, 96)
    # default widths: one block per skip plus log2(finest stride) blocks up to full resolution
    default = build_model("seg_tiny", num_classes=2, decoder="unet")
    assert [b.conv2[0].out_channels for b in default.decoder.blocks] == [256, 128, 64, 32, 16]
    with pytest.raises(ConfigError, match="model.kwargs.decoder must be 'fpn' or 'unet', got 'deeplab'"):
        build_model("seg_tiny", num_classes=2, decoder="deeplab")
    # output_stride: default widths follow the shorter decoder; bad values and FPN use are config errors
    half = build_model("seg_tiny_unet", num_classes=2, output_stride=2, decoder_channels=[64, 48, 32, 16])
    assert len(half.decoder.blocks) == 4 and half(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    assert len(build_model("seg_tiny", num_classes=2, decoder="unet", output_stride=4).decoder.blocks) == 3
    with pytest.raises(ConfigError, match="model.kwargs: output_stride must be a power of two"):
        build_model("seg_tiny_unet", num_classes=2, output_stride=3)
    with pytest.raises(ConfigError, match="model.kwargs: decoder_channels needs 5 values"):
        build_model("seg_tiny_unet", num_classes=2, output_stride=1)  # its 4 widths stop at stride 2
    with pytest.raises(ConfigError, match="output_stride is a U-Net setting"):
        build_model("seg_tiny", num_classes=2, output_stride=2)


def test_normalize_and_buffers_travel_with_weights() -> None:
    model = build_model("depth_tiny")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(mean.expand(1, 3, 4, 4)), torch.zeros(1, 3, 4, 4))
    assert {"pixel_mean", "pixel_std"} <= model.state_dict().keys()
    custom = build_model("depth_tiny", pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
    torch.testing.assert_close(custom.normalize(torch.ones(1, 3, 2, 2)), torch.ones(1, 3, 2, 2))


def test_input_not_a_multiple_names_the_multiple() -> None:
    model = build_model("depth_tiny")
    assert model.input_multiple == 32
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 70, 64))


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        MODELS.register("depth_tiny")(lambda **kw: None)
    with pytest.raises(KeyError, match="depth_tiny"):
        build_model("depth_huge")


@pytest.mark.parametrize(
    ("name", "base", "widths", "output_stride"),
    [
        ("seg_tiny_unet", "seg_tiny", (64, 48, 32, 16), 2),
        ("seg_small_unet", "seg_small", (128, 64, 32, 16, 16), 1),
    ],
)
def test_unet_entries_are_the_benchmarked_ablation_rows(name, base, widths, output_stride) -> None:
    """The U-Net zoo entries are, weight for weight, the rows of benchmarks/bench_semantic_peer.py their
    docstrings quote (``base`` + ``decoder=unet``, stride-2…32 taps, these widths)."""
    torch.manual_seed(0)
    entry = build_model(name, num_classes=3)
    torch.manual_seed(0)
    row = build_model(
        base,
        num_classes=3,
        decoder="unet",
        out_indices=[0, 1, 2, 3, 4],
        decoder_channels=list(widths),
        output_stride=output_stride,
    )
    a, b = entry.state_dict(), row.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 64, 96)
    assert entry.eval()(x).shape == (1, 3, 64, 96)  # full-resolution logits


def test_seg_r18_unet_is_the_benchmarked_row() -> None:
    """``seg_r18_unet`` is, weight for weight, bench_semantic_peer.py's row ``seg_small_unet`` +
    ``backbone=resnet18``, ``output_stride=2``, widths 256-128-64-32 (the figures its docstring quotes)."""
    torch.manual_seed(0)
    entry = build_model("seg_r18_unet", num_classes=2)
    torch.manual_seed(0)
    row = build_model("seg_small_unet", num_classes=2, backbone="resnet18", output_stride=2,
                      decoder_channels=[256, 128, 64, 32])  # fmt: skip
    a, b = entry.state_dict(), row.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert entry.backbone.name == "resnet18"
    x = torch.rand(1, 3, 64, 96)
    assert entry.eval()(x).shape == (1, 2, 64, 96)
