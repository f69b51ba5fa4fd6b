"""Detection data: exact toyworld boxes, COCO boxes with their bad-input rules, box-aware transforms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.data.detection import (
    TOYWORLD_DETECTION_CLASSES,
    CocoDetection,
    DetectionDataset,
    DetectionRecord,
    ToyWorldDetection,
    boxes_from_id_map,
    collate_detection,
    detection_train_transform,
)
from anydistill.data.toyworld import ToyWorldDataset
from anydistill.errors import DataError


def _extent(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_boxes_from_id_map_matches_per_mask_extents() -> None:
    rng = np.random.default_rng(0)
    id_map = np.zeros((40, 50), np.int32)
    for i in (3, 7, 12):  # rectangles and scattered pixels, ids not contiguous
        y, x = rng.integers(0, 30, 2)
        id_map[y : y + rng.integers(1, 10), x : x + rng.integers(1, 15)] = i
    id_map[rng.integers(0, 40, 5), rng.integers(0, 50, 5)] = 12
    ids, boxes, areas = boxes_from_id_map(id_map)
    present = sorted(set(np.unique(id_map)) - {0})
    assert ids.tolist() == present
    for i, box, area in zip(ids, boxes, areas, strict=True):
        assert box.tolist() == _extent(id_map == i) and area == (id_map == i).sum()
    assert boxes_from_id_map(np.zeros((4, 4), np.int32))[1].shape == (0, 4)


def test_toyworld_boxes_are_the_instance_extents_and_labels_the_kinds() -> None:
    source = ToyWorldDetection("wide", 96, 6, seed=11, min_area=20)
    raw = ToyWorldDataset("wide", 96, 6, seed=11)
    assert source.classes == ("sphere", "box", "cylinder", "cone", "ellipsoid")
    seen = 0
    for k in range(6):
        record, sample = source[k], raw[k]
        masks = record.masks()
        for box, label, mask in zip(record.boxes, record.labels, masks, strict=True):
            assert box.tolist() == _extent(mask) and mask.sum() >= 20
            kinds = np.unique(sample["semantic"][mask])
            assert kinds.tolist() == [label + 4]  # the object's kind, every pixel
            assert (
                TOYWORLD_DETECTION_CLASSES[label] == ("sphere", "box", "cylinder", "cone", "ellipsoid")[label]
            )
            seen += 1
        # min_area: exactly the instances with fewer visible pixels are left out
        ids, counts = np.unique(sample["instance"][sample["instance"] > 0], return_counts=True)
        assert len(record.boxes) == int((counts >= 20).sum())
        np.testing.assert_array_equal(record.image, sample["image"])
    assert seen > 6
    again = ToyWorldDetection("wide", 96, 6, seed=11, min_area=20)[3]
    np.testing.assert_array_equal(again.boxes, source[3].boxes)


def _write_coco(
    tmp_path: Path, annotations: list[dict], images=None, categories=None, make_files=True
) -> Path:
    images = images or [
        {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
        {"id": 2, "file_name": "b.png", "height": 20, "width": 30},
    ]
    (tmp_path / "img").mkdir(exist_ok=True)
    if make_files:
        for entry in images:
            Image.fromarray(np.full((entry["height"], entry["width"], 3), 90, np.uint8)).save(
                tmp_path / "img" / entry["file_name"]
            )
    if categories is None:
        categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(i, image_id, bbox, cat=7, **extra) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def test_coco_boxes_labels_clipping_crowd_and_counted_skips(tmp_path: Path, capsys) -> None:
    anns = [
        _ann(1, 1, [2, 3, 10, 5]),  # plain: xywh -> xyxy
        _ann(2, 1, [25, -4, 10, 8], cat=3),  # partly outside: clipped to [25, 0, 30, 4]
        _ann(3, 1, [4, 4, 0, 6]),  # zero width: skipped
        _ann(4, 1, [40, 2, 5, 5]),  # wholly outside: skipped
        _ann(5, 2, [1, 1, 5, 5], iscrowd=1),  # crowd: kept and flagged
    ]
    source = CocoDetection(_write_coco(tmp_path, anns), tmp_path / "img")
    assert source.classes == ["cat", "dog"] and source.category_ids == [3, 7]  # sorted by id
    a = source[0]
    np.testing.assert_array_equal(a.boxes, [[2, 3, 12, 8], [25, 0, 30, 4]])
    assert a.labels.tolist() == [1, 0] and a.iscrowd.tolist() == [False, False]
    assert source[1].iscrowd.tolist() == [True]
    assert source.skipped == {
        "zero-area boxes": 1,
        "boxes outside their image": 1,
        "boxes clipped to their image (kept)": 1,
    }
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"anydistill: warning: {tmp_path / 'ann.json'}: skipped 1 zero-area boxes, 1 boxes outside their image"
    ]
    # images without boxes stay by default (they teach background) and go with skip_empty
    empty = _write_coco(tmp_path, [_ann(1, 1, [2, 3, 10, 5])])
    assert len(CocoDetection(empty, tmp_path / "img")) == 2
    assert len(CocoDetection(empty, tmp_path / "img", skip_empty=True)) == 1


@pytest.mark.parametrize(
    ("anns", "images", "categories", "message"),
    [
        ([_ann(1, 1, [0, 0, 2, 2], cat=5)], None, None, r"annotation 1 has category_id 5, which is not in categories \[3, 7\]"),
        ([_ann(1, 9, [0, 0, 2, 2])], None, None, "annotation 1 references image id 9, which is not in images"),
        ([_ann(1, 1, [0, 0, 2])], None, None, r"annotation 1: bbox must be \[x, y, width, height\]"),
        ([_ann(1, 1, [0, 0, "a", 2])], None, None, "bbox must be"),
        ([_ann(1, 1, [0, 0, float("nan"), 2])], None, None, "bbox must be"),
        ([], [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
              {"id": 1, "file_name": "b.png", "height": 20, "width": 30}], None,
         r"images\[1\]: duplicate image id 1 \(also a.png\)"),
        ([], None, [], 'expected a non-empty "categories" list'),
        ([], None, [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], r"categories\[1\]: duplicate category id 1"),
        ([], [{"id": 1, "file_name": "a.png"}], None, r'images\[0\] must have "id", "file_name", "height" and "width"'),
    ],
)  # fmt: skip
def test_coco_bad_input_is_one_line_naming_file_and_entry(
    tmp_path, anns, images, categories, message
) -> None:
    path = _write_coco(tmp_path, anns, images, categories, make_files=images is None)
    with pytest.raises(DataError, match=message) as info:
        CocoDetection(path, tmp_path / "img")
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_coco_missing_image_file_error_or_counted_skip(tmp_path: Path, capsys) -> None:
    path = _write_coco(tmp_path, [_ann(1, 1, [0, 0, 4, 4]), _ann(2, 2, [0, 0, 4, 4])])
    (tmp_path / "img" / "b.png").unlink()
    with pytest.raises(DataError, match=r"b.png: image file not found \(referenced by .*ann.json\)"):
        CocoDetection(path, tmp_path / "img")
    source = CocoDetection(path, tmp_path / "img", on_missing_image="skip")
    assert len(source) == 1 and source[0].id == "a.png"
    assert "skipped 1 images whose file does not exist" in capsys.readouterr().err


def test_coco_size_mismatch_and_masks(tmp_path: Path) -> None:
    polygon = [[2, 2, 12, 2, 12, 8, 2, 8]]
    path = _write_coco(tmp_path, [_ann(1, 1, [2, 2, 10, 6], segmentation=polygon)])
    source = CocoDetection(path, tmp_path / "img", with_masks=True)
    mask = source[0].masks()
    assert mask.shape == (1, 20, 30) and _extent(mask[0])[0] == 2 and mask[0].sum() > 40
    with pytest.raises(ValueError, match="no instance masks"):
        CocoDetection(path, tmp_path / "img")[0].masks()
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(DataError, match=r"a.png: size mismatch: image is 10x30 \(HxW\)"):
        source[0]
    with pytest.raises(DataError, match="annotation 1 has no segmentation"):
        CocoDetection(_write_coco(tmp_path, [_ann(1, 1, [2, 2, 10, 6])]), tmp_path / "img", with_masks=True)


def _record(h=40, w=80) -> DetectionRecord:
    masks = np.zeros((2, h, w), bool)
    masks[0, 4:20, 10:30] = True
    masks[1, 30:40, 70:80] = True
    return DetectionRecord(
        np.zeros((h, w, 3), np.uint8), "r", [_extent(m) for m in masks], [2, 0], [False, True],
        decode_masks=lambda which: masks[which],
    )  # fmt: skip


def test_dataset_resizes_longest_side_and_boxes_follow() -> None:
    ds = DetectionDataset([_record()], size=40, masks=True)
    item = ds[0]
    assert item["image"].shape == (3, 20, 40) and item["image"].dtype == torch.uint8
    torch.testing.assert_close(item["scale"], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(item["boxes"], torch.tensor([[5.0, 2, 15, 10], [35, 15, 40, 20]]))
    assert item["labels"].tolist() == [2, 0] and item["iscrowd"].tolist() == [False, True]
    for box, mask in zip(item["boxes"], item["masks"], strict=True):
        assert box.tolist() == _extent(mask.numpy())
    # the source-frame box is the frame's box divided by the scale
    torch.testing.assert_close(
        item["boxes"] / item["scale"].flip(0).repeat(2), torch.from_numpy(_record().boxes)
    )


def test_flip_moves_boxes_with_the_image_and_sanitize_drops_labels_too() -> None:
    ds = DetectionDataset(
        [_record()], size=80, augment=detection_train_transform(flip=1.0, color_jitter=0), masks=True
    )
    item = ds[0]
    torch.testing.assert_close(item["boxes"], torch.tensor([[50.0, 4, 70, 20], [0, 30, 10, 40]]))
    for box, mask in zip(item["boxes"], item["masks"], strict=True):
        assert box.tolist() == _extent(mask.numpy())

    def squash(image, target):  # an augmentation that makes the second box degenerate
        target["boxes"][1, 2] = target["boxes"][1, 0]
        return image, target

    item = DetectionDataset([_record()], size=80, augment=squash, masks=True)[0]
    assert len(item["boxes"]) == 1 and item["labels"].tolist() == [2] and item["iscrowd"].tolist() == [False]
    assert item["masks"].shape[0] == 1


def test_collate_pads_bottom_right_and_keeps_targets_per_image() -> None:
    small = DetectionRecord(np.full((10, 20, 3), 5, np.uint8), "s", [[1, 1, 4, 4]], [1])
    ds = DetectionDataset([_record(), small], size=40)
    batch = collate_detection([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 40, 40)
    assert batch["image_size"].tolist() == [[20, 40], [20, 40]]
    assert (batch["image"][1, :, 20:] == 0).all() and (batch["image"][1, :, :20] == 5).all()
    assert [len(t["boxes"]) for t in batch["targets"]] == [2, 1] and batch["id"] == ["r", "s"]
    with pytest.raises(ValueError, match="empty"):
        collate_detection([])
