"""task=detect: the method, its data module, COCO mAP in source pixels, and its config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill import api
from anydistill.checkpoints import read_checkpoint
from anydistill.config import load_config
from anydistill.data.datamodule import DetectionDataModule
from anydistill.errors import ConfigError, DataError
from anydistill.eval.detection import DetectionMetrics, to_source_frame
from anydistill.methods.detect import DetectionModule

TINY = ["task=detect", "data.train_count=8", "data.val_count=4", "data.image_size=96", "data.batch_size=4",
        "data.num_workers=0", "trainer.max_steps=3", "trainer.max_epochs=-1", "trainer.progress_bar=false",
        "data.train_domain=wide"]  # fmt: skip


def test_train_writes_a_checkpoint_that_describes_a_detector(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, f"run_dir={tmp_path / 'run'}"])
    result = api.train(cfg)
    assert {"val/map", "val/map_50", "val/map_small"} <= set(result.metrics)
    assert 0.0 <= result.metrics["val/map"] <= 1.0
    ckpt = read_checkpoint(result.best_checkpoint)
    record = ckpt["anydistill_model"]
    assert record["task"] == "detect" and record["arch"]["model_name"] == "det_tiny"
    assert record["arch"]["num_classes"] == 5 and record["classes"]["names"][0] == "sphere"
    assert record["preprocess"]["size"] == 96 and record["preprocess"]["resize"] == "long_side"
    # load_model rebuilds the same detector from the record alone
    from anydistill.loading import load_model

    loaded = load_model(result.best_checkpoint)
    assert (
        loaded.task == "detect" and loaded.model.input_size == 96 and loaded.classes.names[4] == "ellipsoid"
    )
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    # evaluate: COCO mAP with per-class AP, on toyworld and on a COCO JSON (images/ beside it)
    figures = api.evaluate(result.best_checkpoint, "toyworld:wide", count=4, progress=False,
                           out_json=tmp_path / "m.json")  # fmt: skip
    assert {"map", "map_50", "map_75", "map_small", "mar_100", "map/sphere"} <= set(figures) and figures[
        "images"
    ] == 4
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["map"] == figures["map"]
    coco = _coco_folder(tmp_path / "coco", ["sphere", "box", "cylinder", "cone", "ellipsoid"])
    assert api.evaluate(result.best_checkpoint, str(coco), progress=False)["images"] == 5
    with pytest.raises(DataError, match="must be toyworld:<domain> or a COCO JSON file"):
        api.evaluate(result.best_checkpoint, str(tmp_path), progress=False)


def test_the_config_loss_reaches_the_retinanet_head_and_is_refused_elsewhere() -> None:
    module = DetectionModule(
        "det_tiny",
        {},
        ["a", "b"],
        64,
        load_config(None, ["detect.classification_loss=ce_hard_negatives"]).detect,
    )
    loss = module.model.detector.head.classification_head.loss_fn
    assert loss.kind == "ce_hard_negatives" and loss.neg_pos_ratio == 3.0
    assert DetectionModule("det_tiny", {}, ["a"], 64).model.detector.head.classification_head.loss_fn is None
    with pytest.raises(ConfigError, match="is for retinanet students, not fcos"):
        DetectionModule(
            "det_tiny_fcos", {}, ["a"], 64, load_config(None, ["detect.classification_loss=ce"]).detect
        )
    with pytest.raises(
        ConfigError,
        match="'seg_tiny' with model.kwargs=.*not a detection model.*task=detect takes det_small, det_tiny",
    ):
        DetectionModule("seg_tiny", {}, ["a"], 64)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task=detect", "detect.classification_loss=softmax"],
            "detect.classification_loss: must be 'focal', 'ce' or",
        ),
        (
            ["task=detect", "data.source=coco", "data.train_root=x"],
            "'coco' with task=detect needs detect.coco_json",
        ),
        (["task=depth", "data.source=coco", "data.train_root=x"], "'coco' is for task=promptable"),
        (["task=detect", "detect.neg_pos_ratio=0"], "neg_pos_ratio > 0"),
    ],
)
def test_config_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_folder_source_is_refused_for_detection(tmp_path: Path) -> None:
    cfg = load_config(None, ["task=detect", "data.source=folder", f"data.train_root={tmp_path}"])
    with pytest.raises(ConfigError, match="task=detect reads toyworld or a COCO JSON"):
        DetectionDataModule(cfg.data)


def _coco_folder(root: Path, names: list[str]) -> Path:
    """Five 40×60 black images under ``root/images`` with one box each, and ``root/train.json``."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(5):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 40, "width": 60})
        anns.append({"id": i, "image_id": i, "category_id": 9, "bbox": [5, 5, 20, 10]})
    categories = [{"id": 9 + k, "name": n} for k, n in enumerate(names)]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def test_coco_datamodule_splits_and_names_classes(tmp_path: Path) -> None:
    path = _coco_folder(tmp_path, ["cell"])
    (tmp_path / "img").symlink_to(tmp_path / "images")
    cfg = load_config(None, ["task=detect", "data.source=coco", f"data.train_root={tmp_path / 'img'}",
                             f"detect.coco_json={path}", "data.image_size=30", "data.val_fraction=0.4"])  # fmt: skip
    dm = DetectionDataModule(cfg.data, coco_json=cfg.detect.coco_json)
    assert dm.classes == ["cell"] and (len(dm.train_set), len(dm.val_set)) == (3, 2)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 30, 30) and batch["targets"][0]["boxes"].tolist() == [
        [2.5, 2.5, 12.5, 7.5]
    ]


