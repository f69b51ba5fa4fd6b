"""task=classify: supervised training and knowledge distillation end to end (toyworld objects and a tiny
class folder), the cached teacher logits, resume, CutMix soft targets, one-line errors, evaluate/predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill import api
from anydistill.cache import open_cache
from anydistill.cli import main
from anydistill.config import load_config
from anydistill.data.classify import OBJECT_CLASSES
from anydistill.errors import ConfigError, DataError
from anydistill.loading import load_model
from anydistill.losses import kd_loss
from anydistill.methods import get_method
from anydistill.methods.classify import ClassifyModule
from anydistill.teachers import load_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("blue", "green", "red")
COMMON = ["model.name=test_efficientnet", "data.image_size=16", "data.batch_size=4", "data.num_workers=0",
          "trainer.progress_bar=false", "trainer.log_every_n_steps=1", "optim.warmup_steps=0"]  # fmt: skip


def _write_folder(root: Path, per_class: int, seed: int, classes=CLASSES) -> Path:
    """``root/<class>/<i>.png``: 16x16 noise images tinted by class (red, green or blue channel high)."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
            image[..., (2 - k) % 3] += 150  # blue -> channel 2, green -> 1, red -> 0
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classify")
    _write_folder(root / "train", 6, seed=0)
    _write_folder(root / "val", 2, seed=1)
    return root


@pytest.fixture(scope="module")
def teacher_run(folders) -> Path:
    """A tiny classifier trained on the folder: the teacher of the distillation tests."""
    overrides = [f"run_dir={folders / 'teacher'}", "data.source=folder", f"data.train_root={folders / 'train'}",
                 f"data.val_root={folders / 'val'}", "trainer.max_steps=3", *COMMON]  # fmt: skip
    assert main(["train", "--task", "classify", *overrides]) == 0
    return folders / "teacher" / "checkpoints" / "best.ckpt"


def test_train_on_toyworld_objects_then_evaluate_matches_an_independent_count(tmp_path):
    result = api.train(overrides=["task=classify", f"run_dir={tmp_path / 'run'}", "data.train_count=8",
                                  "data.val_count=6", "trainer.max_steps=2", *COMMON])  # fmt: skip
    assert set(result.metrics) >= {"val/top1", "val/loss"} and "val/top5" not in result.metrics  # 5 classes
    loaded = load_model(result.best_checkpoint)
    assert loaded.task == "classify"
    assert loaded.classes.names == list(OBJECT_CLASSES)
    # The run's validation set is evaluate's toyworld:wide held-out crops: the same numbers.
    metrics = api.evaluate(result.best_checkpoint, "toyworld:wide", count=6, progress=False)
    assert metrics["top1"] == pytest.approx(result.metrics["val/top1"], abs=1e-6)
    assert "top5" not in metrics  # 5 classes: top-5 would always be 1
    assert metrics["images"] == 6


def test_evaluate_top1_top5_equal_an_independent_computation(tmp_path):
    six = [f"c{k}" for k in range(6)]
    _write_folder(tmp_path / "train", 2, seed=2, classes=six)
    _write_folder(tmp_path / "test", 3, seed=3, classes=six)
    result = api.train(overrides=["task=classify", f"run_dir={tmp_path / 'run'}", "data.source=folder",
                                  f"data.train_root={tmp_path / 'train'}", "data.val_fraction=0.2",
                                  "trainer.max_steps=1", *COMMON])  # fmt: skip
    ckpt = result.best_checkpoint
    metrics = api.evaluate(ckpt, str(tmp_path / "test"), progress=False, out_json=tmp_path / "m.json")
    # independently: read the PNGs (16 px: no resize), normalise with the stored mean/std, rank the logits
    loaded = load_model(ckpt)
    mean = torch.tensor(loaded.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.preprocess.std).view(1, 3, 1, 1)
    hits1 = hits5 = n = 0
    for k, name in enumerate(six):
        for path in sorted((tmp_path / "test" / name).glob("*.png")):
            x = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                z = loaded.model((x - mean) / std)[0]
            order = torch.argsort(z, descending=True).tolist()
            hits1 += order[0] == k
            hits5 += k in order[:5]
            n += 1
    assert metrics["images"] == n == 18
    assert metrics["top1"] == pytest.approx(hits1 / n, abs=1e-9)
    assert metrics["top5"] == pytest.approx(hits5 / n, abs=1e-9)
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["top1"] == metrics["top1"]
    report = api.predict(ckpt, tmp_path / "test", tmp_path / "pred")
    rows = json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"]
    assert report.images == len(rows) == 18 and len(rows[0]["top"]) == 5
    assert (tmp_path / "pred" / "predictions.csv").read_text().count("\n") == 19


