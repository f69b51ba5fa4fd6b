"""The teacher pass with a box teacher: variable-length float32 boxes, scores and int64 labels per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_students import save_tiny_depth_student, save_tiny_detector

from anydistill.cache.dataset import PseudoLabelDataset
from anydistill.cli import main
from anydistill.teachers import load_teacher


def _images(folder: Path, n: int = 5) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        size = (64, 96) if i % 2 else (80, 64)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_pseudo_label_task_detect_caches_what_the_teacher_detects(tmp_path: Path, capsys) -> None:
    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    images = _images(tmp_path / "img")
    args = ["pseudo-label", "--teacher", str(ckpt), "--images", str(images), "--out", str(tmp_path / "cache"),
            "--task", "detect", "--min-score", "0.0", "--num-workers", "0", "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["targets"] == ["boxes", "scores", "labels"] and manifest["dtype"] == "float32"
    assert (
        manifest["classes"] == ["sphere", "box", "cylinder", "cone", "ellipsoid"] and manifest["count"] == 5
    )
    dataset = PseudoLabelDataset(tmp_path / "cache")
    teacher = load_teacher(ckpt, min_score=0.0)
    for k in range(len(dataset)):
        sample = dataset[k]
        assert sample["boxes"].dtype == np.float32 and sample["labels"].dtype == np.int64
        image = torch.from_numpy(sample["image"]).permute(2, 0, 1)[None].float() / 255
        expected = teacher.detect(image)[0]  # the same teacher on the same image, now
        np.testing.assert_allclose(sample["boxes"], expected["boxes"].numpy(), atol=1e-3)
        np.testing.assert_array_equal(sample["labels"], expected["labels"].numpy())
        assert sample["boxes"].shape == (len(sample["scores"]), 4)
    capsys.readouterr()
    assert main(args) == 0  # a rerun finds the cache finished
    assert "cached 5 of 5" in capsys.readouterr().out


def test_pseudo_label_task_detect_refuses_other_teachers(tmp_path: Path, capsys) -> None:
    depth = save_tiny_depth_student(tmp_path / "depth.ckpt")
    images = _images(tmp_path / "img", 1)
    code = main(["pseudo-label", "--teacher", str(depth), "--images", str(images), "--out", str(tmp_path / "c"),
                 "--task", "detect"])  # fmt: skip
    assert code != 0
    assert "is not a box teacher" in capsys.readouterr().err
    code = main(["pseudo-label", "--teacher", str(depth), "--images", str(images), "--out", str(tmp_path / "c"),
                 "--classes", "a"])  # fmt: skip
    assert code != 0 and "are for box teachers" in capsys.readouterr().err


def test_a_box_teacher_has_no_features_to_cache(tmp_path: Path) -> None:
    from anydistill.cache.teacher_pass import run_teacher_pass
    from anydistill.errors import ConfigError

    teacher = load_teacher(save_tiny_detector(tmp_path / "det.ckpt", size=64))
    with pytest.raises(ConfigError, match="a box teacher .* has no feature maps"):
        run_teacher_pass(teacher, _images(tmp_path / "img", 1), tmp_path / "c", features=True, progress=False)
