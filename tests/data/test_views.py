"""Self-supervised views: per-image v2 pipelines, collate, and the batched on-device photometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from anydistill.data.classify import ClassFolderDataset
from anydistill.data.views import (
    BatchedViewAugment,
    DINOViews,
    MAEView,
    SimCLRViews,
    ViewSpec,
    collate_views,
)
from anydistill.errors import ConfigError
from anydistill.preprocess import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _constant(value: tuple[int, int, int], side: int = 32) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.uint8).view(3, 1, 1).expand(3, side, side).contiguous()


def _stripes(side: int = 32, period: int = 4) -> torch.Tensor:
    """Horizontal stripes (flip-invariant): rows alternate 0 / 255 every ``period // 2`` rows."""
    rows = (torch.arange(side) // (period // 2)) % 2 * 255
    return rows.to(torch.uint8).view(1, side, 1).expand(3, side, side).contiguous()


def _normalised(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.float() / 255 - mean) / std


# ----------------------------------------------------------------------------- per-image views
def test_simclr_views_shapes_count_dtype_and_recipe() -> None:
    views = SimCLRViews(32)(_image())
    assert len(views) == 2
    assert all(v.shape == (3, 32, 32) and v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])
    assert len(SimCLRViews(24, n_views=3)(_image())) == 3
    cifar, imagenet = SimCLRViews(32).specs[0], SimCLRViews(224, jitter_strength=1.0).specs[0]
    assert (
        cifar.jitter == pytest.approx((0.4, 0.4, 0.4, 0.1)) and cifar.jitter_p == 0.8 and cifar.gray_p == 0.2
    )
    assert cifar.blur_p == 0.0 and cifar.scale == (0.08, 1.0)  # SimCLR's CIFAR setting: no blur
    assert imagenet.jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert imagenet.blur_p == 0.5 and imagenet.kernel == 23  # ~10 % of 224, odd
    assert SimCLRViews(96).specs[0].kernel == 9


def test_views_accept_numpy_hwc_and_refuse_other_input() -> None:
    image = _image()
    torch.manual_seed(0)
    a = SimCLRViews(16)(image)
    torch.manual_seed(0)
    b = SimCLRViews(16)(image.permute(1, 2, 0).numpy())
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(TypeError, match="uint8"):
        SimCLRViews(16)(image.float())
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        SimCLRViews(16)(image[0])


def test_normalisation_is_exact_when_the_photometry_is_off() -> None:
    views = SimCLRViews(16, jitter_strength=0.0, p_gray=0.0)
    mean_colour = tuple(round(255 * m) for m in IMAGENET_MEAN)
    for v in views(_constant(mean_colour)):
        assert v.abs().max() < 0.5 / 255 / min(IMAGENET_STD)  # the mean colour maps to 0
    white = views(_constant((255, 255, 255)))[0]
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(white.mean((1, 2)), expected, atol=1e-5)
    other = SimCLRViews(16, jitter_strength=0.0, p_gray=0.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert torch.allclose(other(_constant((255, 0, 255)))[0].mean((1, 2)), torch.tensor([1.0, -1.0, 1.0]))


def test_views_are_reproducible_under_manual_seed() -> None:
    image = _image()
    for transform in (SimCLRViews(24), DINOViews(24, 12, 2), MAEView(24)):
        torch.manual_seed(5)
        a = transform(image)
        torch.manual_seed(5)
        b = transform(image)
        torch.manual_seed(6)
        c = transform(image)
        a, b, c = ([x] if isinstance(x, torch.Tensor) else x for x in (a, b, c))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_dino_views_order_sizes_and_asymmetric_recipe() -> None:
    dino = DINOViews(32, 16, 4)
    views = dino(_image())
    assert len(views) == 6 and dino.n_global == 2 and dino.n_local == 4
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32)] * 2 + [(16, 16)] * 4  # locals smaller
    assert [s.blur_p for s in dino.specs[:3]] == [1.0, 0.1, 0.5]
    assert [s.solarize_p for s in dino.specs[:3]] == [0.0, 0.2, 0.0]
    assert dino.specs[0].scale == (0.4, 1.0) and dino.specs[2].scale == (0.05, 0.4)
    assert dino.specs[0].interpolation == "bicubic"
    assert [s.kernel for s in DINOViews().specs[:3]] == [23, 23, 9]
    assert len(DINOViews(32, 16, 0)(_image())) == 2


