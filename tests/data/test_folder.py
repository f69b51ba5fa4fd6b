"""FolderDataset: discovery, label matching, and one test per kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from anydistill.data.folder import FolderDataset, UnlabeledImageFolder
from anydistill.data.transforms import collate_samples, eval_transforms
from anydistill.errors import ConfigError, DataError

RNG = np.random.default_rng(0)
CLASSES = {"classes": [{"id": 0, "name": "floor"}, {"id": 1, "name": "wall"}, {"id": 2, "name": "ball"}]}


def _image(path: Path, h: int = 6, w: int = 8, fmt: str | None = None) -> np.ndarray:
    arr = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt or "PNG")
    return arr


def _mask(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _semantic_set(root: Path, rels: list[str], h: int = 6, w: int = 8) -> dict[str, np.ndarray]:
    """Writes images/<rel>.png and semantic/<rel>.png (ids 0..2) plus classes.json."""
    masks = {}
    for rel in rels:
        _image(root / "images" / f"{rel}.png", h, w)
        masks[rel] = RNG.integers(0, 3, size=(h, w), dtype=np.uint8)
        _mask(root / "semantic" / f"{rel}.png", masks[rel])
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return masks


# --------------------------------------------------------------------------- discovery/matching
def test_recursive_discovery_and_matching_by_relative_path(tmp_path: Path) -> None:
    images = {
        "b": _image(tmp_path / "images" / "b.jpg", fmt="JPEG"),
        "a/x": _image(tmp_path / "images" / "a" / "x.png"),
        "a/deep/y": _image(tmp_path / "images" / "a" / "deep" / "y.webp", fmt="WEBP"),
    }
    masks = {rel: RNG.integers(0, 3, size=(6, 8), dtype=np.uint8) for rel in images}
    for rel, m in masks.items():
        _mask(tmp_path / "semantic" / f"{rel}.png", m)
    _mask(tmp_path / "semantic" / "a" / "y.png", masks["b"])  # same stem, wrong folder: must not match
    (tmp_path / "images" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "images" / "._b.jpg").write_bytes(b"mac resource fork, not an image")
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))

    ds = FolderDataset(tmp_path, task="semantic")
    assert ds.ids == ["a/deep/y", "a/x", "b"]  # sorted, POSIX relative paths
    assert ds.classes is not None and ds.classes.names == ("floor", "wall", "ball")
    assert ds.orphan_labels == [tmp_path / "semantic" / "a" / "y.png"]
    for i, rel in enumerate(ds.ids):
        sample = ds[i]
        assert sample["id"] == rel
        np.testing.assert_array_equal(sample["semantic"], masks[rel])
        assert sample["semantic"].dtype == np.int64
        assert sample["image"].shape == (6, 8, 3) and sample["image"].dtype == np.uint8
    np.testing.assert_array_equal(ds[1]["image"], images["a/x"])  # lossless PNG


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no images found.*\.png.*\.jpg.*other files: \.txt") as info:
        FolderDataset(tmp_path, task="image")
    assert info.value.path == tmp_path / "images"


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        FolderDataset(tmp_path / "nowhere", task="depth")


def test_images_differing_only_by_extension(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "a.jpg", fmt="JPEG")
    with pytest.raises(DataError, match="differ only by extension"):
        FolderDataset(tmp_path, task="image")


def test_bad_arguments(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    with pytest.raises(ConfigError, match="task"):
        FolderDataset(tmp_path, task="normals")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="on_missing_label"):
        FolderDataset(tmp_path, task="image", on_missing_label="drop")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- missing label
def test_missing_label_error_names_image_and_expected_path(tmp_path: Path) -> None:
    _semantic_set(tmp_path, ["a", "b", "c"])
    (tmp_path / "semantic" / "b.png").unlink()
    with pytest.raises(DataError, match="no semantic label") as info:
        FolderDataset(tmp_path, task="semantic")
    assert info.value.path == tmp_path / "images" / "b.png"
    assert str(tmp_path / "semantic" / "b.png") in str(info.value)


def test_missing_label_folder_hint(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tmp_path, task="depth")


def test_missing_label_skip_counts_and_reports(tmp_path: Path) -> None:
    _semantic_set(tmp_path, ["a", "b", "c", "d"])
    (tmp_path / "semantic" / "b.png").unlink()
    (tmp_path / "semantic" / "d.png").unlink()
    ds = FolderDataset(tmp_path, task="semantic", on_missing_label="skip")
    assert ds.ids == ["a", "c"]
    assert [s.path for s in ds.skipped] == [tmp_path / "images" / "b.png", tmp_path / "images" / "d.png"]
    assert all("missing semantic label" in s.reason for s in ds.skipped)
    report = ds.report()
    assert "2 sample(s)" in report and "skipped 2" in report and "b.png" in report and "d.png" in report


# ------------------------------------------------------------------------------ size mismatch
def test_image_label_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _semantic_set(tmp_path, ["a"])
    _mask(tmp_path / "semantic" / "a.png", np.zeros((5, 8), np.uint8))
    ds = FolderDataset(tmp_path, task="semantic")
    with pytest.raises(DataError, match="size mismatch") as info:
        ds[0]
    message = str(info.value)
    assert str(tmp_path / "images" / "a.png") in message and str(tmp_path / "semantic" / "a.png") in message
    assert "6x8" in message and "5x8" in message


def test_size_mismatch_hints_at_exif_rotation(tmp_path: Path) -> None:
    img = Image.fromarray(RNG.integers(0, 256, size=(6, 8, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    img.save(tmp_path / "images" / "a.jpg", exif=exif.tobytes())
    _mask(tmp_path / "semantic" / "a.png", np.zeros((6, 8), np.uint8))  # saved in the stored frame
    ds = FolderDataset(tmp_path, task="semantic")
    with pytest.raises(DataError, match="EXIF orientation"):
        ds[0]


# ---------------------------------------------------------------------------------- class ids
def test_class_ids_outside_table(tmp_path: Path) -> None:
    masks = _semantic_set(tmp_path, ["a"])
    bad = masks["a"].copy()
    bad[0, 0], bad[1, 1], bad[2, 2] = 7, 9, 255
    _mask(tmp_path / "semantic" / "a.png", bad)
    with pytest.raises(DataError, match=r"class ids \[7, 9\] are not in the class table") as info:
        FolderDataset(tmp_path, task="semantic")[0]
    assert info.value.path == tmp_path / "semantic" / "a.png"
    out = FolderDataset(tmp_path, task="semantic", on_bad_class="ignore")[0]["semantic"]
    expected = bad.astype(np.int64)
    expected[0, 0] = expected[1, 1] = 255
    np.testing.assert_array_equal(out, expected)


def test_file_ignore_index_is_mapped_to_255(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", 2, 3)
    _mask(tmp_path / "semantic" / "a.png", np.array([[0, 1, 2], [2, 0, 1]], np.uint8))
    (tmp_path / "classes.json").write_text(
        json.dumps({"classes": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}], "ignore_index": 0})
    )
    out = FolderDataset(tmp_path, task="semantic")[0]["semantic"]
    np.testing.assert_array_equal(out, [[255, 1, 2], [2, 255, 1]])


def test_num_classes_without_class_table(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", 2, 2)
    _mask(tmp_path / "semantic" / "a.png", np.array([[0, 1], [4, 255]], np.uint8))
    assert FolderDataset(tmp_path, task="semantic")[0]["semantic"].max() == 255  # unchecked
    with pytest.raises(DataError, match=r"\[4\]"):
        FolderDataset(tmp_path, task="semantic", num_classes=4)[0]


# -------------------------------------------------------------------------------------- depth
def test_depth_invalid_values_masked_and_meta_scale(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", 2, 3)
    _image(tmp_path / "images" / "b.png", 2, 3)
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "a.npy", np.array([[1.0, np.nan, np.inf], [-1.0, 0.0, 2.5]], np.float32))
    Image.fromarray(np.array([[100, 0, 250], [1, 2, 3]], np.uint16)).save(tmp_path / "depth" / "b.png")
    (tmp_path / "meta.json").write_text(json.dumps({"depth_scale": 100.0}))
    ds = FolderDataset(tmp_path, task="depth")
    assert ds.depth_scale == 100.0
    np.testing.assert_array_equal(ds[0]["depth"], np.array([[1.0, 0, 0], [0, 0, 2.5]], np.float32))
    np.testing.assert_allclose(ds[1]["depth"], [[1.0, 0.0, 2.5], [0.01, 0.02, 0.03]], rtol=1e-6)
    override = FolderDataset(tmp_path, task="depth", depth_scale=1000.0)
    np.testing.assert_allclose(override[1]["depth"][0], [0.1, 0.0, 0.25], rtol=1e-6)

    tensor = eval_transforms(3, 1)(ds[0])  # no resize (long side is 3), one row of padding
    np.testing.assert_array_equal(tensor["depth_valid"][0].numpy(), [[1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_all_invalid_depth_is_allowed_and_reported(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", 2, 3)
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "a.npy", np.full((2, 3), np.nan, np.float32))
    ds = FolderDataset(tmp_path, task="depth")
    assert not ds[0]["depth"].any()
    assert "1 depth map(s) have no valid pixel: a" in ds.report()


def test_bad_meta_depth_scale(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    (tmp_path / "meta.json").write_text(json.dumps({"depth_scale": -5}))
    with pytest.raises(DataError, match="depth_scale must be a positive number"):
        FolderDataset(tmp_path, task="image")


# ------------------------------------------------------------------------------ corrupt images
def _with_corrupt(root: Path) -> None:
    _semantic_set(root, ["a", "b", "c"])
    (root / "images" / "b.png").write_bytes(b"")  # zero bytes


def test_corrupt_image_error_mode(tmp_path: Path) -> None:
    _with_corrupt(tmp_path)
    ds = FolderDataset(tmp_path, task="semantic")
    with pytest.raises(DataError, match="empty file"):
        ds[1]
    with pytest.raises(DataError, match=r"(?s)1 problem\(s\) found:.*b\.png: empty file"):
        ds.scan()


def test_corrupt_image_skip_mode_replaces_and_records(tmp_path: Path) -> None:
    _with_corrupt(tmp_path)
    ds = FolderDataset(tmp_path, task="semantic", on_bad_image="skip")
    assert len(ds) == 3
    assert ds[1]["id"] == "c"  # replaced by the next readable sample, not a crash
    assert [s.path.name for s in ds.skipped] == ["b.png"] and "empty file" in ds.skipped[0].reason
    assert ds[1]["id"] == "c" and len(ds.skipped) == 1  # known-bad: not re-read, not re-counted

    loader = DataLoader(ds, batch_size=3, collate_fn=collate_samples)
    assert [len(batch["id"]) for batch in loader] == [3]


def test_scan_excludes_bad_files_up_front(tmp_path: Path) -> None:
    _with_corrupt(tmp_path)
    ds = FolderDataset(tmp_path, task="semantic", on_bad_image="skip")
    newly = ds.scan()
    assert [s.path.name for s in newly] == ["b.png"]
    assert ds.ids == ["a", "c"] and len(ds.skipped) == 1
    assert "b.png" in ds.report()


# ------------------------------------------------------------------------ unlabeled, K, loader
def test_unlabeled_folder_without_images_subfolder(tmp_path: Path) -> None:
    _image(tmp_path / "x" / "1.png")
    _image(tmp_path / "2.bmp", fmt="BMP")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x" / "3.gif")
    ds = UnlabeledImageFolder(tmp_path)
    assert ds.ids == ["2", "x/1"]
    assert "ignored by extension: .gif (1)" in ds.report()  # not read, but never silently
    assert set(ds[0]) == {"image", "id"}


def test_cameras_json(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "s" / "b.png")
    k = [[50.0, 0, 4], [0, 50.0, 3], [0, 0, 1]]
    (tmp_path / "cameras.json").write_text(json.dumps({"a": k, "s/b": k}))
    ds = FolderDataset(tmp_path, task="image")
    assert ds[1]["K"].dtype == np.float32
    np.testing.assert_array_equal(ds[1]["K"], k)
    (tmp_path / "cameras.json").write_text(json.dumps({"a": k}))
    with pytest.raises(DataError, match="no intrinsics for 1 image"):
        FolderDataset(tmp_path, task="image")


def test_instance_task_and_transform(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", 4, 6)
    ids = np.arange(24, dtype=np.uint16).reshape(4, 6) * 1000
    _mask(tmp_path / "instances" / "a.png", ids)
    raw = FolderDataset(tmp_path, task="instance")[0]["instance"]
    assert raw.dtype == np.int32
    np.testing.assert_array_equal(raw, ids)
    sample = FolderDataset(tmp_path, task="instance", transform=eval_transforms(12, 4))[0]
    assert sample["instance"].dtype == torch.int64 and sample["instance"].shape == (12, 12)
    # 4x6 -> 8x12 is an exact 2x upsample (nearest: each id repeated 2x2), then 4 rows of padding.
    np.testing.assert_array_equal(sample["instance"][:8].numpy(), ids.repeat(2, 0).repeat(2, 1))
    assert (sample["instance"][8:] == 0).all()


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "em-membranes").is_dir(),
    reason="shared data (../shared/data/em-membranes) not present in this checkout",
)
def test_real_greyscale_folder_loads(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "em-membranes"
    ds = UnlabeledImageFolder(src, images_dir="image")
    image = ds[0]["image"]
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all()  # grey replicated