def test_distill_caches_the_teachers_logits_and_a_rerun_reuses_them(folders, teacher_run, capsys):
    run = folders / "student"
    args = ["distill", "--task", "classify", "--teacher", str(teacher_run), f"run_dir={run}", "data.source=folder",
            f"data.train_root={folders / 'train'}", f"data.val_root={folders / 'val'}", "trainer.max_steps=3",
            "model.name=test_resnet", "classify.cutmix_p=0.5", *COMMON[1:]]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    cache_dir = run / "teacher_cache" / "labeled"
    cache = open_cache(cache_dir)
    assert cache.manifest.task == "classify" and cache.manifest.count == 18
    # the cached logits are the teacher's forward on each image (stored as float16)
    teacher = load_teacher(teacher_run)
    for image_id in cache.ids[:6]:
        source = cache.record(image_id)["source"]
        x = torch.from_numpy(np.array(Image.open(folders / "train" / source))).permute(2, 0, 1)[None] / 255
        expected = teacher.predict(x.float())[0]  # (K,)
        got = torch.from_numpy(cache.read(image_id, ["logits"])["logits"].astype(np.float32))
        assert got.shape == (3,)
        torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)
    student = load_model(run / "checkpoints" / "best.ckpt")
    assert student.task == "classify" and student.record["arch"]["model_name"] == "test_resnet"
    # the student's training items carry their own image's logits
    cfg = load_config(
        overrides=[a for a in args[5:] if "=" in a] + ["task=classify", f"classify.teacher={teacher_run}"]
    )
    train_set = get_method("kd")(cfg).datamodule.train_set
    for i in range(0, len(train_set), 5):
        item = train_set[i]
        x = (
            torch.from_numpy(np.array(Image.open(folders / "train" / item["id"]))).permute(2, 0, 1)[None]
            / 255
        )
        torch.testing.assert_close(item["teacher"], teacher.predict(x.float())[0], rtol=2e-3, atol=2e-3)
    # a rerun of the finished run: the cache is checked, not rewritten, and training does not start over
    stamps = {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()}
    manifest = (cache_dir / "manifest.json").read_text()
    assert main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()} == stamps
    assert (cache_dir / "manifest.json").read_text() == manifest
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3


def test_distill_on_toyworld_objects_with_unlabeled_images(folders, tmp_path, capsys):
    # a toyworld teacher (5 classes), trained for one step
    common = ["data.train_count=6", "data.val_count=4", *COMMON]
    assert (
        main(["train", "--task", "classify", f"run_dir={tmp_path / 't'}", "trainer.max_steps=1", *common])
        == 0
    )
    teacher = tmp_path / "t" / "checkpoints" / "best.ckpt"
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for i in range(5):  # any images: the teacher labels them
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(unlabeled / f"u{i}.png")
    run = tmp_path / "s"
    code = main(["distill", "--task", "classify", "--teacher", str(teacher), "--images", str(unlabeled),
                 f"run_dir={run}", "trainer.max_steps=2", "distill.unlabeled_ratio=1", *common])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert len(list((run / "toyworld_objects" / "train").rglob("*.png"))) == 6
    assert open_cache(run / "teacher_cache" / "unlabeled").manifest.count == 5
    logged = (run / "logs" / "csv").rglob("metrics.csv")
    assert "train/unlabeled_kd" in next(logged).read_text().splitlines()[0]