def test_dino_solarisation_probability_per_view() -> None:
    """Solarisation only on the second global view, with p = 0.2 (a bright constant image: 200 → 55)."""
    dino = DINOViews(16, 8, 2, jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0, 0.0))
    torch.manual_seed(0)
    bright = _constant((200, 200, 200), 24)
    solarised = np.array([[float(v[0, 0, 0]) < 0 for v in dino(bright)] for _ in range(100)])  # (100, 4)
    assert solarised[:, 0].sum() == 0 and solarised[:, 2:].sum() == 0
    assert 10 <= solarised[:, 1].sum() <= 30


def test_dino_blur_probability_per_view() -> None:
    """Blur on global 1 always, global 2 with p = 0.1, locals with p = 0.5. Seen on horizontal stripes
    cropped whole (scale 1: flips and crops leave them unchanged); σ below ~0.25 px changes nothing
    measurable, about 8 % of the draws, hence the margins."""
    kwargs = dict(
        global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, solarize_p=(0.0, 0.0, 0.0)
    )
    dino = DINOViews(32, 16, 2, **kwargs)
    sharp = DINOViews(32, 16, 2, blur_p=(0.0, 0.0, 0.0), **kwargs)(_stripes())
    torch.manual_seed(0)
    blurred = np.array(
        [
            [(v - s).abs().max() > 1e-3 for v, s in zip(dino(_stripes()), sharp, strict=True)]
            for _ in range(100)
        ]
    )  # (100, 4)
    rates = blurred.mean(0)
    assert rates[0] >= 0.8, rates
    assert rates[1] <= 0.2, rates
    assert 0.3 <= rates[2:].mean() <= 0.65, rates


def test_mae_view_is_one_normalised_crop() -> None:
    view = MAEView(24)
    out = view(_image())
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert view.spec.scale == (0.2, 1.0) and view.spec.jitter_p == 0.0 and view.spec.gray_p == 0.0
    batch = collate_views([{"image": view(_image()), "id": "a"}, {"image": view(_image(seed=1)), "id": "b"}])
    assert [v.shape for v in batch["views"]] == [(2, 3, 24, 24)] and "label" not in batch


def test_bad_view_settings_are_config_errors_naming_the_key() -> None:
    for kwargs, key in (
        ({"blur_p": 1.5}, "blur_p"),
        ({"scale": (0.5, 1.5)}, "scale"),
        ({"blur_kernel": 4}, "blur_kernel"),
        ({"jitter": (0.4, 0.4, 0.4, 0.7)}, "jitter"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"interpolation": "nearest"}, "interpolation"),
    ):
        with pytest.raises(ConfigError, match=key):
            ViewSpec(32, **kwargs)
    with pytest.raises(ConfigError, match="n_views"):
        SimCLRViews(32, n_views=0)
    with pytest.raises(ConfigError, match="blur_p"):
        DINOViews(blur_p=(1.0, 0.1))  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- collate
def test_collate_views_stacks_each_view_with_labels_and_ids() -> None:
    dino = DINOViews(24, 12, 2)
    samples = [{"image": dino(_image(seed=i)), "label": torch.tensor(i), "id": f"x{i}"} for i in range(3)]
    batch = collate_views(samples)
    assert [tuple(v.shape) for v in batch["views"]] == [(3, 3, 24, 24)] * 2 + [(3, 3, 12, 12)] * 2
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [0, 1, 2]
    assert batch["id"] == ["x0", "x1", "x2"]
    assert torch.equal(batch["views"][2][1], samples[1]["image"][2])
    with pytest.raises(ValueError, match="numbers of views"):
        collate_views([samples[0], {"image": samples[1]["image"][:3], "label": 1}])
    with pytest.raises(ValueError, match="label"):
        collate_views([samples[0], {"image": samples[1]["image"]}])


# ------------------------------------------------------------------------------- batched version
def test_batched_augment_shape_dtype_device_and_input_kinds() -> None:
    augment = BatchedViewAugment(blur_p=0.5, solarize_p=0.2)
    crops = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        out = augment.to(device)(crops.to(device))
        assert out.shape == crops.shape and out.dtype == torch.float32 and out.device.type == device
    torch.manual_seed(1)
    from_uint8 = augment.cpu()(crops)
    torch.manual_seed(1)
    from_float = augment(crops.float() / 255)
    assert torch.allclose(from_uint8, from_float, atol=1e-5)
    assert augment(crops[:0]).shape == (0, 3, 20, 20)
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\)"):
        augment(crops[0])
    with pytest.raises(TypeError):
        augment(crops.long())