def test_map_is_computed_in_source_pixels_and_ignores_crowd() -> None:
    # frame at half scale: a 20×20 source box (area 400 < 32²: "small") is 10×10 in the frame
    batch = {"targets": [{"boxes": torch.tensor([[5.0, 5, 15, 15], [30, 30, 40, 40]]), "labels": torch.tensor([0, 0]),
                          "iscrowd": torch.tensor([False, True])}], "scale": torch.tensor([[0.5, 0.5]])}  # fmt: skip
    torch.testing.assert_close(to_source_frame(torch.tensor([[5.0, 5, 15, 15]]), torch.tensor([0.5, 0.25])),
                               torch.tensor([[20.0, 10, 60, 30]]))  # fmt: skip
    metrics = DetectionMetrics()
    hit = {"boxes": torch.tensor([[5.0, 5, 15, 15], [30, 30, 40, 40]]), "scores": torch.tensor([0.9, 0.8]),
           "labels": torch.tensor([0, 0])}  # fmt: skip
    metrics.update([hit], batch)
    figures = metrics.compute()
    assert figures["map"] == pytest.approx(1.0)  # the detection on the crowd box is not a false positive
    assert figures["map_small"] == pytest.approx(1.0) and figures["map_medium"] == -1.0
    metrics.reset()
    miss = {
        "boxes": torch.tensor([[20.0, 0, 30, 10]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([0]),
    }
    metrics.update([miss], batch)
    assert metrics.compute()["map"] == 0.0


def test_a_retinanet_student_fits_one_batch() -> None:
    """Twenty steps on one fixed toyworld batch: the summed loss falls (the parts are wired to learn)."""
    cfg = load_config(None, ["task=detect", "data.image_size=96", "data.batch_size=4", "data.num_workers=0",
                             "data.train_domain=wide", "data.train_count=4"])  # fmt: skip
    torch.manual_seed(0)
    dm = DetectionDataModule(cfg.data, color_jitter=0.0)
    dm.train_set.augment = None
    batch = next(iter(dm.train_dataloader()))
    module = DetectionModule("det_tiny", {}, dm.classes, 96)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()
    losses = []
    for _ in range(20):
        loss = sum(module.model(batch["image"], batch["targets"]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.4 * losses[0], losses


def _box_cache(tmp_path: Path) -> Path:
    """A detect cache over four toyworld images, made by the CLI with a tiny untrained detector."""
    from tiny_students import save_tiny_detector

    from anydistill.cli import main
    from anydistill.data.toyworld import write_toyworld

    write_toyworld(tmp_path / "unlabeled", count=4, size=96, domain="wide", seed=5, progress=False)
    ckpt = save_tiny_detector(tmp_path / "teacher.ckpt", size=96)
    assert main(["pseudo-label", "--teacher", str(ckpt), "--images", str(tmp_path / "unlabeled"), "--out",
                 str(tmp_path / "cache"), "--task", "detect", "--min-score", "0.0", "--num-workers", "0"]) == 0  # fmt: skip
    return tmp_path / "cache"


def test_pseudo_boxes_threshold_nms_and_class_names(tmp_path: Path) -> None:
    from torchvision.ops import box_iou

    from anydistill.cache import PseudoLabelDataset
    from anydistill.methods.detect import PseudoBoxes

    cache = PseudoLabelDataset(_box_cache(tmp_path))
    raw = cache[0]
    everything = PseudoBoxes(cache, ["sphere", "box", "cylinder", "cone", "ellipsoid"], score=0.0, nms=1.0)[0]
    assert len(everything.boxes) == int(((raw["boxes"][:, 2:] > raw["boxes"][:, :2]).all(1)).sum())
    cut = float(np.median(raw["scores"]))
    strict = PseudoBoxes(cache, ["sphere", "box", "cylinder", "cone", "ellipsoid"], score=cut, nms=0.3)[0]
    assert len(strict.boxes) <= int((raw["scores"] >= cut).sum())
    for label in set(strict.labels.tolist()):  # class-wise NMS: no two kept boxes of a class overlap > 0.3
        same = torch.from_numpy(strict.boxes[strict.labels == label])
        iou = box_iou(same, same).fill_diagonal_(0)
        assert iou.numel() == 0 or float(iou.max()) <= 0.3 + 1e-6
    # renamed by name: a student with classes in another order, one of them the teacher's
    mine = PseudoBoxes(cache, ["car", "cone"], score=0.0, nms=1.0)[0]
    teacher_cones = int(((raw["labels"] == 3) & (raw["boxes"][:, 2:] > raw["boxes"][:, :2]).all(1)).sum())
    assert (mine.labels == 1).all() and len(mine.labels) == teacher_cones
    with pytest.raises(DataError, match="share none with the student's"):
        PseudoBoxes(cache, ["car"])


def test_distill_task_detect_trains_on_the_teachers_boxes(tmp_path: Path) -> None:
    cache = _box_cache(tmp_path)
    cfg = load_config(
        None, [*TINY, f"run_dir={tmp_path / 'run'}", f"distill.cache={cache}", "detect.pseudo_score=0.0"]
    )
    result = api.distill(cfg)
    assert 0.0 <= result.metrics["val/map"] <= 1.0
    from anydistill.methods.detect import DetectionDistillDataModule

    dm = DetectionDistillDataModule(cfg)
    assert len(dm.train_set) == 8 + 4 and len(dm.pseudo_set) == 4  # labeled + pseudo-labeled
    only = DetectionDistillDataModule(
        load_config(None, [*TINY, f"distill.cache={cache}", "distill.use_labeled=false"])
    )
    assert len(only.train_set) == 4
    with pytest.raises(ConfigError, match="distill.cache: the box teacher's cache is required"):
        DetectionDistillDataModule(load_config(None, TINY))


def test_predict_writes_coco_json_in_source_pixels_and_overlays(tmp_path: Path, capsys) -> None:
    from tiny_students import save_tiny_detector

    from anydistill.cli import main
    from anydistill.data.detection import CocoDetection

    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    (tmp_path / "img" / "sub").mkdir(parents=True)
    Image.fromarray(np.full((50, 130, 3), 120, np.uint8)).save(tmp_path / "img" / "wide.png")
    Image.fromarray(np.full((90, 40, 3), 30, np.uint8)).save(tmp_path / "img" / "sub" / "tall.jpg")
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    report = api.predict(ckpt, tmp_path / "img", tmp_path / "out")
    assert report.images == 2 and [p.name for p, _ in report.skipped] == ["broken.png"]
    coco = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["sphere", "box", "cylinder", "cone", "ellipsoid"]
    sizes = {im["file_name"]: (im["height"], im["width"]) for im in coco["images"]}
    assert sizes == {"wide.png": (50, 130), "sub/tall.jpg": (90, 40)}
    by_id = {im["id"]: im for im in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        im = by_id[ann["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= im["width"] + 1e-3 and y + h <= im["height"] + 1e-3
        assert ann["score"] >= 0.3 and 1 <= ann["category_id"] <= 5
    assert len(coco["annotations"]) == report.detections
    assert (tmp_path / "out" / "overlays" / "sub" / "tall.png").is_file()
    # the file is valid COCO: our own reader takes it back (images beside it under img/)
    back = CocoDetection(tmp_path / "out" / "detections.json", tmp_path / "img", quiet=True)
    assert len(back) == 2
    from anydistill.eval.detection import predict_detections

    everything = predict_detections(
        ckpt, tmp_path / "img" / "wide.png", tmp_path / "all", min_score=0.0, overlays=False
    )
    # every detection with min_score 0: the detector's top 100, less those wholly in the frame's padding
    assert 50 < everything.detections <= 100 and len(everything.written) == 1
    kept = json.loads((tmp_path / "all" / "detections.json").read_text())["annotations"]
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in kept)
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(ckpt),
                "--images",
                str(tmp_path / "img"),
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    assert "detection(s) in 2 image(s)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- instance masks
def test_mask_map_is_scored_on_masks_in_source_pixels() -> None:
    from anydistill.eval.detection import masks_to_source_frame

    # frame 8×8 (padded), the image's valid part 4×8 ← a 8×16 source image (scale 0.5)
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 0:4, 0:4] = True  # the left half of the valid part
    batch = {"targets": [{"boxes": torch.tensor([[0.0, 0, 4, 4]]), "labels": torch.tensor([0]),
                          "iscrowd": torch.tensor([False]), "masks": gt}],
             "scale": torch.tensor([[0.5, 0.5]]), "image_size": torch.tensor([[4, 8]]),
             "original_size": torch.tensor([[8, 16]])}  # fmt: skip
    src = masks_to_source_frame(gt, (4, 8), (8, 16), None)
    assert src.shape == (1, 8, 16) and int(src.sum()) == 64 and bool(src[0, :, :8].all())
    right = gt.float()[:, None]  # (D, 1, S, S) probabilities, as Mask R-CNN gives
    wrong = torch.zeros(1, 1, 8, 8)
    wrong[0, 0, 0:4, 4:8] = 1.0  # the right half: same box claimed, other pixels
    box = {
        "boxes": torch.tensor([[0.0, 0, 4, 4]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([0]),
    }
    metrics = DetectionMetrics(masks=True)
    metrics.update([{**box, "masks": right}], batch)
    figures = metrics.compute()
    assert figures["map"] == pytest.approx(1.0) and figures["mask_map"] == pytest.approx(1.0)
    metrics.reset()
    metrics.update([{**box, "masks": wrong}], batch)
    figures = metrics.compute()
    assert (
        figures["map"] == pytest.approx(1.0) and figures["mask_map"] == 0.0
    )  # the box is right, the mask not
    with pytest.raises(ValueError, match="mask mAP needs masks"):
        metrics.update([box], batch)


def test_a_mask_rcnn_student_trains_on_toyworld_masks_and_reports_mask_map(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, f"run_dir={tmp_path / 'run'}", "model.name=det_tiny_maskrcnn",
                             "trainer.max_steps=2"])  # fmt: skip
    result = api.train(cfg)
    assert {"val/map", "val/mask_map", "val/mask_map_50"} <= set(result.metrics)
    figures = api.evaluate(result.best_checkpoint, "toyworld:wide", count=2, progress=False)
    # two steps from scratch may detect nothing (COCO eval then reports -1); the figures are there
    assert -1.0 <= figures["mask_map"] <= 1.0 and "mask_map_small" in figures
    plain = DetectionDataModule(cfg.data)
    assert "masks" not in plain.train_set[0]  # box students do not pay for masks
    # a box-only COCO file: a Mask R-CNN is scored on its boxes alone
    coco = _coco_folder(tmp_path / "coco", ["sphere", "box", "cylinder", "cone", "ellipsoid"])
    boxes_only = api.evaluate(result.best_checkpoint, str(coco), progress=False)
    assert "map" in boxes_only and "mask_map" not in boxes_only


def test_coco_masks_polygons_rle_and_a_crowd_region_without_one(tmp_path: Path) -> None:
    from anydistill.data.detection import CocoDetection

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 6],
             "segmentation": [[2, 2, 12, 2, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [15, 5, 5, 5], "iscrowd": 1}]  # fmt: skip
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
                                "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))  # fmt: skip
    source = CocoDetection(path, tmp_path / "images", with_masks=True, quiet=True)
    assert source.has_segmentation
    masks = source[0].masks()
    assert masks.shape == (2, 20, 30) and masks[0, 3:8, 3:12].all() and not masks[0, 12:].any()
    assert not masks[1].any()  # the crowd region has no mask: no pixels (its box marks what to ignore)
    del anns[0]["segmentation"]
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
                                "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))  # fmt: skip
    assert not CocoDetection(path, tmp_path / "images", quiet=True).has_segmentation
    with pytest.raises(DataError, match="has no segmentation, and instance masks were asked for"):
        CocoDetection(path, tmp_path / "images", with_masks=True, quiet=True)


def test_distill_a_mask_rcnn_student_needs_a_cache_with_masks(tmp_path: Path) -> None:
    from tiny_students import save_tiny_sam

    from anydistill.cli import main
    from anydistill.methods.detect import DetectionDistillDataModule

    boxes_only = _box_cache(tmp_path / "a")
    overrides = [*TINY, "model.name=det_tiny_maskrcnn", "detect.pseudo_score=0.0", "trainer.max_steps=2"]
    with pytest.raises(DataError, match="holds boxes but no masks.*--mask-teacher"):
        api.distill(
            load_config(None, [*overrides, f"distill.cache={boxes_only}", f"run_dir={tmp_path / 'r0'}"])
        )
    sam = save_tiny_sam(tmp_path / "sam.pth", size=64)
    assert main(["pseudo-label", "--teacher", str(tmp_path / "a" / "teacher.ckpt"), "--images",
                 str(tmp_path / "a" / "unlabeled"), "--out", str(tmp_path / "mcache"), "--task", "detect",
                 "--min-score", "0.0", "--num-workers", "0", "--mask-teacher", str(sam)]) == 0  # fmt: skip
    cfg = load_config(
        None, [*overrides, f"distill.cache={tmp_path / 'mcache'}", f"run_dir={tmp_path / 'r1'}"]
    )
    dm = DetectionDistillDataModule(cfg, masks=True)
    item = dm.pseudo_set[0]
    assert item["masks"].shape == (len(item["boxes"]), *item["image"].shape[-2:])
    result = api.distill(cfg)
    assert "val/mask_map" in result.metrics


def test_predict_with_a_mask_rcnn_writes_rle_masks_inside_their_boxes(tmp_path: Path) -> None:
    from tiny_students import save_tiny_detector

    from anydistill.data.detection import CocoDetection
    from anydistill.eval.detection import predict_detections
    from anydistill.promptable.mask_utils import decode_rle

    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64, name="det_tiny_maskrcnn")
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 130, 3), dtype=np.uint8)).save(tmp_path / "img" / "wide.png")
    report = predict_detections(ckpt, tmp_path / "img", tmp_path / "out", min_score=0.0)
    coco = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert report.detections == len(coco["annotations"]) > 0
    for ann in coco["annotations"]:
        mask = decode_rle(ann["segmentation"])
        assert mask.shape == (50, 130)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        tol = 2 * 130 / 64  # Mask R-CNN pastes each mask into its box grown by a pixel; ×2 back to the source
        if len(xs):
            assert (
                xs.min() >= x - tol
                and xs.max() <= x + w + tol
                and ys.min() >= y - tol
                and ys.max() <= y + h + tol
            )
    assert any(decode_rle(a["segmentation"]).any() for a in coco["annotations"])
    assert (
        len(
            CocoDetection(tmp_path / "out" / "detections.json", tmp_path / "img", with_masks=True, quiet=True)
        )
        == 1
    )
