"""Joint transforms: identical geometry for image and targets, nearest masks, validity-aware depth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anydistill.data.sample_ops import ToTensorSample, resize_depth
from anydistill.data.transforms import (
    Compose,
    PadToMultiple,
    PadToSize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ResizeToMultiple,
    collate_samples,
    eval_transforms,
    restore_prediction,
    train_transforms,
)
from anydistill.errors import ConfigError

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)


def _block_scene(h: int = 48, w: int = 48, block: int = 8, seed: int = 0) -> dict:
    """Blocks of one class each; the image colour, depth and instance id all encode the block."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, len(PALETTE), size=(h // block, w // block))
    semantic = classes.repeat(block, 0).repeat(block, 1).astype(np.uint8)  # (H, W)
    instance = (np.arange(classes.size).reshape(classes.shape) + 1).repeat(block, 0).repeat(block, 1)
    return {
        "image": PALETTE[semantic],  # (H, W, 3)
        "semantic": semantic,
        "instance": instance.astype(np.int32),
        "depth": (1.0 + semantic).astype(np.float32),
        "id": f"scene{seed}",
    }


def _interior(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood has one label (away from block edges and the border)."""
    m = mask.float()[None, None]  # (1, 1, H, W)
    k = 2 * radius + 1
    hi = torch.nn.functional.max_pool2d(m, k, stride=1, padding=radius)
    lo = -torch.nn.functional.max_pool2d(-m, k, stride=1, padding=radius)
    inner = torch.zeros_like(mask, dtype=torch.bool)
    inner[radius:-radius, radius:-radius] = True
    return (hi == lo)[0, 0] & inner


# ------------------------------------------------------------------------------------ to tensor
def test_to_tensor_sample() -> None:
    raw = _block_scene(16, 24)
    raw["depth"][0, :3] = [np.nan, np.inf, -1.0]
    raw["K"] = np.eye(3, dtype=np.float32)
    out = ToTensorSample()(raw)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 16, 24)
    np.testing.assert_allclose(out["image"].permute(1, 2, 0).numpy() * 255, raw["image"], atol=1e-4)
    assert out["depth"].shape == out["depth_valid"].shape == (1, 16, 24)
    assert out["depth_valid"][0, 0, :4].tolist() == [False, False, False, True]
    assert (out["depth"][~out["depth_valid"]] == 0).all()
    assert out["semantic"].dtype == out["instance"].dtype == torch.int64
    assert out["orig_size"] == (16, 24) and out["id"] == "scene0" and out["K"].shape == (3, 3)


def test_unknown_spatial_key_is_refused() -> None:
    raw = _block_scene(8, 8)
    raw["normals"] = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="normals"):
        ToTensorSample()(raw)


# ------------------------------------------------------------------------------ joint geometry
@pytest.mark.parametrize("seed", range(6))
def test_crop_and_flip_keep_image_and_targets_aligned(seed: int) -> None:
    torch.manual_seed(seed)
    raw = _block_scene(block=12, seed=seed)
    pipeline = Compose(
        [ToTensorSample(), RandomResizedCrop(32, scale=(0.3, 1.0)), RandomHorizontalFlip(p=float(seed % 2))]
    )
    out = pipeline(raw)
    sem = out["semantic"]
    assert sem.shape == (32, 32) and out["image"].shape == (3, 32, 32) and out["depth"].shape == (1, 32, 32)
    inner = _interior(sem)
    assert inner.float().mean() > 0.2
    colours = torch.from_numpy(PALETTE).float() / 255  # (K, 3)
    expected = colours[sem].permute(2, 0, 1)  # (3, H, W)
    torch.testing.assert_close(out["image"][:, inner], expected[:, inner], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["depth"][0][inner], 1.0 + sem[inner].float())
    # Instance ids follow the same geometry: one instance per block, so one class per instance.
    for inst in out["instance"].unique():
        assert sem[out["instance"] == inst].unique().numel() == 1


def test_train_transforms_shapes_and_alignment() -> None:
    torch.manual_seed(0)
    tf = train_transforms(32, 16, scale=(0.5, 1.0))
    for seed in range(4):
        out = tf(_block_scene(seed=seed))
        inner = _interior(out["semantic"])
        colours = torch.from_numpy(PALETTE).float() / 255
        expected = colours[out["semantic"]].permute(2, 0, 1)  # (3, H, W)
        torch.testing.assert_close(out["image"][:, inner], expected[:, inner], atol=1e-5, rtol=0)
        assert out["image"].shape == (3, 32, 32)


@pytest.mark.parametrize("size", [(7, 5), (31, 53), (24, 24)])
def test_masks_are_nearest_no_new_ids(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    ids = rng.choice([0, 3, 17, 254, 255], size=(24, 24)).astype(np.uint8)
    inst = rng.choice([0, 5, 1000, 70000], size=(24, 24)).astype(np.int32)
    sample = ToTensorSample()({"image": np.zeros((24, 24, 3), np.uint8), "semantic": ids, "instance": inst})
    out = Compose([ResizeToMultiple(1), RandomResizedCrop(size, scale=(0.2, 1.0))])(sample)
    assert set(out["semantic"].unique().tolist()) <= set(np.unique(ids).tolist())
    assert set(out["instance"].unique().tolist()) <= set(np.unique(inst).tolist())


def test_mask_sampling_grid_is_pixel_centred() -> None:
    # A 3x downsample: output pixel (i, j) is centred on source pixel (3i + 1, 3j + 1), where the
    # bilinear image filter also peaks; plain "nearest" would take (3i, 3j), a pixel off.
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 50, size=(12, 18)).astype(np.uint8)
    out = Resize(6)(ToTensorSample()({"image": np.zeros((12, 18, 3), np.uint8), "semantic": ids}))
    np.testing.assert_array_equal(out["semantic"].numpy(), ids[1::3, 1::3])


# ---------------------------------------------------------------------------------------- depth
def _contributors(n_in: int, n_out: int) -> list[np.ndarray]:
    """Source indices with non-zero weight in an antialiased bilinear resize (triangle filter of
    half-width max(scale, 1) around the centre (i + 0.5) * scale - 0.5)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    src = np.arange(n_in)
    out = []
    for i in range(n_out):
        centre = (i + 0.5) * scale - 0.5
        out.append(src[np.abs(src - centre) < support - 1e-9])
    return out


@pytest.mark.parametrize("size", [(6, 8), (24, 32), (8, 12), (5, 7)])
def test_depth_resize_never_invents_values_or_crosses_invalid(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    h, w = 12, 16
    depth = rng.uniform(1.0, 10.0, size=(h, w)).astype(np.float32)
    valid = rng.random((h, w)) > 0.15
    depth[~valid] = 0.0
    out_d, out_v = resize_depth(torch.from_numpy(depth)[None], torch.from_numpy(valid)[None], size)
    out_d, out_v = out_d[0].numpy(), out_v[0].numpy()

    rows, cols = _contributors(h, size[0]), _contributors(w, size[1])
    ref_valid = np.array([[valid[np.ix_(r, c)].all() for c in cols] for r in rows])
    # Nearest (pixel-centre aligned) source of each output pixel, computed independently.
    near_r = np.minimum(np.floor((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    near_c = np.minimum(np.floor((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    ref_depth = np.where(ref_valid, depth[np.ix_(near_r, near_c)], 0.0)
    np.testing.assert_array_equal(out_v, ref_valid)
    np.testing.assert_array_equal(out_d, ref_depth)
    assert set(np.unique(out_d)) <= set(np.unique(depth)) | {0.0}


# -------------------------------------------------------------------------------------- padding
def test_pad_fill_values_and_record() -> None:
    raw = _block_scene(4, 5, block=1)
    sample = ToTensorSample()(raw)
    out = PadToSize(7, 9, center=True)(sample)
    assert out["pad"] == (1, 2, 2, 2) and out["orig_size"] == (4, 5)
    assert out["image"].shape == (3, 7, 9)
    region = torch.ones(7, 9, dtype=torch.bool)
    region[1:5, 2:7] = False
    assert (out["image"][:, region] == 0).all()
    assert (out["depth"][0][region] == 0).all() and not out["depth_valid"][0][region].any()
    assert (out["semantic"][region] == 255).all() and (out["instance"][region] == 0).all()
    torch.testing.assert_close(out["image"][:, 1:5, 2:7], sample["image"])
    assert out["depth_valid"][0, 1:5, 2:7].all()

    again = PadToMultiple(4)(out)  # 7x9 -> 8x12, bottom/right; pads accumulate
    assert again["image"].shape == (3, 8, 12) and again["pad"] == (1, 2, 3, 5)
    with pytest.raises(ValueError, match="pad last"):
        Resize(16)(again)


def test_resize_long_and_short_side() -> None:
    sample = ToTensorSample()({"image": np.zeros((30, 20, 3), np.uint8)})
    assert Resize(15)(sample)["image"].shape == (3, 15, 10)
    assert Resize(40, side="short")(sample)["image"].shape == (3, 60, 40)
    assert ResizeToMultiple(14)(sample)["image"].shape == (3, 28, 14)
    assert ResizeToMultiple(14, rounding="ceil")(sample)["image"].shape == (3, 42, 28)


# --------------------------------------------------------------------------------- eval + undo
def test_eval_transforms_round_trip() -> None:
    rng = np.random.default_rng(3)
    semantic = rng.integers(0, 5, size=(16, 8)).astype(np.uint8)
    yy, xx = np.mgrid[0:16, 0:8]
    image = np.stack([yy * 15, xx * 30, 100 + 0 * xx], -1).astype(np.uint8)  # smooth ramps
    out = eval_transforms(32, 8)({"image": image, "semantic": semantic, "id": "a"})
    assert out["image"].shape == (3, 32, 32) and out["semantic"].shape == (32, 32)
    assert out["orig_size"] == (16, 8) and out["pad"] == (0, 0, 0, 16)
    back = restore_prediction(out["semantic"][None], out["pad"], out["orig_size"], mode="nearest")
    np.testing.assert_array_equal(back[0].numpy(), semantic)  # exact 2x: nearest round-trips
    img_back = restore_prediction(out["image"], out["pad"], out["orig_size"])
    assert img_back.shape == (3, 16, 8)
    np.testing.assert_allclose(img_back.permute(1, 2, 0).numpy() * 255, image, atol=8)

    odd = eval_transforms(32, 8)({"image": np.zeros((30, 20, 3), np.uint8)})
    assert odd["image"].shape == (3, 32, 32) and odd["pad"] == (0, 0, 0, 11)  # 30x20 -> 32x21


def test_builders_check_multiple() -> None:
    with pytest.raises(ConfigError, match="multiple of 14"):
        train_transforms(30, 14)
    with pytest.raises(ConfigError, match="multiple of 16"):
        eval_transforms(40, 16)


# -------------------------------------------------------------------------------------- intrinsics
def _dot_sample(h: int, w: int, u: int, v: int) -> dict:
    semantic = np.zeros((h, w), np.uint8)
    semantic[v - 1 : v + 2, u - 1 : u + 2] = 1  # a 3x3 dot centred on pixel (u, v)
    k = np.array([[20.0, 0, 9.5], [0, 20.0, 7.5], [0, 0, 1]], np.float32)
    return {"image": np.zeros((h, w, 3), np.uint8), "semantic": semantic, "K": k}


def _centroid(mask: torch.Tensor) -> tuple[float, float]:
    v, u = torch.nonzero(mask, as_tuple=True)
    return u.float().mean().item(), v.float().mean().item()


def _project(k: torch.Tensor, point: tuple[float, float, float]) -> tuple[float, float]:
    p = k @ torch.tensor(point)
    return (p[0] / p[2]).item(), (p[1] / p[2]).item()


def test_intrinsics_follow_the_pixels() -> None:
    # A 3D point that projects exactly onto the dot's centre pixel (u, v) = (14, 5); after each
    # transform the dot's centroid must be where the updated K projects the point.
    point = ((14 - 9.5) / 20, (5 - 7.5) / 20, 1.0)
    raw = _dot_sample(16, 20, 14, 5)
    assert _project(torch.from_numpy(raw["K"]), point) == pytest.approx((14, 5))

    up = Resize(40)(raw)  # exact 2x
    assert _centroid(up["semantic"] == 1) == pytest.approx(_project(up["K"], point))
    flipped = RandomHorizontalFlip(p=1.0)(up)  # a flip mirrors the scene: X -> -X
    mirrored = (-point[0], point[1], point[2])
    assert _centroid(flipped["semantic"] == 1) == pytest.approx(_project(flipped["K"], mirrored))
    padded = PadToSize(40, 48, center=True)(flipped)
    assert _centroid(padded["semantic"] == 1) == pytest.approx(_project(padded["K"], mirrored))

    for seed in range(3):
        torch.manual_seed(seed)
        cropped = RandomResizedCrop(24, scale=(0.6, 1.0))(raw)
        if (cropped["semantic"] == 1).any():
            u, v = _centroid(cropped["semantic"] == 1)
            pu, pv = _project(cropped["K"], point)
            assert math.hypot(u - pu, v - pv) < 1.0


# ----------------------------------------------------------------------------------------- collate
def test_collate_samples() -> None:
    tf = eval_transforms(16, 8)
    samples = [tf(_block_scene(12, 16, block=4, seed=s)) for s in range(3)]
    batch = collate_samples(samples)
    assert batch["image"].shape == (3, 3, 16, 16) and batch["semantic"].shape == (3, 16, 16)
    assert batch["depth_valid"].dtype == torch.bool
    assert batch["id"] == ["scene0", "scene1", "scene2"] and batch["pad"][0] == (0, 0, 4, 0)
    torch.testing.assert_close(batch["image"][1], samples[1]["image"])

    other = ToTensorSample()(_block_scene(8, 8))
    with pytest.raises(ValueError, match="differ in keys"):
        collate_samples([samples[0], {"image": other["image"], "id": "x"}])
    with pytest.raises(ValueError, match='cannot stack "image"'):
        collate_samples([samples[0], {**samples[1], "image": torch.zeros(3, 8, 8)}])
