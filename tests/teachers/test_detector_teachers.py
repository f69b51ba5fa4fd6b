"""Box teachers: an anydistill detector checkpoint and a Hugging Face DETR folder (tiny, random, local)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_students import save_tiny_detector

from anydistill.errors import DataError
from anydistill.teachers import load_teacher
from anydistill.teachers.detectors import AnydistillDetectorTeacher, HFDetectorTeacher


def save_tiny_detr(folder: Path, seed: int = 0) -> Path:
    """A one-layer, width-16 DETR (ResNet backbone of transformers, no timm) with labels cat/dog/bird and
    its image processor (shortest edge 64), saved to ``folder``."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_config={"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 16, 16],
                         "depths": [1, 1, 1, 1], "out_features": ["stage4"]},
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=12,
        id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2},
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.DetrForObjectDetection(config).save_pretrained(folder)
    transformers.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


def test_hf_detr_teacher_is_the_upstream_model_and_post_processing(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = save_tiny_detr(tmp_path / "detr")
    teacher = load_teacher(folder, min_score=0.0)
    assert isinstance(teacher, HFDetectorTeacher) and teacher.task == "detect"
    assert teacher.class_names == ["cat", "dog", "bird"]
    images = torch.rand(2, 3, 48, 80)
    got = teacher.detect(images)
    model = transformers.DetrForObjectDetection.from_pretrained(folder).eval()
    processor = transformers.DetrImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        outputs = model(**processor(images=list(images), return_tensors="pt", do_rescale=False))
    expected = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(48, 80)] * 2)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g["scores"], e["scores"])
        torch.testing.assert_close(g["labels"], e["labels"])
        torch.testing.assert_close(
            g["boxes"], e["boxes"].clamp(min=0).minimum(torch.tensor([80.0, 48, 80, 48]))
        )
    assert all((d["boxes"][:, 2:] <= torch.tensor([80.0, 48])).all() for d in got)
    # the user's classes: a subset, renamed; other labels dropped
    renamed = load_teacher(folder, classes={"puppy": "dog"}, min_score=0.0)
    assert renamed.class_names == ["puppy"]
    full = got[0]
    kept = renamed.detect(images)[0]
    assert len(kept["labels"]) == int((full["labels"] == 1).sum()) and (kept["labels"] == 0).all()
    with pytest.raises(DataError, match="the teacher has no label 'horse'"):
        HFDetectorTeacher(folder, classes=["horse"])
    # identity: the same folder and settings give the same fingerprint, another threshold another one
    assert load_teacher(folder, min_score=0.0).fingerprint == teacher.fingerprint != renamed.fingerprint
    with pytest.raises(TypeError, match="box teacher: it has detect"):
        teacher.predict(images)


def test_anydistill_detector_teacher_scales_boxes_back_to_the_input(tmp_path: Path) -> None:
    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=96)
    teacher = load_teacher(ckpt, min_score=0.0)
    assert isinstance(teacher, AnydistillDetectorTeacher)
    assert (
        teacher.class_names == ["sphere", "box", "cylinder", "cone", "ellipsoid"] and teacher.image_size == 96
    )
    seen = {}

    def stub(x):  # the whole frame the detector saw, as one box
        seen["shape"] = tuple(x.shape)
        h, w = x.shape[-2:]
        return [
            {
                "boxes": torch.tensor([[0.0, 0, w, h]]),
                "scores": torch.ones(1),
                "labels": torch.zeros(1, dtype=torch.long),
            }
        ]

    teacher.model.forward = stub
    out = teacher.detect(torch.rand(1, 3, 100, 200))
    assert seen["shape"] == (1, 3, 48, 96)  # long side 96, aspect kept
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[0.0, 0, 200, 100]]))


def test_anydistill_detector_teacher_runs_the_real_detector(tmp_path: Path) -> None:
    teacher = AnydistillDetectorTeacher(
        save_tiny_detector(tmp_path / "det.ckpt", size=64), min_score=0.0, max_detections=7
    )
    out = teacher.detect(torch.rand(2, 3, 64, 64))
    assert [len(d["boxes"]) for d in out] == [7, 7] and all(d["labels"].max() < 5 for d in out)
    assert (
        teacher.fingerprint
        == AnydistillDetectorTeacher(tmp_path / "det.ckpt", min_score=0.0, max_detections=7).fingerprint
    )
    with pytest.raises(DataError, match="this teacher takes a detector"):
        from tiny_students import save_tiny_depth_student

        AnydistillDetectorTeacher(save_tiny_depth_student(tmp_path / "depth.ckpt"))
