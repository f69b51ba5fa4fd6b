"""Detect, then segment: a box teacher's boxes prompt SAM; masks cached as COCO RLE, read back with the boxes.

Parity: the masks are segment_anything's own ``SamPredictor.predict(box=…, multimask_output=False)`` for
each box, on an image already at SAM's input size (so no resize rounding enters).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam_upstream import tiny_upstream_sam
from segment_anything import SamPredictor as UpstreamPredictor
from tiny_students import save_tiny_detector, save_tiny_sam

from anydistill.cache.masks import masks_to_rle_arrays, rle_arrays_to_masks
from anydistill.errors import DataError
from anydistill.promptable.batched import decode_prompts
from anydistill.teachers.detect_segment import BoxPromptedSamTeacher, load_box_teacher
from anydistill.teachers.detectors import DetectorTeacher
from anydistill.teachers.sam import SamTeacher

pytestmark = pytest.mark.usefixtures("one_thread")

BOXES = torch.tensor([[10.0, 8.0, 70.0, 60.0], [40.5, 30.0, 120.0, 90.0], [0.0, 0.0, 128.0, 96.0]])


class FixedBoxes(DetectorTeacher):
    """A box teacher that finds the same three boxes (× ``scale``) in every image (labels 0, 1, 0)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.class_names = ["a", "b"]
        from anydistill.preprocess import Preprocess

        self.preprocess = Preprocess(size=1)
        self._freeze({})

    def _detect(self, images01: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": BOXES * self.scale, "scores": torch.tensor([0.9, 0.8, 0.7]),
                 "labels": torch.tensor([0, 1, 0])} for _ in images01]  # fmt: skip


def test_masks_are_segment_anythings_box_prompted_masks(tmp_path: Path) -> None:
    sam = tiny_upstream_sam(0, img_size=128, width=32, decoder_heads=8)
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)  # segment-anything's checkpoint layout
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)  # long side = SAM's 128
    teacher = BoxPromptedSamTeacher(FixedBoxes(), path, prompts_per_call=2)  # two decoder calls for 3 boxes
    found = teacher.detect(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)[0]
    assert found["masks"].shape == (3, 96, 128) and found["masks"].dtype == torch.bool
    torch.testing.assert_close(found["boxes"], BOXES)  # boxes, scores and labels stay the box teacher's
    torch.testing.assert_close(found["labels"], torch.tensor([0, 1, 0]))
    predictor = UpstreamPredictor(sam.eval())
    predictor.set_image(image)
    for k, box in enumerate(BOXES.numpy()):
        expected, _, _ = predictor.predict(box=box, multimask_output=False)  # (1, H, W) bool
        agree = (found["masks"][k].numpy() == expected[0]).mean()
        assert agree > 0.999, (k, agree)  # float order may flip a pixel at a logit of ~0
        assert expected[0].any() and not expected[0].all()  # a real, non-trivial mask was compared
    assert teacher.fingerprint != BoxPromptedSamTeacher(FixedBoxes(), _other_sam(tmp_path)).fingerprint


def _other_sam(tmp_path: Path) -> Path:
    path = tmp_path / "sam_other.pth"
    torch.save(tiny_upstream_sam(1, img_size=128, width=32, decoder_heads=8).state_dict(), path)
    return path


def test_a_resized_image_prompts_sam_in_its_frame_and_gets_masks_at_its_own_size(
    tmp_path: Path, monkeypatch
) -> None:
    import anydistill.teachers.detect_segment as module

    seen = []

    def spy(model, embedding, image_pe, points, boxes, *rest):
        seen.append(boxes.clone())
        return decode_prompts(model, embedding, image_pe, points, boxes, *rest)

    monkeypatch.setattr(module, "decode_prompts", spy)
    sam = save_tiny_sam(tmp_path / "sam.pth", size=128)
    large = torch.rand(2, 3, 192, 256)  # SAM sees it at 96 x 128: the boxes are halved on the way in
    found = BoxPromptedSamTeacher(FixedBoxes(scale=2.0), sam).detect(large)
    assert [d["masks"].shape for d in found] == [(3, 192, 256)] * 2
    assert len(seen) == 2  # one decoder call per image (3 boxes < prompts_per_call)
    for boxes in seen:
        torch.testing.assert_close(boxes, BOXES)
    assert not torch.equal(found[0]["masks"][0], found[0]["masks"][2])  # the prompts reached the decoder


def test_load_box_teacher_wraps_a_detector_checkpoint_and_refuses_other_models(tmp_path: Path) -> None:
    det = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    sam = save_tiny_sam(tmp_path / "sam.pth", size=64)
    plain = load_box_teacher(det, min_score=0.0)
    assert not isinstance(plain, BoxPromptedSamTeacher)
    both = load_box_teacher(det, mask_teacher=sam, min_score=0.0)
    assert isinstance(both, BoxPromptedSamTeacher) and both.class_names == plain.class_names
    x = torch.rand(1, 3, 64, 80)
    boxes = plain.detect(x)[0]["boxes"]
    got = both.detect(x)[0]
    torch.testing.assert_close(got["boxes"], boxes)
    assert got["masks"].shape == (len(boxes), 64, 80)
    with pytest.raises(DataError, match="is not a box teacher"):
        load_box_teacher(sam)  # a SAM alone is a feature teacher
    assert isinstance(SamTeacher(sam), SamTeacher)
    with pytest.raises(DataError, match="not a promptable"):
        BoxPromptedSamTeacher(plain, det)


