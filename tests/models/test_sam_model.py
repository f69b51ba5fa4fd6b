"""SAM model parts against segment_anything (the reference implementation), on tiny random models."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling import MaskDecoder as UpMaskDecoder
from segment_anything.modeling import PromptEncoder as UpPromptEncoder
from segment_anything.modeling import Sam as UpSam
from segment_anything.modeling import TwoWayTransformer as UpTwoWayTransformer

from anydistill.models import MODELS, build_model
from anydistill.models.sam import (
    MaskDecoder,
    PromptEncoder,
    Sam,
    SamViTEncoder,
    StudentImageEncoder,
    TwoWayTransformer,
    official_to_anydistill,
)

C = 32  # prompt / transformer width of the tiny models
GRID = 8  # image embedding grid (img_size 128)


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (LayerNorm gains, zero-initialised tables included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def _up_prompt_encoder() -> UpPromptEncoder:
    return UpPromptEncoder(
        embed_dim=C, image_embedding_size=(GRID, GRID), input_image_size=(128, 128), mask_in_chans=16
    )


def _up_mask_decoder() -> UpMaskDecoder:
    return UpMaskDecoder(
        transformer_dim=C,
        transformer=UpTwoWayTransformer(depth=2, embedding_dim=C, mlp_dim=64, num_heads=2),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=24,
    )


def _our_prompt_encoder() -> PromptEncoder:
    return PromptEncoder(
        embed_dim=C, image_embedding_size=(GRID, GRID), input_image_size=(128, 128), mask_in_chans=16
    )


def _our_mask_decoder() -> MaskDecoder:
    return MaskDecoder(
        transformer_dim=C,
        transformer=TwoWayTransformer(depth=2, embedding_dim=C, num_heads=2, mlp_dim=64),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=24,
    )


@pytest.fixture(scope="module")
def prompt_encoders() -> tuple[UpPromptEncoder, PromptEncoder]:
    torch.manual_seed(0)
    up = _perturb(_up_prompt_encoder())
    ours = _our_prompt_encoder().eval()
    ours.load_state_dict(up.state_dict(), strict=True)  # same key layout, no mapping
    return up, ours


@pytest.fixture(scope="module")
def mask_decoders() -> tuple[UpMaskDecoder, MaskDecoder]:
    torch.manual_seed(1)
    up = _perturb(_up_mask_decoder(), seed=1)
    ours = _our_mask_decoder().eval()
    ours.load_state_dict(up.state_dict(), strict=True)
    return up, ours


# --------------------------------------------------------------------------------------------------
# Prompt encoder
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["points", "points_pad_label", "boxes", "points_boxes", "masks", "all", "nothing"]
)
def test_prompt_encoder_matches_upstream(prompt_encoders, case: str) -> None:
    up, ours = prompt_encoders
    g = torch.Generator().manual_seed(3)
    b, n = 3, 4
    coords = torch.rand(b, n, 2, generator=g) * 128
    labels = torch.randint(0, 2, (b, n), generator=g)
    if case == "points_pad_label":
        labels[:, -1] = -1
    boxes = torch.sort(torch.rand(b, 2, 2, generator=g) * 128, dim=1).values.reshape(b, 4)
    masks = torch.randn(b, 1, 4 * GRID, 4 * GRID, generator=g)
    kw = dict(points=None, boxes=None, masks=None)
    if case.startswith("points") or case == "all":
        kw["points"] = (coords, labels)
    if "boxes" in case or case == "all":
        kw["boxes"] = boxes
    if case in ("masks", "all"):
        kw["masks"] = masks
    with torch.no_grad():
        s_up, d_up = up(**kw)
        s_ours, d_ours = ours(**kw)
    assert s_ours.shape == s_up.shape and d_ours.shape == d_up.shape
    expected_tokens = (n + (kw["boxes"] is None) if kw["points"] else 0) + (
        2 if kw["boxes"] is not None else 0
    )
    assert s_ours.shape[1] == expected_tokens
    torch.testing.assert_close(s_ours, s_up, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d_ours, d_up, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.get_dense_pe(), up.get_dense_pe(), atol=1e-6, rtol=1e-6)


def test_positional_encoding_formula(prompt_encoders) -> None:
    """PE(p) = [sin(2π(2p-1)G), cos(2π(2p-1)G)] at pixel centres, written out independently."""
    _, ours = prompt_encoders
    gauss = ours.pe_layer.positional_encoding_gaussian_matrix  # (2, C/2)
    x, y = 37.0, 90.0
    p = torch.tensor([(x + 0.5) / 128, (y + 0.5) / 128])
    proj = 2 * torch.pi * ((2 * p - 1) @ gauss)
    expected = torch.cat([proj.sin(), proj.cos()]) + ours.point_embeddings[1].weight[0]
    sparse, _ = ours(points=(torch.tensor([[[x, y]]]), torch.tensor([[1]])), boxes=None, masks=None)
    torch.testing.assert_close(sparse[0, 0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse[0, 1], ours.not_a_point_embed.weight[0])  # the padding token


# --------------------------------------------------------------------------------------------------
# Mask decoder
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("tokens", [0, 3])
def test_mask_decoder_matches_upstream(mask_decoders, prompt_encoders, multimask: bool, tokens: int) -> None:
    up, ours = mask_decoders
    g = torch.Generator().manual_seed(5)
    b = 4
    image = torch.randn(1, C, GRID, GRID, generator=g)
    pe = prompt_encoders[1].get_dense_pe()
    sparse = torch.randn(b, tokens, C, generator=g)
    dense = torch.randn(b, C, GRID, GRID, generator=g)
    with torch.no_grad():
        m_up, i_up = up(image, pe, sparse, dense, multimask)
        m_ours, i_ours = ours(image, pe, sparse, dense, multimask)
    k = 3 if multimask else 1
    assert m_ours.shape == (b, k, 4 * GRID, 4 * GRID) and i_ours.shape == (b, k)
    torch.testing.assert_close(m_ours, m_up, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(i_ours, i_up, atol=1e-5, rtol=1e-5)


def test_mask_decoder_image_batches(mask_decoders) -> None:
    """One embedding per prompt set (B_img == B) and grouped sets (B_img divides B) equal per-image calls."""
    _, ours = mask_decoders
    g = torch.Generator().manual_seed(6)
    images = torch.randn(2, C, GRID, GRID, generator=g)
    pe = torch.randn(1, C, GRID, GRID, generator=g)
    sparse = torch.randn(4, 2, C, generator=g)
    dense = torch.randn(4, C, GRID, GRID, generator=g)
    with torch.no_grad():
        grouped, _ = ours(images, pe, sparse, dense, True)  # sets 0,1 -> image 0; sets 2,3 -> image 1
        per_image = torch.cat(
            [
                ours(images[i : i + 1], pe, sparse[2 * i : 2 * i + 2], dense[2 * i : 2 * i + 2], True)[0]
                for i in range(2)
            ]
        )
        paired, _ = ours(images, pe, sparse[:2], dense[:2], True)
        single = torch.cat(
            [ours(images[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], True)[0] for i in range(2)]
        )
    torch.testing.assert_close(grouped, per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(paired, single, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot be shared"):
        ours(torch.randn(3, C, GRID, GRID), pe, sparse, dense, True)


def test_decoder_gradients_reach_every_parameter(mask_decoders, prompt_encoders) -> None:
    dec = copy.deepcopy(mask_decoders[1]).train()
    enc = copy.deepcopy(prompt_encoders[1]).train()
    image = torch.randn(2, C, GRID, GRID, requires_grad=True)
    sparse, dense = enc(
        points=(torch.rand(2, 2, 2) * 128, torch.tensor([[1, 0], [0, 1]])),
        boxes=torch.tensor([[1.0, 2.0, 60.0, 70.0], [5.0, 5.0, 100.0, 90.0]]),
        masks=torch.randn(2, 1, 4 * GRID, 4 * GRID),
    )
    loss = 0.0
    for multimask in (True, False):  # token 0 only gets gradient from the single-mask output
        masks, iou = dec(image, enc.get_dense_pe(), sparse, dense, multimask)
        loss = loss + masks.square().mean() + iou.square().mean()
    # Points alone (padding token) without a mask prompt (no-mask embedding).
    sparse2, dense2 = enc(points=(torch.rand(2, 1, 2) * 128, torch.ones(2, 1)), boxes=None, masks=None)
    masks, iou = dec(image, enc.get_dense_pe(), sparse2, dense2, False)
    loss = loss + masks.square().mean() + iou.square().mean()
    loss.backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    no_grad = [
        n for n, p in [*dec.named_parameters(), *enc.named_parameters()] if p.grad is None or not p.grad.any()
    ]
    assert no_grad == []


# --------------------------------------------------------------------------------------------------
# Whole model, image encoders
# --------------------------------------------------------------------------------------------------


def _tiny_vit_kwargs() -> dict:
    return dict(img_size=128, embed_dim=48, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4)


@pytest.mark.parametrize("img_size, window", [(128, 4), (160, 4)])
def test_vit_encoder_matches_upstream(img_size: int, window: int) -> None:
    """timm's samvit (our ViT) == segment_anything's ImageEncoderViT after the key mapping. The 10x10
    grid with 4x4 windows exercises the window padding that real SAM needs (64x64 grid, 14x14 windows)."""
    torch.manual_seed(0)
    up = _perturb(
        ImageEncoderViT(
            img_size=img_size,
            patch_size=16,
            embed_dim=48,
            depth=2,
            num_heads=2,
            out_chans=C,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=window,
            global_attn_indexes=(1,),
        )
    )
    kwargs = {**_tiny_vit_kwargs(), "img_size": img_size, "window_size": window}
    ours = SamViTEncoder(out_chans=C, **kwargs).eval()
    mapped = official_to_anydistill({f"image_encoder.{k}": v for k, v in up.state_dict().items()})
    ours.load_state_dict({k.removeprefix("image_encoder."): v for k, v in mapped.items()}, strict=True)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), up(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", ["vit_b", "vit_l", "vit_h"])
def test_full_size_key_layout_equals_official(size: str) -> None:
    """Every key and shape of segment_anything's vit_b/l/h maps onto ours (meta device: no memory)."""
    with torch.device("meta"):
        official = sam_model_registry[size]().state_dict()
        ours = build_model(f"sam_{size}").state_dict()
    mapped = official_to_anydistill(official)
    assert set(mapped) == set(ours)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    for part in ("prompt_encoder.", "mask_decoder."):  # identical names, no mapping
        assert {k for k in official if k.startswith(part)} == {k for k in ours if k.startswith(part)}


