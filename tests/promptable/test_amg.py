"""Automatic mask generation: parity with segment-anything's SamAutomaticMaskGenerator, RLE/JSON, overlay, errors.

The model is segment-anything's ``Sam`` with a tiny random ViT. Plain random weights give one
near-constant mask per image, so the hypernetwork/upscaling weights are scaled up (masks then depend
on the point) and the IoU head's bias is raised (predicted IoUs land around 0.7–1.0, so the default
0.88 threshold keeps some masks and drops others).
"""

from __future__ import annotations

import json
import math
import sys
import types
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

segment_anything = pytest.importorskip("segment_anything")
coco_mask = pytest.importorskip("pycocotools.mask")

from segment_anything import SamAutomaticMaskGenerator, SamPredictor  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.utils import amg as upstream_amg  # noqa: E402

from anydistill.promptable import mask_utils  # noqa: E402
from anydistill.promptable.amg import AutomaticMaskGenerator  # noqa: E402
from anydistill.promptable.amg_output import (  # noqa: E402
    masks_to_coco_json,
    save_coco_json,
    save_overlay,
)

IMG = 128  # model input size
FAST = dict(points_per_side=8)  # 64 prompts


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sam_parts(seed: int = 2) -> tuple[ImageEncoderViT, PromptEncoder, MaskDecoder]:
    torch.manual_seed(seed)
    dim = 32
    encoder = ImageEncoderViT(
        img_size=IMG,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        out_chans=dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=4,
        global_attn_indexes=(1,),
    )
    prompt = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(IMG // 16, IMG // 16),
        input_image_size=(IMG, IMG),
        mask_in_chans=8,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
        transformer_dim=dim,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
    )
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "output_hypernetworks" in name or "output_upscaling" in name:
                p.mul_(8.0)  # sharper, point-dependent masks
        decoder.iou_prediction_head.layers[-1].bias.add_(1.1)  # predicted IoU ~0.7..1.0
    return encoder, prompt, decoder


@pytest.fixture(scope="module")
def sam() -> Sam:
    return Sam(*tiny_sam_parts()).eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """(100, 140, 3) uint8: a red rectangle, a green disc and a blue rectangle on grey."""
    im = np.full((100, 140, 3), 40, np.uint8)
    im[10:50, 15:60] = (220, 30, 30)
    yy, xx = np.mgrid[:100, :140]
    im[(yy - 65) ** 2 + (xx - 95) ** 2 < 25**2] = (30, 200, 60)
    im[70:95, 10:40] = (40, 60, 230)
    return im


def _as_mask(seg) -> np.ndarray:
    return coco_mask.decode(seg).astype(bool) if isinstance(seg, dict) else np.asarray(seg, dtype=bool)


def assert_same_records(ours: list[dict], upstream: list[dict]) -> None:
    assert len(ours) == len(upstream)
    for i, (a, b) in enumerate(zip(ours, upstream, strict=True)):
        np.testing.assert_array_equal(
            _as_mask(a["segmentation"]), _as_mask(b["segmentation"]), err_msg=f"mask {i}"
        )
        assert a["area"] == b["area"], i
        assert a["bbox"] == b["bbox"], i
        assert a["crop_box"] == b["crop_box"], i
        np.testing.assert_allclose(a["point_coords"], b["point_coords"], rtol=0, atol=1e-9)
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-5)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-5, nan_ok=True)


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="defaults"),
        pytest.param(dict(FAST, pred_iou_thresh=0.0, stability_score_thresh=0.0), id="no-filters"),
        pytest.param(dict(FAST, pred_iou_thresh=0.8, stability_score_thresh=0.5), id="low-thresholds"),
        # Predicted IoUs here fall in two clusters (~0.70-0.78, ~0.91-1.04): cut inside each one.
        pytest.param(dict(FAST, pred_iou_thresh=0.96, stability_score_thresh=0.9), id="iou-0.96"),
        pytest.param(dict(FAST, crop_n_layers=1), id="crops"),
        pytest.param(
            dict(points_per_side=16, crop_n_layers=1, crop_n_points_downscale_factor=2, pred_iou_thresh=0.74),
            id="crops-downscaled",
        ),
        pytest.param(dict(FAST, box_nms_thresh=0.3, points_per_batch=7), id="odd-batches-strict-nms"),
    ],
)
def test_parity_with_segment_anything(sam: Sam, image: np.ndarray, settings: dict) -> None:
    upstream = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    ours = AutomaticMaskGenerator(SamPredictor(sam), **settings).generate(image)
    assert len(upstream) > 0, "the test model should produce masks with these settings"
    assert_same_records(ours, upstream)
    assert all(isinstance(r["segmentation"], np.ndarray) and r["segmentation"].dtype == bool for r in ours)
    assert all(r["segmentation"].shape == image.shape[:2] for r in ours)