def test_rle_arrays_round_trip_and_refuse_a_damaged_entry() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((4, 23, 31)) > 0.6
    masks[1] = False  # an empty mask
    masks[2] = True  # a full one
    arrays = masks_to_rle_arrays(masks)
    assert arrays["mask_rle"].dtype == np.uint8 and arrays["mask_rle_lengths"].shape == (4,)
    np.testing.assert_array_equal(
        rle_arrays_to_masks(arrays["mask_rle"], arrays["mask_rle_lengths"], (23, 31)), masks
    )
    picked = rle_arrays_to_masks(arrays["mask_rle"], arrays["mask_rle_lengths"], (23, 31), np.array([3, 0]))
    np.testing.assert_array_equal(picked, masks[[3, 0]])
    assert rle_arrays_to_masks(
        arrays["mask_rle"], arrays["mask_rle_lengths"], (23, 31), np.array([], int)
    ).shape == (0, 23, 31)
    empty = masks_to_rle_arrays(np.zeros((0, 5, 5), bool))
    assert empty["mask_rle"].shape == (0,) and rle_arrays_to_masks(**_args(empty), size=(5, 5)).shape == (
        0,
        5,
        5,
    )
    with pytest.raises(ValueError, match="lengths add up to"):
        rle_arrays_to_masks(arrays["mask_rle"][:-1], arrays["mask_rle_lengths"], (23, 31))


def _args(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"rle": arrays["mask_rle"], "lengths": arrays["mask_rle_lengths"]}


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64 if i % 2 else 80, 96, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    return folder


def test_pseudo_label_mask_teacher_caches_rle_masks_that_pseudo_boxes_keep_with_their_boxes(
    tmp_path: Path,
) -> None:
    from anydistill.cache.dataset import PseudoLabelDataset
    from anydistill.cli import main
    from anydistill.methods.detect import PseudoBoxes

    det = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    sam = save_tiny_sam(tmp_path / "sam.pth", size=64)
    images = _images(tmp_path / "img")
    args = ["pseudo-label", "--teacher", str(det), "--images", str(images), "--out", str(tmp_path / "cache"),
            "--task", "detect", "--min-score", "0.0", "--num-workers", "0", "--batch-size", "2",
            "--mask-teacher", str(sam)]  # fmt: skip
    assert main(args) == 0
    cache = PseudoLabelDataset(tmp_path / "cache")
    assert cache.manifest.targets == ["boxes", "scores", "labels", "mask_rle", "mask_rle_lengths"]
    assert cache.manifest.teacher_spec == f"{det} + masks: {sam}"  # both teachers on record
    teacher = load_box_teacher(det, mask_teacher=sam, min_score=0.0)
    names = ["sphere", "box", "cylinder", "cone", "ellipsoid"]
    for k in range(len(cache)):
        sample = cache[k]
        image = torch.from_numpy(sample["image"]).permute(2, 0, 1)[None].float() / 255
        expected = teacher.detect(image)[0]
        masks = rle_arrays_to_masks(sample["mask_rle"], sample["mask_rle_lengths"], sample["image"].shape[:2])
        assert masks.shape == tuple(expected["masks"].shape)
        # the same masks (the pass batched two images, channels-last: a pixel at a logit of ~0 may flip)
        assert (masks == expected["masks"].numpy()).mean() > 0.9999
        # thresholded and NMS'd: each kept box keeps its own mask
        record = PseudoBoxes(cache, names, score=float(np.median(sample["scores"])), nms=0.5)[k]
        kept = record.masks()
        assert kept.shape == (len(record.boxes), *sample["image"].shape[:2])
        for box, mask in zip(record.boxes, kept, strict=True):
            row = int(np.flatnonzero(np.isclose(sample["boxes"], box).all(1))[0])
            np.testing.assert_array_equal(mask, masks[row])


def test_mask_teacher_needs_a_box_teacher_task_and_a_sam_file(tmp_path: Path, capsys) -> None:
    from anydistill.cli import main

    det = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    images = _images(tmp_path / "img", 1)
    base = ["pseudo-label", "--teacher", str(det), "--images", str(images), "--out", str(tmp_path / "c")]
    assert main([*base, "--task", "detect", "--mask-teacher", str(det)]) != 0
    assert "is not a SAM model" in capsys.readouterr().err
    assert main([*base, "--task", "detect", "--mask-teacher", str(tmp_path / "missing.pth")]) != 0
    err = capsys.readouterr().err
    assert "missing.pth" in err and "no such file" in err and "Traceback" not in err
    assert main([*base, "--mask-teacher", str(det)]) != 0
    assert "are for box teachers" in capsys.readouterr().err
