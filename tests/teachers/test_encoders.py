"""Frozen encoders against the upstream forward: timm ``forward_features`` tokens and HF
``last_hidden_state``, on tiny random-init models saved locally and loaded back (exact to 1e-5)."""

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from anydistill.errors import DataError
from anydistill.teachers.encoders import HFDinov2Encoder, TimmEncoder, tokens_to_map

TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2, img_size=56)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _reference_map(tokens: torch.Tensor, prefix: int, h: int, w: int) -> torch.Tensor:
    """Independent re-layout: drop the prefix, tokens → channels, then unflatten the grid."""
    return tokens[:, prefix:].transpose(1, 2).unflatten(2, (h, w))  # (B, C, h, w)


def _timm_weights(tmp_path, name: str, seed: int, **kwargs) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    path = tmp_path / f"{name}_{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


@pytest.mark.parametrize(
    ("name", "prefix"), [("vit_small_patch14_dinov2", 1), ("vit_small_patch14_reg4_dinov2", 5)]
)
def test_timm_vit_matches_forward_features(tmp_path, name, prefix):
    upstream, path = _timm_weights(tmp_path, name, 0, dynamic_img_size=True, **TINY_VIT)
    enc = TimmEncoder(name, checkpoint_path=path, **TINY_VIT)
    assert enc.task == "features" and enc.feature_dim == 32 and enc.feature_stride == 14
    x = torch.rand(2, 3, 42, 70)  # multiples of 14: no resize
    with torch.no_grad():
        tokens = upstream.forward_features((x - IMAGENET_MEAN) / IMAGENET_STD)  # (2, prefix + 15, 32)
    assert tokens.shape[1] == prefix + 3 * 5
    torch.testing.assert_close(enc.features(x), _reference_map(tokens, prefix, 3, 5), rtol=1e-5, atol=1e-5)


def test_timm_resizes_other_sizes_keeping_aspect(tmp_path):
    upstream, path = _timm_weights(tmp_path, "vit_small_patch14_dinov2", 0, dynamic_img_size=True, **TINY_VIT)
    enc = TimmEncoder("vit_small_patch14_dinov2", checkpoint_path=path, **TINY_VIT)
    x = torch.rand(1, 3, 50, 75)  # → 56 x 70 (each side to the nearest multiple of 14)
    resized = F.interpolate(x, size=(56, 70), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        tokens = upstream.forward_features((resized - IMAGENET_MEAN) / IMAGENET_STD)
    torch.testing.assert_close(enc.features(x), _reference_map(tokens, 1, 4, 5), rtol=1e-5, atol=1e-5)
    big = TimmEncoder("vit_small_patch14_dinov2", checkpoint_path=path, image_size=140, **TINY_VIT)
    assert big.features(x).shape == (1, 32, 7, 10)  # long side 140: 93.3 x 140 → 98 x 140


def test_timm_cnn_feature_map(tmp_path):
    upstream, path = _timm_weights(tmp_path, "test_resnet", 0)
    enc = TimmEncoder("test_resnet", checkpoint_path=path)
    assert enc.feature_stride == 32 and enc.feature_dim == upstream.num_features
    x = torch.rand(1, 3, 64, 96)
    mean = torch.tensor(upstream.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(upstream.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = upstream.forward_features((x - mean) / std)  # (1, C, 2, 3)
    torch.testing.assert_close(enc.features(x), ref, rtol=1e-5, atol=1e-5)


def test_timm_fingerprint_and_weights_really_loaded(tmp_path):
    _, path_a = _timm_weights(tmp_path, "vit_small_patch14_dinov2", 0, dynamic_img_size=True, **TINY_VIT)
    _, path_b = _timm_weights(tmp_path, "vit_small_patch14_dinov2", 1, dynamic_img_size=True, **TINY_VIT)
    a1 = TimmEncoder("vit_small_patch14_dinov2", checkpoint_path=path_a, **TINY_VIT)
    a2 = TimmEncoder("vit_small_patch14_dinov2", checkpoint_path=path_a, **TINY_VIT)
    b = TimmEncoder("vit_small_patch14_dinov2", checkpoint_path=path_b, **TINY_VIT)
    assert a1.fingerprint == a2.fingerprint != b.fingerprint
    x = torch.rand(1, 3, 28, 28)
    assert not torch.allclose(a1.features(x), b.features(x))


def test_timm_bad_weights_are_data_errors(tmp_path):
    _, path = _timm_weights(tmp_path, "vit_small_patch14_dinov2", 0, dynamic_img_size=True, **TINY_VIT)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="trunc.safetensors"):
        TimmEncoder("vit_small_patch14_dinov2", checkpoint_path=truncated, **TINY_VIT)
    with pytest.raises(DataError, match="missing.pth"):
        TimmEncoder("vit_small_patch14_dinov2", checkpoint_path=tmp_path / "missing.pth", **TINY_VIT)
    other = tmp_path / "other.safetensors"  # a different architecture's weights
    save_file({"foo": torch.zeros(3)}, str(other))
    with pytest.raises(DataError, match="other.safetensors"):
        TimmEncoder("vit_small_patch14_dinov2", checkpoint_path=other, **TINY_VIT)
    with pytest.raises(DataError, match="not_a_model"):
        TimmEncoder("not_a_model")


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_dinov2_matches_last_hidden_state(tmp_path, registers, make_dinov2):
    transformers = pytest.importorskip("transformers")
    folder = make_dinov2(tmp_path / "dinov2", registers=registers)
    upstream = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    enc = HFDinov2Encoder(folder)
    assert enc.feature_dim == 32 and enc.num_prefix_tokens == 1 + registers
    x = torch.rand(2, 3, 56, 42)
    with torch.no_grad():
        tokens = upstream(
            pixel_values=(x - IMAGENET_MEAN) / IMAGENET_STD
        ).last_hidden_state  # (2, P + 12, 32)
    torch.testing.assert_close(
        enc.features(x), _reference_map(tokens, 1 + registers, 4, 3), rtol=1e-5, atol=1e-5
    )


def test_hf_dinov2_frozen_fingerprint_and_processor_constants(tmp_path, dinov2_folder, make_dinov2):
    enc = HFDinov2Encoder(dinov2_folder)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.model.training
    assert HFDinov2Encoder(dinov2_folder).fingerprint == enc.fingerprint
    assert HFDinov2Encoder(make_dinov2(tmp_path / "b", seed=1)).fingerprint != enc.fingerprint
    with pytest.raises(TypeError, match="features"):
        enc.predict(torch.rand(1, 3, 28, 28))
    # mean/std come from the folder's processor config when there is one
    folder = make_dinov2(tmp_path / "c")
    (folder / "preprocessor_config.json").write_text(
        '{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}'
    )
    torch.testing.assert_close(HFDinov2Encoder(folder).pixel_std.flatten(), torch.full((3,), 0.5))


def test_hf_dinov2_wrong_folder(tmp_path, da_folder):
    with pytest.raises(DataError, match="expected one of"):
        HFDinov2Encoder(da_folder)


def test_tokens_to_map_checks_token_count():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # 1 prefix + 2 x 3 grid
    out = tokens_to_map(tokens, 1, (2, 3))
    assert out.shape == (2, 3, 2, 3)
    assert out[1, 2, 1, 0] == tokens[1, 1 + 3, 2]  # row 1, col 0 = patch 3
    with pytest.raises(ValueError, match="prefix"):
        tokens_to_map(tokens, 1, (3, 3))
