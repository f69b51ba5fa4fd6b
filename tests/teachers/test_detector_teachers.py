"""Box teachers: an anydistill detector checkpoint and a Hugging Face DETR folder (tiny, random, local)."""

from __future__ import annotations

import json
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


# ------------------------------------------------------------------------------- open vocabulary (OWLv2)
def save_tiny_owlv2(folder: Path, seed: int = 0) -> Path:
    """A one-layer, width-16 OWLv2 (64² input, 16-pixel patches: 16 boxes per image) with a CLIP tokenizer
    over a made-up letters-only vocabulary (no merges), saved with its processor to ``folder``."""
    import string

    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase
    # the pad token first: OWL treats a query whose first id is 0 as padding
    tokens = ["!", "<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!"
    )
    config = transformers.Owlv2Config(
        text_config=dict(vocab_size=len(tokens), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.Owlv2ForObjectDetection(config).save_pretrained(folder)
    image_processor = transformers.Owlv2ImageProcessor(size={"height": 64, "width": 64})
    transformers.Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_owlv2_teacher_queries_the_class_names_and_scales_boxes_by_the_padded_square(tmp_path: Path) -> None:
    from anydistill.teachers.detectors import HFOpenVocabularyDetectorTeacher

    transformers = pytest.importorskip("transformers")
    folder = save_tiny_owlv2(tmp_path / "owl")
    teacher = load_teacher(folder, classes=["cat", "horse"], min_score=0.0)  # queries of unequal lengths
    assert isinstance(teacher, HFOpenVocabularyDetectorTeacher) and teacher.class_names == ["cat", "horse"]
    assert teacher.queries == ["a photo of a cat", "a photo of a horse"]
    images = torch.rand(2, 3, 48, 80)  # landscape: OWLv2 pads it to 80 x 80 before resizing
    got = teacher.detect(images)
    # upstream, on the image we pad to the square ourselves: its boxes are fractions of that square
    model = transformers.Owlv2ForObjectDetection.from_pretrained(folder).eval()
    processor = transformers.Owlv2Processor.from_pretrained(folder)
    square = torch.zeros(2, 3, 80, 80)  # the processor pads with 0 (after rescaling)
    square[:, :, :48, :80] = images
    with torch.no_grad():
        outputs = model(**processor(text=[teacher.queries] * 2, images=list(square), return_tensors="pt",
                                    do_rescale=False, padding="max_length", truncation=True, max_length=16))  # fmt: skip
    expected = processor.post_process_grounded_object_detection(
        outputs, threshold=0.0, target_sizes=[(80, 80)] * 2
    )
    for g, e in zip(got, expected, strict=True):
        order = e["scores"].argsort(descending=True)
        assert len(g["boxes"]) == len(order) == 16
        torch.testing.assert_close(g["scores"], e["scores"][order], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(g["labels"], e["labels"][order])
        limits = torch.tensor([80.0, 48.0, 80.0, 48.0])
        torch.testing.assert_close(
            g["boxes"], torch.minimum(e["boxes"][order].clamp_min(0), limits), atol=1e-3, rtol=0
        )
    # a mapping gives the query text itself; the fingerprint follows the queries
    named = load_teacher(folder, classes={"cat": "a small cat", "horse": "a horse"}, min_score=0.0)
    assert named.queries == ["a small cat", "a horse"] and named.fingerprint != teacher.fingerprint
    few = load_teacher(folder, classes=["cat"], min_score=0.0, max_detections=5)
    assert all(len(d["boxes"]) == 5 for d in few.detect(images))


def test_an_open_vocabulary_teacher_needs_classes_and_other_text_detectors_are_named(tmp_path: Path) -> None:
    folder = save_tiny_owlv2(tmp_path / "owl")
    with pytest.raises(DataError, match="needs the class names to look for"):
        load_teacher(folder)
    # the tiny vocabulary spells letter by letter: 16 positions hold "a photo of a cat" and no more
    with pytest.raises(
        DataError,
        match="class 'giraffe': its query 'a photo of a giraffe' is .* tokens; the text encoder takes 16",
    ):
        load_teacher(folder, classes=["cat", "giraffe"])
    config = json.loads((folder / "config.json").read_text())
    other = tmp_path / "gdino"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model_type": "grounding-dino",
                                                   "architectures": ["GroundingDinoForObjectDetection"]}))  # fmt: skip
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(DataError, match="grounding-dino: of the text-queried detectors, OWL-ViT and OWLv2"):
        load_teacher(other)


def test_pseudo_label_with_an_owlv2_folder_caches_the_asked_classes(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from anydistill.cache.dataset import PseudoLabelDataset
    from anydistill.cli import main

    folder = save_tiny_owlv2(tmp_path / "owl")
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"{i}.png"
        )
    assert main(["pseudo-label", "--teacher", str(folder), "--images", str(tmp_path / "img"), "--out",
                 str(tmp_path / "cache"), "--task", "detect", "--classes", "cat,dog,emu", "--min-score", "0.0",
                 "--num-workers", "0"]) == 0  # fmt: skip
    cache = PseudoLabelDataset(tmp_path / "cache")
    assert cache.manifest.classes == ["cat", "dog", "emu"] and len(cache) == 3
    sample = cache[0]
    assert sample["boxes"].shape == (16, 4) and set(sample["labels"].tolist()) <= {0, 1, 2}
    assert (sample["boxes"][:, 2] <= 56).all() and (sample["boxes"][:, 3] <= 40).all()
