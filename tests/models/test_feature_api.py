"""timm's feature API on students and SAM image encoders: ``forward_intermediates`` /
``forward_embedding`` / ``feature_channels`` / ``feature_reductions``.

Tap selection is checked against timm's own ``feature_take_indices`` and a timm ViT's own
``forward_intermediates``; outputs against ``forward`` and the backbone (bit for bit), layouts against
an independent re-layout, and gradients through the taps.
"""

from __future__ import annotations

import pytest
import torch
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from anydistill.models import build_model
from anydistill.models.sam import SamViTEncoder, StudentImageEncoder
from anydistill.models.task_models import format_taps, take_indices

pytestmark = pytest.mark.usefixtures("one_thread")

C = 32  # SAM neck width of the tiny encoders


def index_cases(n: int) -> list:
    """``indices`` values valid for ``n`` taps: all, last-n, single, negative, unsorted, repeated."""
    return [None, 1, n, [0], [-1], [0, -1], [-1, 0], [n - 1, 0, n - 1], [-n], (n - 1,)]


def bad_index_cases(n: int) -> list:
    return [0, n + 1, -1, [n], [-n - 1], []]


def to_tokens(m: Tensor) -> Tensor:
    """Independent NCHW → NLC re-layout: ``(B, C, h, w)`` → ``(B, h * w, C)``."""
    b, c, h, w = m.shape
    return m.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, h * w, C)