def test_filters_and_crops_change_the_result(sam: Sam, image: np.ndarray) -> None:
    """The settings above are not all equivalent: each filter and the crops matter on this model."""
    n = {
        key: len(AutomaticMaskGenerator(SamPredictor(sam), **FAST, **kw).generate(image))
        for key, kw in {
            "none": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
            "nms": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0),
            "default": {},
            "crops": dict(crop_n_layers=1),
        }.items()
    }
    assert n["none"] == 8 * 8 * 3  # every candidate survives with all filters off
    assert n["none"] > n["nms"] > 0
    assert n["crops"] > n["default"] > 0


def test_parity_coco_rle(sam: Sam, image: np.ndarray) -> None:
    settings = dict(FAST, crop_n_layers=1, output_mode="coco_rle")
    upstream = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    ours = AutomaticMaskGenerator(SamPredictor(sam), **settings).generate(image)
    assert_same_records(ours, upstream)
    for a, b in zip(ours, upstream, strict=True):
        assert isinstance(a["segmentation"]["counts"], str)
        assert a["segmentation"] == b["segmentation"]  # same compressed string, not only the same mask


def test_parity_explicit_point_grids(sam: Sam, image: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    grids = [rng.uniform(0, 1, size=(50, 2)), rng.uniform(0, 1, size=(20, 2))]
    settings = dict(points_per_side=None, point_grids=grids, crop_n_layers=1, pred_iou_thresh=0.8)
    upstream = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    ours = AutomaticMaskGenerator(SamPredictor(sam), **settings).generate(image)
    assert len(upstream) > 0
    assert_same_records(ours, upstream)


def _upstream_remove_small_regions_with_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream's clean-up needs OpenCV (not installed): give it our scipy connected components instead,
    so the test checks the surrounding pipeline (re-encoding, box update, NMS preferring unchanged masks)."""
    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    import segment_anything.automatic_mask_generator as upstream_module

    monkeypatch.setattr(upstream_module, "remove_small_regions", mask_utils.remove_small_regions)


def test_parity_min_mask_region_area(sam: Sam, image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dict(FAST, pred_iou_thresh=0.8, stability_score_thresh=0.3, min_mask_region_area=30)
    plain = AutomaticMaskGenerator(SamPredictor(sam), **{**settings, "min_mask_region_area": 0}).generate(
        image
    )
    ours = AutomaticMaskGenerator(SamPredictor(sam), **settings).generate(image)
    _upstream_remove_small_regions_with_scipy(monkeypatch)
    upstream = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    assert_same_records(ours, upstream)
    assert [r["area"] for r in ours] != [r["area"] for r in plain], (
        "the clean-up should change something here"
    )


# ----------------------------------------------------------------------------------------- mask utils


def test_utils_match_upstream() -> None:
    for n in (1, 3, 8):
        np.testing.assert_array_equal(mask_utils.build_point_grid(n), upstream_amg.build_point_grid(n))
    for size, layers, ratio in [((100, 140), 2, 512 / 1500), ((1, 1), 1, 0.3), ((640, 480), 3, 0.1)]:
        assert mask_utils.generate_crop_boxes(size, layers, ratio) == upstream_amg.generate_crop_boxes(
            size, layers, ratio
        )
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 2, 13, 17, generator=g) > 0.97
    masks[0, 0] = False  # empty
    masks[1, 1] = False
    masks[1, 1, 4, 9] = True  # one pixel: a zero-size box at (9, 4)
    torch.testing.assert_close(mask_utils.batched_mask_to_box(masks), upstream_amg.batched_mask_to_box(masks))
    assert mask_utils.batched_mask_to_box(masks)[1, 1].tolist() == [9, 4, 9, 4]
    flat = masks.flatten(0, 1)
    ours = mask_utils.encode_rle(flat)
    theirs = [upstream_amg.coco_encode_rle(r) for r in upstream_amg.mask_to_rle_pytorch(flat)]
    assert ours == theirs
    np.testing.assert_array_equal(mask_utils.decode_rle(ours), flat.numpy())
    assert mask_utils.rle_area(ours) == flat.sum((1, 2)).tolist()


def test_stability_score_is_iou_of_offset_thresholds() -> None:
    logits = torch.randn(5, 20, 30, generator=torch.Generator().manual_seed(1)) * 3
    t, o = 0.25, 1.0
    strict, loose = logits > t + o, logits > t - o
    iou = (strict & loose).sum((1, 2)).float() / (strict | loose).sum((1, 2)).float()
    torch.testing.assert_close(mask_utils.calculate_stability_score(logits, t, o), iou)
    empty = mask_utils.calculate_stability_score(torch.full((1, 4, 4), -10.0), 0.0, 1.0)
    assert math.isnan(empty.item())


def test_remove_small_regions_by_hand() -> None:
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:8, 1:8] = True
    mask[4, 4] = False  # 1-px hole
    mask[10, 10] = True  # 1-px island
    mask[9, 9] = True  # diagonal neighbour: 8-connected with (10, 10) -> a 2-px island
    filled, changed = mask_utils.remove_small_regions(mask, 3, "holes")
    assert changed and filled[4, 4] and filled.sum() == mask.sum() + 1
    cleaned, changed = mask_utils.remove_small_regions(filled, 3, "islands")
    assert changed and not cleaned[10, 10] and not cleaned[9, 9] and cleaned.sum() == 49
    same, changed = mask_utils.remove_small_regions(cleaned, 3, "islands")
    assert not changed and (same == cleaned).all()
    # Every island small: the largest is kept.
    tiny = np.zeros((6, 6), dtype=bool)
    tiny[0, 0] = True
    tiny[3:5, 3] = True
    kept, changed = mask_utils.remove_small_regions(tiny, 10, "islands")
    assert changed and kept.sum() == 2 and kept[3, 3] and not kept[0, 0]


# -------------------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def records(sam: Sam, image: np.ndarray) -> list[dict]:
    out = AutomaticMaskGenerator(
        SamPredictor(sam), **FAST, pred_iou_thresh=0.8, stability_score_thresh=0.5
    ).generate(image)
    assert len(out) > 3
    return out


def test_coco_json_round_trips(records: list[dict], tmp_path) -> None:
    path = save_coco_json(records, tmp_path / "out" / "masks.json", image_id=7, file_name="img.png")
    data = json.loads(path.read_text())
    assert data["images"] == [{"id": 7, "height": 100, "width": 140, "file_name": "img.png"}]
    assert [c["id"] for c in data["categories"]] == [1]
    anns = data["annotations"]
    assert len(anns) == len(records)
    assert len({a["id"] for a in anns}) == len(anns)
    for ann, rec in zip(anns, records, strict=True):
        assert ann["image_id"] == 7 and ann["iscrowd"] == 0
        assert isinstance(ann["segmentation"]["counts"], str) and ann["segmentation"]["size"] == [100, 140]
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), rec["segmentation"])
        assert ann["area"] == int(coco_mask.area(rle)) == int(rec["segmentation"].sum())
        assert ann["bbox"] == rec["bbox"]
        assert ann["score"] == pytest.approx(rec["predicted_iou"])
    # Records already in coco_rle form give the same JSON.
    as_rle = [dict(r, segmentation=mask_utils.encode_rle(r["segmentation"][None])[0]) for r in records]
    assert masks_to_coco_json(as_rle, image_id=7, file_name="img.png") == data


def test_coco_json_needs_a_size_without_records() -> None:
    with pytest.raises(ValueError, match="size"):
        masks_to_coco_json([])
    assert masks_to_coco_json([], size=(4, 5))["images"][0] == {"id": 0, "height": 4, "width": 5}


def test_overlay_png(records: list[dict], image: np.ndarray, tmp_path) -> None:
    path = save_overlay(image, records, tmp_path / "viz" / "overlay.png")
    out = np.asarray(Image.open(path).convert("RGB"))
    assert out.shape == image.shape
    covered = np.any([r["segmentation"] for r in records], axis=0)
    np.testing.assert_array_equal(out[~covered], image[~covered])  # untouched outside the masks
    assert (out[covered] != image[covered]).any(axis=-1).mean() > 0.5  # tinted inside


# --------------------------------------------------------------------------------- errors and edges


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(points_per_side=None, point_grids=None), "exactly one of points_per_side and point_grids"),
        (
            dict(points_per_side=8, point_grids=[np.full((4, 2), 0.5)]),
            "exactly one of points_per_side and point_grids",
        ),
        (dict(output_mode="uncompressed"), "output_mode"),
        (dict(points_per_side=0), "points_per_side"),
        (dict(points_per_batch=0), "points_per_batch"),
        (dict(box_nms_thresh=1.5), "box_nms_thresh"),
        (dict(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4), "crop layer 2"),
        (
            dict(points_per_side=None, point_grids=[np.full((4, 2), 0.5)], crop_n_layers=1),
            "one grid per layer",
        ),
        (dict(points_per_side=None, point_grids=[np.full((4, 2), 2.0)]), r"\[0, 1\]"),
    ],
)
def test_invalid_settings_raise(sam: Sam, settings: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AutomaticMaskGenerator(SamPredictor(sam), **settings)


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3))]
)
def test_invalid_image_raises(sam: Sam, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        AutomaticMaskGenerator(SamPredictor(sam), **FAST).generate(bad)


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_one_pixel_image(sam: Sam, crop_n_layers: int) -> None:
    """Upstream crashes on the empty crops of a 1x1 image with crops; we skip them."""
    im = np.full((1, 1, 3), 200, np.uint8)
    gen = AutomaticMaskGenerator(SamPredictor(sam), points_per_side=2, crop_n_layers=crop_n_layers)
    for rec in gen.generate(im):
        assert rec["segmentation"].shape == (1, 1)
        assert rec["bbox"] == [0, 0, 0, 0] and rec["area"] in (0, 1)
    loose = AutomaticMaskGenerator(
        SamPredictor(sam), points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    ).generate(im)
    assert len(loose) >= 1


def test_builds_our_predictor_from_a_model(sam: Sam, image: np.ndarray) -> None:
    """Given a model (not a predictor), the generator wraps it in anydistill.promptable.SamPredictor."""
    predictor_module = pytest.importorskip("anydistill.promptable.predictor")
    gen = AutomaticMaskGenerator(sam, **FAST, pred_iou_thresh=0.8, stability_score_thresh=0.5)
    assert isinstance(gen.predictor, predictor_module.SamPredictor)
    upstream = SamAutomaticMaskGenerator(sam, **FAST, pred_iou_thresh=0.8, stability_score_thresh=0.5)
    assert_same_records(gen.generate(image), upstream.generate(image))


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(dict(points_per_side=16), id="default-thresholds"),
        pytest.param(dict(FAST, crop_n_layers=1), id="crops"),
    ],
)
def test_our_model_and_predictor(sam: Sam, image: np.ndarray, settings: dict) -> None:
    """anydistill's Sam (same weights, key-mapped) + anydistill's SamPredictor + our generator.

    Exact against upstream's generator on the same model (only predictor + generator differ); close
    against the upstream model (the ViTs are different code, so a logit at 0 could flip a pixel).
    """
    pytest.importorskip("anydistill.promptable.predictor")
    sam_models = pytest.importorskip("anydistill.models.sam")
    ours_model = sam_models.sam_vit_b(
        img_size=IMG,
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        window_size=4,
        mlp_ratio=2.0,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ).eval()
    ours_model.load_state_dict(sam_models.official_to_anydistill(sam.state_dict()), strict=True)
    ours = AutomaticMaskGenerator(ours_model, **settings).generate(image)
    assert len(ours) > 0
    assert_same_records(ours, SamAutomaticMaskGenerator(ours_model, **settings).generate(image))
    upstream = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    assert len(ours) == len(upstream)
    for a, b in zip(ours, upstream, strict=True):
        inter = (a["segmentation"] & b["segmentation"]).sum()
        union = (a["segmentation"] | b["segmentation"]).sum()
        assert union == 0 or inter / union >= 0.99
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-4)