def test_builders_registered_and_img_size_follows() -> None:
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_tiny", "sam_small"):
        assert name in MODELS
    model = build_model("sam_tiny", img_size=256)
    assert isinstance(model, Sam) and not model.training
    assert model.prompt_encoder.image_embedding_size == (16, 16)
    assert model.prompt_encoder.input_image_size == (256, 256)
    assert model.prompt_encoder.mask_input_size == (64, 64)
    with torch.device("meta"):
        vit = build_model("sam_vit_b", img_size=256)
    assert vit.image_encoder.trunk.pos_embed.shape == (1, 16, 16, 768)
    with pytest.raises(ValueError, match="never downloads"):
        build_model("sam_vit_b", pretrained=True)


def test_student_encoder_shapes_fusion_and_gradients() -> None:
    torch.manual_seed(0)
    enc = StudentImageEncoder("mobilenetv4_conv_small", img_size=128, out_chans=C)
    assert enc.backbone.reductions == [16, 32]  # the 1/32 stage is fused into the 1/16 one
    x = torch.randn(2, 3, 128, 128)
    y = enc(x)
    assert y.shape == (2, C, 8, 8)
    y.square().mean().backward()
    no_grad = [
        n for n, p in enc.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert no_grad == []
    # The 1/32 branch changes the output (it is really fused, not dropped).
    with torch.no_grad():
        enc.eval()
        base = enc(x)
        # channels_last (the default) is a memory layout only.
        nchw = StudentImageEncoder("mobilenetv4_conv_small", img_size=128, out_chans=C, channels_last=False)
        nchw.load_state_dict(enc.state_dict())
        torch.testing.assert_close(nchw.eval()(x), base, atol=1e-4, rtol=1e-4)
        enc.lateral[1].weight.zero_()  # (a constant shift would vanish in the LayerNorm)
        assert not torch.allclose(enc(x), base, atol=1e-3)
    with pytest.raises(ValueError, match="stride-16"):
        StudentImageEncoder("vit_small_patch14_dinov2", img_size=126)


def test_sam_model_matches_upstream_pre_and_postprocess() -> None:
    """preprocess / postprocess_masks / forward against upstream Sam sharing the same parts."""
    torch.manual_seed(0)
    up_parts = dict(
        image_encoder=_perturb(
            ImageEncoderViT(
                img_size=128,
                embed_dim=48,
                depth=2,
                num_heads=2,
                out_chans=C,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=4,
                global_attn_indexes=(1,),
            )
        ),
        prompt_encoder=_perturb(_up_prompt_encoder()),
        mask_decoder=_perturb(_up_mask_decoder()),
    )
    up = UpSam(**up_parts).eval()
    ours = build_model(
        "sam_vit_b",
        prompt_embed_dim=C,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=24,
        **_tiny_vit_kwargs(),
    )
    ours.load_state_dict(official_to_anydistill(up.state_dict()), strict=True)
    img = torch.randint(0, 256, (3, 83, 128), dtype=torch.uint8).float()
    torch.testing.assert_close(ours.preprocess(img[None]), up.preprocess(img[None]))
    low = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        ours.postprocess_masks(low, (83, 128), (97, 150)), up.postprocess_masks(low, (83, 128), (97, 150))
    )
    pts, lab = torch.tensor([[[30.0, 40.0]], [[100.0, 20.0]]]), torch.tensor([[1], [1]])
    with torch.no_grad():
        low_ours, iou_ours = ours(
            ours.preprocess(img[None]).expand(2, -1, -1, -1), pts, lab, multimask_output=True
        )
        ref = up(
            [
                {
                    "image": img,
                    "original_size": (83, 128),
                    "point_coords": pts[i : i + 1],
                    "point_labels": lab[i : i + 1],
                }
                for i in range(2)
            ],
            multimask_output=True,
        )
    torch.testing.assert_close(low_ours, torch.cat([r["low_res_logits"] for r in ref]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou_ours, torch.cat([r["iou_predictions"] for r in ref]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="larger than img_size"):
        ours.preprocess(torch.zeros(1, 3, 129, 100))
