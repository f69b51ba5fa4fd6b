"""TimmBackbone: metadata vs real outputs, parity with timm's own APIs, local-weights loading, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from anydistill.models.backbones import TimmBackbone, default_vit_indices


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _check_metadata(bb: TimmBackbone, feats: list[torch.Tensor], h: int, w: int) -> None:
    assert len(feats) == len(bb.channels) == len(bb.reductions)
    for f, c, r in zip(feats, bb.channels, bb.reductions, strict=True):
        assert f.shape == (2, c, h // r, w // r)


def test_cnn_metadata_matches_outputs() -> None:
    bb = TimmBackbone("resnet18")
    assert not bb.is_vit
    assert bb.channels == [64, 128, 256, 512]
    assert bb.reductions == [4, 8, 16, 32]
    assert bb.input_multiple == 32
    feats = bb(torch.randn(2, 3, 64, 96))
    _check_metadata(bb, feats, 64, 96)


def test_cnn_out_indices_selects_stages() -> None:
    bb = TimmBackbone("resnet18", out_indices=(0, 2))
    assert bb.reductions == [2, 8]
    _check_metadata(bb, bb(torch.randn(2, 3, 64, 64)), 64, 64)


def test_cnn_checkpoint_roundtrip_and_parity_with_timm(tmp_path: Path) -> None:
    """Weights from a local timm-format file (classifier included, dropped by timm's filter); the
    maps equal timm's own forward_intermediates of the source model."""
    ref = timm.create_model("resnet18", pretrained=False).eval()
    ckpt = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), ckpt)
    bb = TimmBackbone("resnet18", checkpoint_path=ckpt).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = bb(x)
        expected = ref.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # A backbone built without the file has different weights: the load really happened.
    fresh = TimmBackbone("resnet18").eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x)[-1], ours[-1])


def test_vit_metadata_and_parity_with_timm_forward_intermediates() -> None:
    bb = TimmBackbone("vit_small_patch14_dinov2").eval()
    assert bb.is_vit and bb.input_multiple == 14
    assert bb.out_indices == [2, 5, 8, 11]
    assert bb.channels == [384] * 4 and bb.reductions == [14] * 4

    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, dynamic_img_size=True).eval()
    result = bb.model.load_state_dict(ref.state_dict(), strict=False)
    assert not result.missing_keys  # only the (pruned) classifier may be unexpected

    x = torch.randn(2, 3, 56, 84)  # non-square 4×6 patch grid
    with torch.no_grad():
        ours = bb(x)
        expected = ref.forward_intermediates(
            x, indices=[2, 5, 8, 11], norm=True, output_fmt="NCHW", intermediates_only=True
        )
        # Independent check of the last tap: timm's final normed tokens without the class token.
        tokens = ref.forward_features(x)[:, ref.num_prefix_tokens :]  # (B, N, C)
        last = tokens.transpose(1, 2).reshape(2, 384, 4, 6)  # (B, C, h, w)
    _check_metadata(bb, ours, 56, 84)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[-1], last, rtol=1e-5, atol=1e-5)


def test_vit_custom_indices_prune_blocks_and_norm_option() -> None:
    bb = TimmBackbone("vit_tiny_patch16_224", out_indices=[1, -1], img_size=64, depth=4, vit_norm=False)
    assert bb.out_indices == [1, 3]
    assert len(bb.model.blocks) == 4
    bb_short = TimmBackbone("vit_tiny_patch16_224", out_indices=[0, 1], img_size=64, depth=4)
    assert len(bb_short.model.blocks) == 2  # blocks after the last tap are pruned
    feats = bb(torch.randn(2, 3, 64, 48))
    _check_metadata(bb, feats, 64, 48)


def test_default_vit_indices() -> None:
    assert default_vit_indices(12) == [2, 5, 8, 11]
    assert default_vit_indices(24) == [5, 11, 17, 23]


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "multiple"),
    [("resnet18", {}, (64, 80), 32), ("vit_tiny_patch16_224", {"depth": 2}, (48, 40), 16)],
)
def test_input_not_multiple_raises(name: str, kwargs: dict, size: tuple[int, int], multiple: int) -> None:
    bb = TimmBackbone(name, **kwargs)
    with pytest.raises(ValueError, match=f"multiple of {multiple}"):
        bb(torch.randn(1, 3, *size))


def test_vit_out_of_range_index_raises() -> None:
    with pytest.raises(ValueError, match="out of range"):
        TimmBackbone("vit_tiny_patch16_224", out_indices=[1, 12])


def test_pretrained_without_local_file_refuses_to_download() -> None:
    with pytest.raises(ValueError, match="checkpoint_path"):
        TimmBackbone("resnet18", pretrained=True)


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TimmBackbone("resnet18", checkpoint_path=tmp_path / "nope.pth")


def test_gradients_reach_backbone_parameters() -> None:
    bb = TimmBackbone("vit_tiny_patch16_224", img_size=32, depth=2, out_indices=[0, 1])
    sum(f.square().mean() for f in bb(torch.randn(2, 3, 32, 32))).backward()
    grads = [p.grad for p in bb.model.patch_embed.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_backbone_weights_with_a_missing_parameter_are_refused_and_head_keys_are_quiet(
    tmp_path, caplog
) -> None:
    # timm loads features_only / num_classes=0 models non-strictly and reports missing keys only at INFO:
    # a file lacking parameters would have left them random without a word.
    import logging

    from anydistill.models.ssl_heads import EmbeddingEncoder

    full = EmbeddingEncoder("mobilenetv4_conv_small")
    path = full.save_timm_weights(tmp_path / "mnv4.pth")
    with caplog.at_level(logging.INFO):
        backbone = TimmBackbone("mobilenetv4_conv_small", pretrained=True, checkpoint_path=path)
    assert not [r for r in caplog.records if "keys" in r.getMessage()]  # conv_head etc.: expected, unshown
    ref = full.model.state_dict()["blocks.0.0.conv.weight"]
    assert any(torch.equal(v, ref) for v in backbone.state_dict().values())  # the weights were loaded
    state = torch.load(path)
    del state["blocks.0.0.conv.weight"]
    torch.save(state, tmp_path / "partial.pth")
    for build in (
        lambda: TimmBackbone(
            "mobilenetv4_conv_small", pretrained=True, checkpoint_path=tmp_path / "partial.pth"
        ),
        lambda: EmbeddingEncoder("mobilenetv4_conv_small", checkpoint_path=tmp_path / "partial.pth"),
    ):
        with pytest.raises(
            ValueError, match=r"partial\.pth: these weights do not fit .*blocks\.0\.0\.conv\.weight"
        ):
            build()
