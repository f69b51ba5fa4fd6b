"""Instance datasets for promptable segmentation: toyworld, folder and COCO sources, resizing, collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.data.instances import (
    CocoInstances,
    FolderInstances,
    InstanceDataset,
    InstanceRecord,
    ToyWorldInstances,
    collate_instances,
    preprocess_shape,
    resize_longest_side,
)
from anydistill.data.toyworld import render_sample
from anydistill.errors import DataError


def test_preprocess_shape_matches_sam_rule() -> None:
    # segment_anything.utils.transforms.ResizeLongestSide.get_preprocess_shape
    assert preprocess_shape(480, 640, 1024) == (768, 1024)
    assert preprocess_shape(640, 480, 1024) == (1024, 768)
    assert preprocess_shape(333, 500, 1024) == (682, 1024)
    assert preprocess_shape(100, 100, 64) == (64, 64)


def test_preprocess_shape_parity_with_segment_anything() -> None:
    transforms = pytest.importorskip("segment_anything.utils.transforms")
    for h, w in [(480, 640), (333, 500), (1, 7), (999, 1000), (37, 20)]:
        assert preprocess_shape(h, w, 1024) == transforms.ResizeLongestSide.get_preprocess_shape(h, w, 1024)
    # where upstream gives a 0-pixel side (and its resize fails), we keep 1 pixel
    assert transforms.ResizeLongestSide.get_preprocess_shape(1, 2100, 1024)[0] == 0
    assert preprocess_shape(1, 2100, 1024) == (1, 1024)


def test_resize_longest_side_pads_bottom_right() -> None:
    image = np.full((20, 40, 3), 200, dtype=np.uint8)
    masks = np.zeros((2, 20, 40), dtype=bool)
    masks[0, :10, :20] = True  # top-left quarter
    masks[1, 10:, 20:] = True  # bottom-right quarter
    img, msk, (h, w) = resize_longest_side(image, masks, 64)
    assert (h, w) == (32, 64) and img.shape == (3, 64, 64) and msk.shape == (2, 64, 64)
    assert img.dtype == torch.uint8 and msk.dtype == torch.bool
    assert (img[:, :32] == 200).all() and (img[:, 32:] == 0).all()
    assert msk[0, :16, :32].all() and msk[0].sum() == 16 * 32
    assert msk[1, 16:32, 32:].all() and msk[1].sum() == 16 * 32 and not msk[:, 32:].any()


def test_toyworld_source_masks_match_instance_map() -> None:
    ds = InstanceDataset(ToyWorldInstances("narrow", 64, 4, seed=0), size=64, max_instances=8, min_area=1)
    for i in range(len(ds)):
        item = ds[i]
        sample = render_sample(i, 0, "narrow", 64)
        ids = item["instance_ids"].tolist()
        assert item["image"].shape == (3, 64, 64) and item["input_size"].tolist() == [64, 64]
        assert torch.equal(item["image"], torch.from_numpy(sample["image"]).permute(2, 0, 1))
        assert set(ids) <= set(np.unique(sample["instance"]).tolist()) - {0}
        for k, inst in enumerate(ids):
            assert np.array_equal(item["masks"][k].numpy(), sample["instance"] == inst)


def _record(areas: list[int], size: int = 32) -> InstanceRecord:
    """An image whose instance k covers the first ``areas[k]`` pixels of row block k."""
    id_map = np.zeros((size, size), dtype=np.int32)
    flat = id_map.reshape(-1)
    start = 0
    for k, area in enumerate(areas):
        flat[start : start + area] = k + 1
        start += area
    return InstanceRecord.from_id_map(np.zeros((size, size, 3), dtype=np.uint8), id_map, "r")


def test_min_area_and_max_instances_and_sampling() -> None:
    records = [_record([5, 50, 60, 70, 80, 90])]
    ds = InstanceDataset(records, size=32, max_instances=3, min_area=50, sampling="random")
    seen = set()
    for _ in range(30):
        item = ds[0]
        ids = item["instance_ids"].tolist()
        assert len(ids) == 3 and 1 not in ids and len(set(ids)) == 3  # id 1 is below min_area
        assert item["masks"].flatten(1).sum(1).ge(50).all()
        seen |= set(ids)
    assert seen == {2, 3, 4, 5, 6}  # random subsets cover every eligible instance
    fixed = InstanceDataset(records, size=32, max_instances=3, min_area=50, sampling="fixed", seed=7)
    assert fixed[0]["instance_ids"].tolist() == fixed[0]["instance_ids"].tolist()
    few = InstanceDataset([_record([3, 4])], size=32, min_area=10)
    assert few[0]["masks"].shape == (0, 32, 32)


def test_collate_pads_instances_with_valid_flags() -> None:
    ds = InstanceDataset(
        [_record([40, 50, 60]), _record([40]), _record([1])], size=32, min_area=10, sampling="fixed"
    )
    batch = collate_instances([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 32, 32) and batch["masks"].shape == (3, 3, 32, 32)
    assert batch["valid"].tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert (batch["instance_ids"][1, 1:] == -1).all() and not batch["masks"][1, 1:].any()
    assert batch["input_size"].tolist() == [[32, 32]] * 3 and batch["id"] == ["r"] * 3


def _write_folder(root: Path, shapes: dict[str, tuple[int, int]], ids: dict[str, np.ndarray]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    for name, (h, w) in shapes.items():
        Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(root / "images" / f"{name}.png")
    for name, id_map in ids.items():
        Image.fromarray(id_map.astype(np.uint16)).save(root / "instances" / f"{name}.png")  # 16-bit PNG


def test_folder_source_with_16_bit_ids_and_resize(tmp_path: Path) -> None:
    id_map = np.zeros((30, 60), dtype=np.uint16)
    id_map[:, :30] = 300
    id_map[10:20, 40:50] = 40000
    _write_folder(tmp_path, {"a": (30, 60)}, {"a": id_map})
    ds = InstanceDataset(FolderInstances(tmp_path), size=64, min_area=10, sampling="fixed")
    item = ds[0]
    assert item["input_size"].tolist() == [32, 64] and item["original_size"].tolist() == [30, 60]
    order = item["instance_ids"].argsort()
    assert item["instance_ids"][order].tolist() == [300, 40000]
    left, square = item["masks"][order]
    assert left[:32, :32].all() and left.sum() == 32 * 32
    assert square.sum() == pytest.approx(10 * 10 * (64 / 60) ** 2, rel=0.25) and not square[32:].any()


def test_folder_source_errors_name_the_file(tmp_path: Path) -> None:
    _write_folder(tmp_path / "missing", {"a": (8, 8), "b": (8, 8)}, {"a": np.ones((8, 8))})
    with pytest.raises(DataError, match=r"b\.png"):
        FolderInstances(tmp_path / "missing")
    _write_folder(tmp_path / "size", {"a": (8, 8)}, {"a": np.ones((8, 9))})
    source = FolderInstances(tmp_path / "size")
    with pytest.raises(DataError, match="size mismatch") as err:
        source[0]
    assert "instances" in str(err.value)


def _coco(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "img" / "x.png")
    images = images if images is not None else [{"id": 7, "file_name": "x.png", "height": 20, "width": 30}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return path


def test_coco_source_polygons_rle_and_crowd(tmp_path: Path) -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    rect = np.zeros((20, 30), dtype=np.uint8, order="F")
    rect[5:15, 2:12] = 1
    compressed = mask_utils.encode(np.asfortranarray(rect))
    compressed["counts"] = compressed["counts"].decode()
    other = np.zeros((20, 30), dtype=np.uint8)
    other[0:4, 20:30] = 1
    # Uncompressed RLE: column-major run lengths starting with zeros.
    flat = other.flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    anns = [
        {"id": 1, "image_id": 7, "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]], "iscrowd": 0},
        {"id": 2, "image_id": 7, "segmentation": compressed, "iscrowd": 0},
        {"id": 3, "image_id": 7, "segmentation": {"counts": runs, "size": [20, 30]}, "iscrowd": 0},
        {"id": 4, "image_id": 7, "segmentation": {"counts": runs, "size": [20, 30]}, "iscrowd": 1},
    ]
    source = CocoInstances(_coco(tmp_path, anns), tmp_path / "img")
    record = source[0]
    assert sorted(record.instance_ids.tolist()) == [1, 2, 3]  # the crowd annotation is ignored
    masks = {i: m for i, m in zip(record.instance_ids.tolist(), record.masks(np.arange(3)), strict=True)}
    assert np.array_equal(masks[2], rect.astype(bool))
    assert np.array_equal(masks[3], other.astype(bool))
    poly = masks[1]
    assert poly[3:10, 3:10].all() and not poly[12:].any() and not poly[:, 12:].any()
    ds = InstanceDataset(source, size=30, min_area=1, sampling="fixed")
    item = ds[0]
    assert item["masks"].shape[0] == 3 and item["input_size"].tolist() == [20, 30]


def test_coco_source_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        CocoInstances(bad, tmp_path)
    with pytest.raises(DataError, match="not found"):
        CocoInstances(tmp_path / "absent.json", tmp_path)
    ann = {"id": 9, "image_id": 99, "segmentation": [[0, 0, 5, 0, 5, 5]], "iscrowd": 0}
    with pytest.raises(DataError, match="annotation 9 references image id 99") as err:
        CocoInstances(_coco(tmp_path, [ann]), tmp_path / "img")
    assert "ann.json" in str(err.value)
    ann["image_id"] = 8
    images = [{"id": 8, "file_name": "gone.png", "height": 20, "width": 30}]
    with pytest.raises(DataError, match="gone.png"):
        CocoInstances(_coco(tmp_path, [ann], images), tmp_path / "img")
    images = [{"id": 8, "file_name": "x.png", "height": 21, "width": 30}]
    source = CocoInstances(_coco(tmp_path, [ann], images), tmp_path / "img")
    with pytest.raises(DataError, match="size mismatch"):
        source[0]


def test_coco_source_through_the_config_and_datamodule(tmp_path: Path) -> None:
    """``data.source=coco`` + ``prompt.coco_json``: the training datamodule reads the COCO instances."""
    from anydistill.config import load_config
    from anydistill.methods.promptable import instance_datamodule

    for i in range(4):
        Image.fromarray(np.full((20, 30, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    images = [{"id": i, "file_name": f"im{i}.png", "height": 20, "width": 30} for i in range(4)]
    anns = [{"id": 10 + i, "image_id": i, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "iscrowd": 0}
            for i in range(4)]  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    cfg = load_config(None, ["task=promptable", "data.source=coco", f"data.train_root={tmp_path}",
                             f"prompt.coco_json={tmp_path / 'ann.json'}", "data.image_size=32",
                             "prompt.min_area=4", "data.val_fraction=0.25", "data.batch_size=2",
                             "data.num_workers=0"])  # fmt: skip
    dm = instance_datamodule(cfg)
    assert (len(dm.train_set), len(dm.val_set)) == (3, 1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["masks"].shape[:2] == (2, 1)
    assert batch["valid"].all() and batch["masks"].flatten(1).sum(1).gt(20).all()


def test_coco_source_needs_its_json(tmp_path: Path) -> None:
    from anydistill.config import load_config
    from anydistill.errors import ConfigError

    with pytest.raises(ConfigError, match="coco_json"):
        load_config(None, ["task=promptable", "data.source=coco", f"data.train_root={tmp_path}"])
