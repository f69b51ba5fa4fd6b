"""The loading layer: what a model path is (checkpoints.detect_kind) and the model it gives (loading.load_model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anydistill.checkpoints import MODEL_RECORD_KEY, detect_kind
from anydistill.config import TrainConfig
from anydistill.errors import DataError
from anydistill.inference import load_student
from anydistill.loading import load_model
from anydistill.methods.supervised import SupervisedModule
from anydistill.preprocess import Preprocess


def _checkpoint(
    path: Path, module: SupervisedModule, record: bool = True, config: TrainConfig | None = None
) -> Path:
    """What the training run's checkpoint callbacks write (state dict, hyper-parameters, record, config)."""
    data = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    if record:
        data[MODEL_RECORD_KEY] = module.model_record()
    if config is not None:
        data["anydistill_config"] = config.to_dict()
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def semantic_module() -> SupervisedModule:
    torch.manual_seed(0)
    return SupervisedModule(
        task="semantic", model_name="seg_tiny", num_classes=3, class_names=["a", "b", "c"],
        class_colors=[[1, 2, 3], [4, 5, 6], [7, 8, 9]], ignore_index=7, eval_size=96,
    )  # fmt: skip


def test_kinds_are_told_in_one_place(tmp_path, semantic_module):
    random_init = detect_kind("timm:resnet18@random")
    assert (random_init.kind, random_init.name, random_init.path) == ("timm", "resnet18", None)
    spec = detect_kind(f"timm:vit_small_patch14_dinov2@{tmp_path / 'w.safetensors'}")
    assert (spec.kind, spec.name, spec.path) == (
        "timm",
        "vit_small_patch14_dinov2",
        tmp_path / "w.safetensors",
    )
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "depth_anything"}))
    assert (detect_kind(hf).kind, detect_kind(hf).task) == ("huggingface", "depth_anything")
    ckpt = _checkpoint(tmp_path / "s.ckpt", semantic_module)
    assert (detect_kind(ckpt).kind, detect_kind(ckpt).task) == ("anydistill", "semantic")
    pth = tmp_path / "sam_vit_b.pth"
    pth.write_bytes(b"not read until loaded")
    assert (detect_kind(pth).kind, detect_kind(pth).task) == ("sam", "promptable")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "absent", "no such file or folder"),
        (lambda p: (p / "empty_dir").mkdir() or p / "empty_dir", "without config.json"),
        (lambda p: (p / "w.bin").write_bytes(b"x") and p / "w.bin", "unknown model file type '.bin'"),
        (
            lambda p: (p / "bad").mkdir() or (p / "bad" / "config.json").write_text("{") and p / "bad",
            "not valid JSON",
        ),
    ],
)
def test_unknown_kinds_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(DataError, match=message) as err:
        detect_kind(make(tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no timm model name"):
        detect_kind("timm:")


def test_a_student_comes_back_with_its_preprocess_and_classes(tmp_path, semantic_module):
    loaded = load_model(_checkpoint(tmp_path / "s.ckpt", semantic_module))
    assert loaded.task == "semantic" and not loaded.model.training
    assert loaded.preprocess == semantic_module.model.preprocess_spec(96) and loaded.image_size == 96
    assert loaded.classes.names == ["a", "b", "c"] and loaded.classes.ignore_index == 7
    assert loaded.classes.colors[2] == [7, 8, 9]
    x = torch.rand(2, 3, 96, 96)
    semantic_module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(loaded.preprocess.normalize(x)), semantic_module(x))


def test_checkpoints_from_before_the_record_load_the_same(tmp_path, semantic_module):
    """Older checkpoints (hyper-parameters + config, no record) give the same model and pre-processing."""
    cfg = TrainConfig(task="semantic")
    cfg.data.image_size, cfg.data.eval_size = 64, 96
    new = load_model(_checkpoint(tmp_path / "new.ckpt", semantic_module, record=True))
    old = load_model(_checkpoint(tmp_path / "old.ckpt", semantic_module, record=False, config=cfg))
    assert old.preprocess == new.preprocess and old.classes == new.classes
    for (k, a), (_, b) in zip(old.model.state_dict().items(), new.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    no_config = load_model(_checkpoint(tmp_path / "bare.ckpt", semantic_module, record=False))
    assert no_config.image_size == 256  # the documented fallback when nothing says the size


def test_weights_that_do_not_match_their_record_are_refused(tmp_path, semantic_module):
    path = _checkpoint(tmp_path / "s.ckpt", semantic_module)
    ckpt = torch.load(path, weights_only=True)
    ckpt[MODEL_RECORD_KEY]["arch"]["num_classes"] = 5
    torch.save(ckpt, path)
    with pytest.raises(DataError, match="do not match the model its record describes"):
        load_model(path)


def test_dense_loader_refuses_a_promptable_model(tmp_path):
    from anydistill.models import build_model

    sam = build_model("sam_tiny", img_size=64)
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)
    loaded = load_model(path)
    # A bare state dict does not tell a CNN student's input size: SAM's 1024 (load_sam_checkpoint's rule).
    assert loaded.task == "promptable" and loaded.preprocess == Preprocess.sam(1024)
    with pytest.raises(DataError, match="'promptable' model; dense prediction takes a depth or semantic"):
        load_student(path)