def check_taps(model: nn.Module, taps: list[Tensor], take: list[int], h: int, w: int) -> None:
    """Each tap's shape agrees with ``feature_channels``/``feature_reductions`` at its index."""
    assert len(taps) == len(take)
    for t, i in zip(taps, take, strict=True):
        r = model.feature_reductions[i]
        assert t.shape == (t.shape[0], model.feature_channels[i], h // r, w // r)


def assert_equal_lists(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and torch.equal(x, y)


# ----------------------------------------------------------------------------------- index semantics
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_take_indices_is_timms_selection_in_tap_order(n: int) -> None:
    for case in index_cases(n):
        ref, _ = feature_take_indices(n, case)
        assert take_indices(n, case) == sorted(set(ref)), case
    assert take_indices(n, None) == list(range(n))
    assert take_indices(n, 1) == [n - 1]
    for case in bad_index_cases(n):
        with pytest.raises(ValueError, match="out of range|empty"):
            take_indices(n, case)


def test_format_taps_nlc_and_bad_format() -> None:
    m = torch.randn(2, 5, 3, 4)
    assert torch.equal(format_taps([m], "NLC")[0], to_tokens(m))
    assert format_taps([m], "NCHW")[0] is m
    with pytest.raises(ValueError, match="output_fmt"):
        format_taps([m], "NHWC")


# ----------------------------------------------------------------------------------- task models
@pytest.fixture(scope="module")
def vit_seg() -> nn.Module:
    """seg_tiny on a 4-block ViT-Ti/16: the backbone taps every block."""
    torch.manual_seed(0)
    model = build_model(
        "seg_tiny", num_classes=3, backbone="vit_tiny_patch16_224", backbone_kwargs={"depth": 4}
    )
    return model.eval()


@pytest.fixture(scope="module")
def task_models(vit_seg) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "depth_cnn": build_model("depth_tiny").eval(),
        "seg_cnn": build_model("seg_tiny", num_classes=3).eval(),
        "seg_vit": vit_seg,
    }


def test_indices_match_timm_vit_forward_intermediates(vit_seg) -> None:
    """The ViT student's taps are its timm ViT's blocks: same selection, order and values as timm's own
    ``forward_intermediates`` (final norm applied, as the backbone does), in both layouts."""
    vit = vit_seg.backbone.model
    assert vit_seg.backbone.out_indices == [0, 1, 2, 3]
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        for case in index_cases(4):
            for fmt in ("NCHW", "NLC"):
                ours = vit_seg.forward_intermediates(x, indices=case, output_fmt=fmt, intermediates_only=True)
                ref = vit.forward_intermediates(
                    x, indices=case, norm=True, output_fmt=fmt, intermediates_only=True
                )
                assert_equal_lists(ours, list(ref))


@pytest.mark.parametrize("name", ["depth_cnn", "seg_cnn", "seg_vit"])
def test_task_model_taps_final_and_embedding(task_models, name: str) -> None:
    model = task_models[name]
    h, w = (64, 96) if name != "seg_vit" else (32, 48)
    x = torch.randn(2, 3, h, w)
    n = len(model.feature_channels)
    assert len(model.feature_reductions) == n == len(model.backbone.channels)
    with torch.no_grad():
        backbone = model.backbone(x)
        pred, taps = model.forward_intermediates(x)
        ref_pred = model(x)
        check_taps(model, taps, list(range(n)), h, w)
        assert torch.equal(pred, ref_pred)  # the prediction is forward's, bit for bit
        assert torch.equal(taps[-1], backbone[-1])
        assert_equal_lists(model.forward_features(x), backbone)
        for case in index_cases(n):
            take = take_indices(n, case)
            sel = model.forward_intermediates(x, indices=case, intermediates_only=True)
            assert_equal_lists(sel, [backbone[i] for i in take])
            check_taps(model, sel, take, h, w)
            nlc = model.forward_intermediates(x, indices=case, output_fmt="NLC", intermediates_only=True)
            assert_equal_lists(nlc, [to_tokens(backbone[i]) for i in take])
        deepest_pred, [deepest] = model.forward_intermediates(x, indices=1)
        assert torch.equal(deepest_pred, ref_pred) and torch.equal(deepest, backbone[-1])
        emb = model.forward_embedding(x)
    last = backbone[-1]
    assert emb.shape == (2, model.feature_channels[-1])
    torch.testing.assert_close(emb, last.sum(dim=(2, 3)) / (last.shape[2] * last.shape[3]))


def test_task_model_argument_errors(task_models) -> None:
    model = task_models["depth_cnn"]
    x = torch.randn(1, 3, 64, 64)
    for case in bad_index_cases(len(model.feature_channels)):
        with pytest.raises(ValueError, match="out of range|empty"):
            model.forward_intermediates(x, indices=case)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_gradients_flow_through_student_taps() -> None:
    torch.manual_seed(0)
    model = build_model("depth_tiny").train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    taps = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    (taps[0].square().mean() + taps[1].square().mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads[0] is not None and grads[0].abs().sum() > 0  # reaches the stem
    assert all(p.grad is None for p in model.head.parameters())  # the head did not run

    def head_without_grad() -> set[str]:
        return {n for n, p in model.head.named_parameters() if p.grad is None}

    model.zero_grad(set_to_none=True)
    model(x).mean().backward()
    unused = head_without_grad()  # DPT's deepest fusion block has no skip input: its residual unit idles
    assert len(unused) < len(list(model.head.parameters()))
    model.zero_grad(set_to_none=True)
    pred, [deep] = model.forward_intermediates(x, indices=1)
    (pred.mean() + deep.mean()).backward()
    assert head_without_grad() == unused


# ----------------------------------------------------------------------------------- SAM encoders
@pytest.fixture(scope="module")
def sam_vit() -> SamViTEncoder:
    torch.manual_seed(0)
    enc = SamViTEncoder(
        img_size=128, out_chans=C, embed_dim=48, depth=3, num_heads=2, global_attn_indexes=(2,), window_size=4
    )
    return enc.eval()


@pytest.fixture(scope="module")
def sam_student() -> StudentImageEncoder:
    torch.manual_seed(0)
    return StudentImageEncoder("mobilenetv4_conv_small", img_size=128, out_chans=C).eval()


def test_sam_vit_taps_are_timm_samvit_blocks(sam_vit) -> None:
    x = torch.randn(2, 3, 128, 128)
    assert sam_vit.feature_channels == [48, 48, 48] and sam_vit.feature_reductions == [16, 16, 16]
    with torch.no_grad():
        embedding = sam_vit(x)
        final, taps = sam_vit.forward_intermediates(x)
        assert torch.equal(final, embedding) and final.shape == (2, C, 8, 8)
        check_taps(sam_vit, taps, [0, 1, 2], 128, 128)
        assert torch.equal(sam_vit.trunk.neck(taps[-1]), embedding)  # the taps are before the neck
        for case in index_cases(3):
            ours = sam_vit.forward_intermediates(x, indices=case, intermediates_only=True)
            ref = sam_vit.trunk.forward_intermediates(x, indices=case, norm=False, intermediates_only=True)
            assert_equal_lists(ours, list(ref))
            nlc = sam_vit.forward_intermediates(x, indices=case, output_fmt="NLC", intermediates_only=True)
            assert_equal_lists(nlc, [to_tokens(t) for t in ref])  # timm's samvit itself has no NLC
        emb = sam_vit.forward_embedding(x)
    torch.testing.assert_close(emb, embedding.sum(dim=(2, 3)) / 64)
    with pytest.raises(ValueError, match="out of range"):
        sam_vit.forward_intermediates(x, indices=[3])


def test_sam_student_taps_are_backbone_maps(sam_student) -> None:
    x = torch.randn(2, 3, 128, 128)
    assert sam_student.feature_channels == sam_student.backbone.channels
    assert sam_student.feature_reductions == [16, 32]
    with torch.no_grad():
        embedding = sam_student(x)
        backbone = sam_student.backbone(x.contiguous(memory_format=torch.channels_last))
        final, taps = sam_student.forward_intermediates(x)
        assert torch.equal(final, embedding) and final.shape == (2, C, 8, 8)
        check_taps(sam_student, taps, [0, 1], 128, 128)
        assert_equal_lists(taps, backbone)
        assert torch.equal(
            sam_student.forward_intermediates(x, indices=1, intermediates_only=True)[0], backbone[-1]
        )
        for case in index_cases(2):
            take = take_indices(2, case)
            nlc = sam_student.forward_intermediates(
                x, indices=case, output_fmt="NLC", intermediates_only=True
            )
            assert_equal_lists(nlc, [to_tokens(backbone[i]) for i in take])
        emb = sam_student.forward_embedding(x)
    torch.testing.assert_close(emb, embedding.sum(dim=(2, 3)) / 64)


def test_gradients_flow_through_sam_student_taps() -> None:
    torch.manual_seed(0)
    enc = StudentImageEncoder("mobilenetv4_conv_small", img_size=64, out_chans=C).train()
    x = torch.randn(2, 3, 64, 64)
    taps = enc.forward_intermediates(x, intermediates_only=True)
    sum(t.square().mean() for t in taps).backward()
    assert all(p.grad is not None for p in enc.backbone.parameters() if p.requires_grad)
    assert all(p.grad is None for p in [*enc.lateral.parameters(), *enc.neck.parameters()])
