"""Classifier teachers (``task == "classify"``): timm weights files, transformers folders and anydistill
checkpoints give the same logits as the models they wrap; the teacher pass caches exactly those logits."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from anydistill.cache import open_cache, run_teacher_pass
from anydistill.data.classes import ClassInfo
from anydistill.errors import ConfigError, DataError
from anydistill.loading import model_record
from anydistill.methods.kd import cached_logits, teacher_class_order
from anydistill.models import build_classifier
from anydistill.teachers import (
    AnydistillClassifierTeacher,
    HFClassifierTeacher,
    TimmClassifierTeacher,
    TimmEncoder,
    load_teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _timm_weights(tmp_path, num_classes=3, name="test_efficientnet"):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=num_classes).eval()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_timm_teacher_reads_the_class_count_from_the_weights_and_matches_timm(tmp_path):
    model, path = _timm_weights(tmp_path, num_classes=7)
    teacher = load_teacher(f"timm:test_efficientnet@{path}", task="classify")
    assert (
        isinstance(teacher, TimmClassifierTeacher) and teacher.num_classes == 7 and teacher.task == "classify"
    )
    x = torch.rand(2, 3, 24, 20)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((x - mean) / std)  # the input's own size: no resize
    torch.testing.assert_close(teacher.predict(x), expected)
    assert not any(p.requires_grad for p in teacher.parameters())
    # without task="classify" the same spec is still a frozen feature encoder, as before
    assert isinstance(load_teacher(f"timm:test_efficientnet@{path}"), TimmEncoder)
    # image_size: a fixed square working size
    sized = load_teacher(f"timm:test_efficientnet@{path}", task="classify", image_size=32)
    assert sized.preprocess(x).shape[-2:] == (32, 32)


def test_timm_teacher_refuses_weights_without_the_classifier(tmp_path):
    path = tmp_path / "headless.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), path)
    with pytest.raises(DataError, match="holds no classifier"):
        load_teacher(f"timm:test_efficientnet@{path}", task="classify")
    _, weights = _timm_weights(tmp_path, num_classes=3)
    with pytest.raises(DataError, match="3 classes, expected 4"):
        TimmClassifierTeacher("test_efficientnet", weights, num_classes=4)


def _save_vit(folder, processor=True):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
        patch_size=8, num_labels=3, id2label={0: "red", 1: "blue", 2: "green"},
        label2id={"red": 0, "blue": 1, "green": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    proc = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25]
    )
    if processor:
        proc.save_pretrained(folder)
    return model, proc


def test_transformers_teacher_matches_the_model_on_its_processors_input(tmp_path):
    model, proc = _save_vit(tmp_path / "vit")
    teacher = load_teacher(tmp_path / "vit")  # recognised from config.json's architectures
    assert isinstance(teacher, HFClassifierTeacher)
    assert teacher.num_classes == 3 and teacher.class_names == ["red", "blue", "green"]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    pixel_values = proc(images=images, return_tensors="pt")["pixel_values"]  # the upstream processor
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(teacher.predict(x), expected, rtol=1e-4, atol=1e-4)
    # another size is resized to the processor's 32 x 32
    assert teacher.predict(torch.rand(1, 3, 48, 40)).shape == (1, 3)


@pytest.mark.parametrize(
    ("processor", "words"),
    [
        ("DeiTImageProcessor", "centre crop"),  # resize 40, crop 32 (DeiT's 256 / 224): crashed at predict
        ("ConvNextImageProcessor", "crop_pct"),  # microsoft/resnet-50's processor: logits silently off
        ("MobileViTImageProcessor", "BGR"),
    ],
)
def test_transformers_processors_with_steps_we_do_not_reproduce_are_refused(tmp_path, processor, words):
    transformers = pytest.importorskip("transformers")
    _save_vit(tmp_path / "vit", processor=False)
    kwargs = {
        "DeiTImageProcessor": dict(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}),
        "ConvNextImageProcessor": dict(size={"shortest_edge": 32}, crop_pct=0.875),
        "MobileViTImageProcessor": dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    }[processor]
    getattr(transformers, processor)(**kwargs).save_pretrained(tmp_path / "vit")
    with pytest.raises(DataError, match=f"preprocessor_config.json: {processor} uses .*{words}"):
        load_teacher(tmp_path / "vit")


def test_transformers_resnet_classifier_without_processor(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "resnet")
    teacher = load_teacher(tmp_path / "resnet", task="classify")
    assert teacher.num_classes == 4 and teacher.class_names is None  # LABEL_0.. are not names
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(pixel_values=(x - mean) / std).logits
    torch.testing.assert_close(teacher.predict(x), expected, rtol=1e-4, atol=1e-4)


def _classify_ckpt(path, classes=("a", "b", "c"), size=16):
    torch.manual_seed(0)
    model = build_classifier("test_efficientnet", len(classes)).eval()
    arch = {"model_name": "test_efficientnet", "model_kwargs": {}, "num_classes": len(classes)}
    record = model_record("classify", model.preprocess_spec(size), arch, ClassInfo(list(classes)))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return model


def test_anydistill_classify_checkpoint_teacher(tmp_path):
    model = _classify_ckpt(tmp_path / "c.ckpt")
    teacher = load_teacher(tmp_path / "c.ckpt")
    assert isinstance(teacher, AnydistillClassifierTeacher) and teacher.class_names == ["a", "b", "c"]
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(model.normalize(x))
    torch.testing.assert_close(teacher.predict(x), expected)


def test_the_teacher_pass_caches_the_teachers_logits(tmp_path):
    _, path = _timm_weights(tmp_path, num_classes=5)
    teacher = load_teacher(f"timm:test_efficientnet@{path}", task="classify")
    rng = np.random.default_rng(1)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(7):  # two sizes: batches are grouped by size
        size = (16, 16) if i % 2 else (20, 12)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    manifest = run_teacher_pass(teacher, images, tmp_path / "cache", batch_size=3, shard_size=4,
                                num_workers=0, progress=False)  # fmt: skip
    assert manifest.task == "classify" and manifest.targets == ["logits"] and manifest.count == 7
    cache = open_cache(tmp_path / "cache")
    for image_id in cache.ids:
        x = torch.from_numpy(np.array(Image.open(images / f"{image_id}.png"))).permute(2, 0, 1)[None] / 255
        expected = teacher.predict(x.float())[0]
        got = torch.from_numpy(cache.read(image_id)["logits"].astype(np.float32))
        torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)  # float16 storage
    table, logits = cached_logits(tmp_path / "cache", order=[4, 3, 2, 1, 0])
    first = cache.record(cache.ids[0])["source"]
    full = torch.from_numpy(cache.read(cache.ids[0])["logits"].astype(np.float32))
    torch.testing.assert_close(logits[table[first]], full.flip(0))


class _Named:
    def __init__(self, n, names=None):
        self.num_classes, self.class_names = n, names


def test_teacher_class_order(capsys):
    classes = ["cat", "dog", "horse"]
    assert teacher_class_order(_Named(3), classes, "t") is None  # no names: index order
    assert teacher_class_order(_Named(3, classes), classes, "t") is None
    assert teacher_class_order(_Named(3, ["horse", "cat", "dog"]), classes, "t") == [1, 2, 0]
    assert capsys.readouterr().err == ""
    assert teacher_class_order(_Named(3, ["x", "y", "z"]), classes, "t") is None  # warned, index order
    assert capsys.readouterr().err.startswith("anydistill: warning: classify.teacher: t names its classes")
    with pytest.raises(ConfigError, match="my_teacher predicts 4 classes"):
        teacher_class_order(_Named(4), classes, "my_teacher")
