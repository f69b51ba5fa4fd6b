"""PseudoLabelDataset: raw samples joined with their images, changed images refused, loader-ready."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from stand_in_teacher import StandInTeacher
from torch.utils.data import DataLoader

from anydistill.cache import PseudoLabelDataset, open_cache, run_teacher_pass
from anydistill.data.io import read_image
from anydistill.data.toyworld import write_toyworld
from anydistill.errors import DataError

KW = {"batch_size": 4, "shard_size": 3, "num_workers": 0, "progress": False}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ds")
    write_toyworld(root / "toy", count=5, size=32, domain="wide", seed=4, progress=False)
    run_teacher_pass(StandInTeacher(), root / "toy", root / "cache", features=True, **KW)
    return root / "toy", root / "cache"


def test_samples_follow_the_raw_sample_convention(made: tuple[Path, Path]) -> None:
    images, cache = made
    ds = PseudoLabelDataset(cache, teacher_fingerprint=StandInTeacher().fingerprint, features=True)
    paths = sorted((images / "images").glob("*.png"))
    assert len(ds) == 5 and ds.ids == [p.stem for p in paths] and ds.unreadable == []
    teacher = StandInTeacher()
    for k, path in enumerate(paths):
        s = ds[k]
        assert sorted(s) == ["disparity", "feat", "id", "image"] and s["id"] == path.stem
        np.testing.assert_array_equal(s["image"], read_image(path))
        assert s["image"].dtype == np.uint8 and s["image"].shape == (32, 32, 3)
        assert s["disparity"].dtype == np.float32 and s["disparity"].shape == (32, 32)
        assert s["feat"].dtype == np.float32 and s["feat"].shape == (8, 8, 8)
        x = torch.from_numpy(s["image"]).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
        np.testing.assert_allclose(s["disparity"], teacher.predict(x)[0, 0].numpy(), rtol=2e-3, atol=1e-3)
    assert ds[-1]["id"] == paths[-1].stem
    assert sorted(PseudoLabelDataset(cache)[0]) == ["disparity", "id", "image"]  # no "feat" by default
    with pytest.raises(IndexError):
        ds[5]


def test_targets_stored_smaller_are_resized_to_the_image(made: tuple[Path, Path], tmp_path: Path) -> None:
    images, _ = made
    run_teacher_pass(StandInTeacher(), images, tmp_path / "c", max_size=16, **KW)
    ds = PseudoLabelDataset(tmp_path / "c")
    stored = open_cache(tmp_path / "c").read(ds.ids[0])["disp"]
    assert stored.shape == (16, 16)
    got = ds[0]["disparity"]
    want = F.interpolate(
        torch.from_numpy(stored.astype(np.float32))[None, None], size=(32, 32), mode="bilinear"
    )
    assert got.shape == (32, 32)
    np.testing.assert_allclose(got, want[0, 0].numpy(), rtol=1e-6)
    with pytest.raises(DataError, match="holds no features"):
        PseudoLabelDataset(tmp_path / "c", features=True)


def test_a_changed_or_missing_image_is_named(made: tuple[Path, Path], tmp_path: Path) -> None:
    images, cache = made
    moved = tmp_path / "moved"
    shutil.copytree(images / "images", moved)
    ds = PseudoLabelDataset(cache, images_dir=moved)
    ds[1]
    changed = ds.image_path(1)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed)
    with pytest.raises(DataError, match="changed since the teacher pass") as e:
        ds[1]
    assert e.value.path == changed
    assert PseudoLabelDataset(cache, images_dir=moved, check_images=False)[1]["image"].max() == 0
    ds.image_path(2).unlink()
    with pytest.raises(DataError, match="not found") as e:
        ds[2]
    assert e.value.path == ds.image_path(2)


def test_works_in_a_dataloader_with_workers(made: tuple[Path, Path]) -> None:
    _, cache = made
    ds = PseudoLabelDataset(cache)
    ds[0]  # open shard handles in the parent first: workers must not share them
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=list)
    got = {s["id"]: s["disparity"] for batch in loader for s in batch}
    assert sorted(got) == ds.ids
    for k, i in enumerate(ds.ids):
        np.testing.assert_array_equal(got[i], ds[k]["disparity"])


def test_joint_transforms_move_disparity_with_the_image(made: tuple[Path, Path]) -> None:
    from anydistill.data.sample_ops import ToTensorSample
    from anydistill.data.transforms import RandomHorizontalFlip

    _, cache = made
    sample = PseudoLabelDataset(cache)[0]
    tensor = ToTensorSample()(sample)
    assert tensor["disparity"].shape == (1, 32, 32) and bool(tensor["disparity_valid"].all())
    flipped = RandomHorizontalFlip(p=1.0)(tensor)
    torch.testing.assert_close(flipped["disparity"].flip(-1)[0], torch.from_numpy(sample["disparity"]))
    torch.testing.assert_close(flipped["image"].flip(-1), tensor["image"])