def test_a_teacher_with_another_class_count_is_one_line_naming_it(folders, tmp_path, capsys):
    teacher = tmp_path / "t5.ckpt"
    result = api.train(overrides=["task=classify", f"run_dir={tmp_path / 't'}", "data.train_count=4",
                                  "data.val_count=2", "trainer.max_steps=1", *COMMON])  # fmt: skip
    teacher.write_bytes(result.best_checkpoint.read_bytes())
    code = main(["distill", "--task", "classify", "--teacher", str(teacher), f"run_dir={tmp_path / 's'}",
                 "data.source=folder", f"data.train_root={folders / 'train'}", f"data.val_root={folders / 'val'}",
                 *COMMON])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert str(teacher) in err and "predicts 5 classes" in err and "has 3" in err


def test_a_test_class_the_train_set_lacks_is_one_line(folders, tmp_path, capsys):
    val = _write_folder(tmp_path / "val", 1, seed=4, classes=(*CLASSES, "purple"))
    code = main(["train", "--task", "classify", f"run_dir={tmp_path / 'r'}", "data.source=folder",
                 f"data.train_root={folders / 'train'}", f"data.val_root={val}", *COMMON])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "purple" in err and "not in the given class table" in err


def test_config_checks_and_student_names():
    with pytest.raises(ConfigError, match="classify.alpha"):
        load_config(overrides=["classify.alpha=1.5"])
    with pytest.raises(ConfigError, match="classify.temperature"):
        load_config(overrides=["classify.temperature=0"])
    from anydistill.methods.classify import classify_model_name

    assert classify_model_name("depth_tiny") == "resnet18_cifar"  # the config's default: the classify default
    with pytest.raises(ConfigError, match="dense model"):
        classify_model_name("seg_tiny")
    with pytest.raises(ConfigError, match="not a timm model"):
        classify_model_name("no_such_net")
    with pytest.raises(ConfigError, match="classify.teacher"):
        api.distill(overrides=["task=classify"])


