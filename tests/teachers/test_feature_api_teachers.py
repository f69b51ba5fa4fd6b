"""Teachers' feature API (timm's ``forward_intermediates`` on [0, 1] images): every tap against the
upstream model's own layers, ``features`` = the deepest tap (unchanged: the upstream map it always
was), ``forward_embedding`` = its mean, and the same clear error for teachers without features."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from sam_upstream import tiny_upstream_sam
from torch import Tensor, nn

from anydistill.models.task_models import take_indices
from anydistill.teachers.anydistill_ckpt import AnydistillTeacher
from anydistill.teachers.base import Teacher
from anydistill.teachers.encoders import HFDinov2Encoder, TimmEncoder
from anydistill.teachers.hf_depth_anything import HFDepthAnythingTeacher
from anydistill.teachers.sam import SamTeacher

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = dict(depth=3, embed_dim=32, num_heads=2, img_size=56)


def index_cases(n: int) -> list:
    return [None, 1, n, [0], [-1], [0, -1], [-1, 0], [n - 1, 0, n - 1]]


def to_map(tokens: Tensor, prefix: int, h: int, w: int) -> Tensor:
    """Independent re-layout: drop the prefix, tokens → channels, then unflatten the grid."""
    return tokens[:, prefix:].transpose(1, 2).unflatten(2, (h, w))  # (B, C, h, w)


def to_tokens(m: Tensor) -> Tensor:
    b, c, h, w = m.shape
    return m.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, h * w, C)


def assert_equal_lists(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and torch.equal(x, y)


def check_api(teacher: Teacher, x: Tensor, reference: list[Tensor], work: tuple[int, int]) -> None:
    """``reference``: every tap, computed independently. Checks selection, layouts, metadata, the
    final output of a feature teacher, ``features`` and ``forward_embedding``."""
    n = len(reference)
    assert len(teacher.feature_channels) == len(teacher.feature_reductions) == n
    assert teacher.feature_channels[-1] == teacher.feature_dim
    assert teacher.feature_reductions[-1] == teacher.feature_stride
    for ref, c, r in zip(reference, teacher.feature_channels, teacher.feature_reductions, strict=True):
        assert ref.shape == (x.shape[0], c, work[0] // r, work[1] // r)
    for case in index_cases(n):
        take = take_indices(n, case)
        assert_equal_lists(teacher.forward_intermediates(x, indices=case), [reference[i] for i in take])
        nlc = teacher.forward_intermediates(x, indices=case, output_fmt="NLC")
        assert_equal_lists(nlc, [to_tokens(reference[i]) for i in take])
    features = teacher.features(x)
    assert torch.equal(features, reference[-1])
    assert torch.equal(features, teacher.forward_intermediates(x, indices=1, intermediates_only=True)[-1])
    if teacher.task == "features":
        final, taps = teacher.forward_intermediates(x, intermediates_only=False)
        assert torch.equal(final, features)
        assert_equal_lists(taps, reference)
    emb = teacher.forward_embedding(x)
    assert emb.shape == (x.shape[0], teacher.feature_dim) and not emb.requires_grad
    torch.testing.assert_close(emb, reference[-1].sum(dim=(2, 3)) / reference[-1][0, 0].numel())
    with pytest.raises(ValueError, match="out of range"):
        teacher.forward_intermediates(x, indices=[n])
    with pytest.raises(ValueError, match="output_fmt"):
        teacher.forward_intermediates(x, output_fmt="NHWC")


def _timm_upstream(tmp_path: Path, name: str, **kwargs) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _normalize(model: nn.Module, x: Tensor) -> Tensor:
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_timm_vit_taps_are_normed_blocks_and_features_unchanged(tmp_path) -> None:
    name = "vit_small_patch14_reg4_dinov2"
    upstream, path = _timm_upstream(tmp_path, name, dynamic_img_size=True, **TINY_VIT)
    teacher = TimmEncoder(name, checkpoint_path=path, **TINY_VIT)
    x = torch.rand(2, 3, 42, 70)  # multiples of 14: no resize
    with torch.no_grad():
        xn = _normalize(upstream, x)
        blocks = upstream.forward_intermediates(xn, norm=True, intermediates_only=True)  # each block, normed
        old_features = to_map(upstream.forward_features(xn), 5, 3, 5)  # what features() always returned
    assert teacher.feature_channels == [32] * 3 and teacher.feature_reductions == [14] * 3
    assert torch.equal(teacher.features(x), old_features)
    assert torch.equal(teacher.encode(xn), old_features)
    check_api(teacher, x, list(blocks), (42, 70))


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_timm_cnn_taps_are_stages_ending_with_forward_features(tmp_path, name: str) -> None:
    """test_efficientnet's forward_features ends with a head conv (256 channels vs the last stage's 64):
    that map, the one features() always returned, is the deepest tap."""
    upstream, path = _timm_upstream(tmp_path, name)
    teacher = TimmEncoder(name, checkpoint_path=path)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        xn = _normalize(upstream, x)
        stages = upstream.forward_intermediates(xn, intermediates_only=True)
        old_features = upstream.forward_features(xn)
    reference = [*stages[:-1], old_features]
    assert teacher.feature_reductions == [int(i["reduction"]) for i in upstream.feature_info]
    assert teacher.feature_channels[-1] == upstream.num_features
    if name == "test_efficientnet":
        assert stages[-1].shape[1] != old_features.shape[1]
    check_api(teacher, x, reference, (64, 96))


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_dinov2_taps_are_normed_layers(tmp_path, make_dinov2, registers: int) -> None:
    folder = make_dinov2(tmp_path / f"dinov2_r{registers}", seed=1, registers=registers)
    teacher = HFDinov2Encoder(folder)
    model = teacher.model
    x = torch.rand(2, 3, 42, 56)
    with torch.no_grad():
        xn = (x - teacher.pixel_mean) / teacher.pixel_std
        old_features = to_map(model(pixel_values=xn).last_hidden_state, 1 + registers, 3, 4)
        h = model.embeddings(xn)  # layer by layer, independently of output_hidden_states
        reference = []
        for layer in model.encoder.layer:
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
            reference.append(to_map(model.layernorm(h), 1 + registers, 3, 4))
    assert teacher.feature_channels == [32, 32] and teacher.feature_reductions == [14, 14]
    torch.testing.assert_close(reference[-1], old_features, rtol=0, atol=1e-6)
    assert torch.equal(teacher.features(x), old_features)
    torch.testing.assert_close(teacher.forward_intermediates(x)[0], reference[0], rtol=1e-6, atol=1e-6)
    check_api(teacher, x, [teacher.forward_intermediates(x, indices=[0])[0], old_features], (42, 56))


@pytest.mark.parametrize("ckpt", ["depth_ckpt", "semantic_ckpt"])
def test_anydistill_teacher_taps_are_backbone_maps_and_final_is_predict(request, ckpt: str) -> None:
    teacher = AnydistillTeacher(request.getfixturevalue(ckpt), image_size=96)
    model = teacher.model
    x = torch.rand(2, 3, 64, 96)  # the working size: no resize
    with torch.no_grad():
        backbone = model.backbone(model.normalize(x))
    assert teacher.feature_channels == model.feature_channels
    assert teacher.feature_reductions == model.feature_reductions
    check_api(teacher, x, backbone, (64, 96))
    y = torch.rand(1, 3, 50, 80)  # resized to 64 x 96, prediction back to 50 x 80
    final, taps = teacher.forward_intermediates(y, indices=1, intermediates_only=False)
    assert torch.equal(final, teacher.predict(y)) and final.shape[-2:] == (50, 80)
    assert torch.equal(taps[-1], teacher.features(y))


def test_sam_teacher_has_one_tap_the_image_embedding(tmp_path) -> None:
    path = tmp_path / "sam_tiny_official.pth"
    torch.save(tiny_upstream_sam(seed=0, img_size=128, width=32, decoder_heads=8).state_dict(), path)
    teacher = SamTeacher(path)
    x = torch.rand(2, 3, 96, 160)
    features = teacher.features(x)
    assert features.shape == (2, 32, 8, 8)
    assert teacher.feature_channels == [32] and teacher.feature_reductions == [16]
    check_api(teacher, x, [features], (128, 128))


def test_teacher_without_features_raises_the_same_error(da_folder) -> None:
    teacher = HFDepthAnythingTeacher(da_folder)
    x = torch.rand(1, 3, 56, 56)
    assert teacher.feature_dim is None and teacher.feature_channels == [] and teacher.feature_reductions == []
    for call in (
        teacher.features,
        teacher.forward_intermediates,
        teacher.forward_embedding,
        lambda images: teacher.forward_intermediates(images, intermediates_only=False),
    ):
        with pytest.raises(TypeError, match="HFDepthAnythingTeacher has no feature encoder to share"):
            call(x)