def test_batched_augment_draws_parameters_per_sample() -> None:
    torch.manual_seed(0)
    crops = _image(16, 16).unsqueeze(0).expand(8, -1, -1, -1)  # eight identical crops
    out = BatchedViewAugment(jitter_p=1.0, blur_p=0.0)(crops)
    assert len({tuple(o.flatten()[:64].tolist()) for o in out}) == 8


def test_batched_solarize_and_normalise_exactly() -> None:
    crops = torch.rand(4, 3, 8, 8)
    out = BatchedViewAugment(
        jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=1.0, mean=(0.0,) * 3, std=(1.0,) * 3
    )(crops)
    assert torch.allclose(out, torch.where(crops >= 0.5, 1 - crops, crops))


def test_batched_matches_the_per_image_distribution() -> None:
    """The same spec per image (torchvision) and per batch (kornia): the distributions of each view's mean,
    spread, colourfulness and grey share agree."""
    spec = ViewSpec(24, blur_p=0.5, solarize_p=0.2)
    image = _image(24, 24)
    n = 400
    torch.manual_seed(0)
    photometric = spec.photometric()
    per_image = torch.stack([photometric(image) for _ in range(n)])  # (n, 3, 24, 24)
    batched = BatchedViewAugment.from_spec(spec)(image.expand(n, -1, -1, -1))  # (n, 3, 24, 24)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)

    def stats(views: torch.Tensor) -> dict[str, np.ndarray]:
        rgb = views * std + mean  # (n, 3, h, w) in [0, 1]
        return {
            "mean": rgb.mean((1, 2, 3)).numpy(),
            "spread": rgb.std((1, 2, 3)).numpy(),
            "colour": (rgb[:, 0] - rgb[:, 1]).abs().mean((1, 2)).numpy(),
            "grey": ((rgb[:, 0] - rgb[:, 1]).abs().amax((1, 2)) < 1e-4).float().numpy(),
        }

    a, b = stats(per_image), stats(batched)
    for key in ("mean", "spread", "colour"):
        qa, qb = np.quantile(a[key], [0.1, 0.5, 0.9]), np.quantile(b[key], [0.1, 0.5, 0.9])
        assert np.allclose(qa, qb, atol=0.04), (key, qa, qb)
    assert 0.12 <= a["grey"].mean() <= 0.28 and 0.12 <= b["grey"].mean() <= 0.28


def test_crops_then_batched_views_make_the_same_kind_of_batch() -> None:
    dino = DINOViews(24, 12, 2)
    crops = dino.crops()
    samples = [{"image": crops(_image(seed=i)), "id": str(i)} for i in range(4)]
    assert all(c.dtype == torch.uint8 for c in samples[0]["image"])
    batch = collate_views(samples)
    views = dino.batched()(batch["views"])
    assert [tuple(v.shape) for v in views] == [(4, 3, 24, 24)] * 2 + [(4, 3, 12, 12)] * 2
    assert all(v.dtype == torch.float32 for v in views)
    assert dino.batched().views[1].solarize is not None and dino.batched().views[0].solarize is None
    with pytest.raises(ValueError, match="expected 4 views"):
        dino.batched()(batch["views"][:2])


# ------------------------------------------------------------------------------------- real images
def test_simclr_views_of_cifar10_through_a_loader(shared_data: Path) -> None:
    root = shared_data / "cifar10" / "test"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    data = ClassFolderDataset(root)
    raw = data[0]["image"]
    data.transform = SimCLRViews(32)
    subset = torch.utils.data.Subset(data, range(0, 10_000, 500))  # 20 images, every class
    torch.manual_seed(0)
    batch = next(iter(DataLoader(subset, batch_size=20, collate_fn=collate_views)))
    assert [tuple(v.shape) for v in batch["views"]] == [(20, 3, 32, 32)] * 2
    assert sorted(set(batch["label"].tolist())) == list(range(10))
    assert batch["id"][0].startswith("airplane/")
    views = torch.stack(batch["views"])  # (2, 20, 3, 32, 32)
    assert views.mean().abs() < 0.5 and 0.5 < views.std() < 1.5  # ImageNet statistics fit CIFAR roughly
    assert not torch.equal(batch["views"][0], batch["views"][1])
    data.transform = SimCLRViews(32, jitter_strength=0.0, p_gray=0.0, scale=(1.0, 1.0))
    whole = data[0]["image"]  # the whole image, maybe flipped: normalisation only
    for view in whole:
        assert any(
            torch.allclose(view, _normalised(raw.flip(-1) if flip else raw), atol=1e-5) for flip in (0, 1)
        )
    data.transform = SimCLRViews(32).crops()
    assert all(c.dtype == torch.uint8 and c.shape == (3, 32, 32) for c in data[0]["image"])