def _module(**kwargs) -> ClassifyModule:
    torch.manual_seed(0)
    return ClassifyModule("test_efficientnet", list(CLASSES), image_size=8, **kwargs)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self\.log\(\)`")
def test_the_training_loss_is_alpha_kd_plus_ce_and_its_gradient_reaches_the_student_only():
    module = _module(temperature=4.0, alpha=0.7).eval()  # eval: the same BatchNorm statistics twice
    teacher_logits = torch.randn(4, 3, requires_grad=True)  # a stand-in for cached (leaf) teacher outputs
    label = torch.tensor([0, 1, 2, 0])
    batch = {"image": torch.rand(4, 3, 8, 8), "label": label, "teacher": teacher_logits}
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        z = module(batch["image"])
        expected = 0.7 * kd_loss(z, teacher_logits, 4.0) + 0.3 * torch.nn.functional.cross_entropy(z, label)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert teacher_logits.grad is None  # targets are detached: nothing flows back into the teacher
    grads = [p.grad for p in module.model.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # with unlabeled images: + w_u · KD on them (one forward pass for both), gradient included
    module.unlabeled_weight = 0.5
    unlabeled = {"image": torch.rand(2, 3, 8, 8), "teacher": torch.randn(2, 3)}
    module.zero_grad()
    module.training_step({"labeled": batch, "unlabeled": unlabeled}, 0).backward()
    got = [p.grad.clone() for p in module.model.parameters()]
    module.zero_grad()
    z = module(torch.cat([batch["image"], unlabeled["image"]]))  # (6, K)
    label_part = 0.7 * kd_loss(z[:4], teacher_logits, 4.0) + 0.3 * torch.nn.functional.cross_entropy(
        z[:4], label
    )
    (label_part + 0.5 * kd_loss(z[4:], unlabeled["teacher"], 4.0)).backward()
    for g, p in zip(got, module.model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_cutmix_mixes_soft_targets_and_labels_by_the_pasted_area():
    module = _module(cutmix_p=1.0)
    b = 4
    image = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 8, 8) / b  # image i: value i/b
    logits = torch.randn(b, 3)
    torch.manual_seed(1)
    mixed, q, y = module._targets(
        {"image": image.clone(), "label": torch.tensor([0, 1, 2, 1]), "teacher": logits}
    )
    lam = (mixed[:, 0] == image.roll(1, 0)[:, 0]).float().mean(dim=(1, 2))[:, None]  # (B, 1) from the partner
    assert (lam > 0).all() and (lam < 1).all()
    p = torch.softmax(logits / module.loss.temperature, dim=1)
    torch.testing.assert_close(q, (1 - lam) * p + lam * p.roll(1, 0))
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()
    torch.testing.assert_close(y, (1 - lam) * onehot + lam * onehot.roll(1, 0))


def test_bad_teacher_specs_are_one_line(folders, tmp_path, capsys):
    weights = tmp_path / "headless.pth"
    import timm

    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), weights)
    code = main(["distill", "--task", "classify", "--teacher", f"timm:test_efficientnet@{weights}",
                 f"run_dir={tmp_path / 's'}", "data.source=folder", f"data.train_root={folders / 'train'}",
                 f"data.val_root={folders / 'val'}", *COMMON])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "holds no classifier" in err
    with pytest.raises(DataError, match="not a classifier"):
        load_teacher(weights, task="classify")  # a bare .pth reads as a SAM checkpoint


def test_a_vit_student_runs_at_the_data_size_not_its_default_224():
    from anydistill.models.classifier import TimmClassifier

    tiny = {"depth": 1, "embed_dim": 48, "num_heads": 2}
    model = TimmClassifier("vit_tiny_patch16_224", 3, backbone_kwargs=tiny)
    assert model.model(torch.randn(2, 3, 32, 32)).shape == (2, 3)  # failed: "doesn't match model (224)"
    fixed = TimmClassifier("vit_tiny_patch16_224", 3, backbone_kwargs={**tiny, "img_size": 64})
    assert fixed.model(torch.randn(1, 3, 64, 64)).shape == (1, 3)  # an explicit size is kept
    with pytest.raises(AssertionError):
        fixed.model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["images", "depth", "semantic", "instances"])
def test_a_class_named_like_a_folder_of_the_user_format_is_one_line(tmp_path, capsys, name):
    # The teacher pass reads the user folder format: "depth/" etc. would be skipped (the class silently
    # lost its logits), "images/" read as the whole image folder.
    train = _write_folder(tmp_path / "train", 1, seed=5, classes=("red", name))
    code = main(["distill", "--task", "classify", "--teacher", "timm:resnet8_cifar@random", f"run_dir={tmp_path / 's'}",
                 "data.source=folder", f"data.train_root={train}", f"data.val_root={train}", *COMMON])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"class folder named {name!r}" in err and str(train) in err


def test_teacher_image_size_reaches_the_teacher(folders, tmp_path, monkeypatch):
    import anydistill.methods.kd as kd

    with pytest.raises(ConfigError, match="classify.teacher_image_size"):
        load_config(overrides=["classify.teacher_image_size=0"])
    seen = []

    def spy(spec, **kwargs):
        seen.append(kwargs)
        raise ConfigError("stop here")

    monkeypatch.setattr(kd, "load_teacher", spy)
    for extra in ([], ["classify.teacher_image_size=224"]):
        cfg = load_config(overrides=["task=classify", "method=kd", "classify.teacher=timm:resnet8_cifar@random",
                                     f"run_dir={tmp_path}", "data.source=folder",
                                     f"data.train_root={folders / 'train'}", f"data.val_root={folders / 'val'}",
                                     *extra, *COMMON])  # fmt: skip
        with pytest.raises(ConfigError, match="stop here"):
            kd.build_kd(cfg)
    assert seen == [{"task": "classify"}, {"task": "classify", "image_size": 224}]
