"""``anydistill evaluate --protocol knn|linear``: a pre-trained backbone's frozen features on class folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.cli import main
from anydistill.errors import ConfigError, DataError
from anydistill.eval import protocols
from anydistill.eval.features import knn_accuracy
from anydistill.eval.protocols import evaluate_frozen, load_embedding

pytestmark = pytest.mark.usefixtures("one_thread")


def _split(root, per_class: int, seed: int):
    """Two classes a network tells apart even at random init: dark and bright noise images."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((36, 36, 3)) * 60 + 20 + 150 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    return _split(root / "train", 10, 0), _split(root / "test", 5, 1)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pre") / "run"
    argv = ["pretrain", f"run_dir={run}", "data.image_size=32", "data.batch_size=4", "data.train_count=8",
            "data.val_count=4", "pretrain.knn_count=8", "data.num_workers=0", "pretrain.proj_hidden_dim=32",
            "pretrain.proj_dim=16", "trainer.max_steps=1", "trainer.progress_bar=false"]  # fmt: skip
    assert main(argv) == 0
    return run


def test_knn_of_a_checkpoint_equals_knn_of_its_exported_backbone_and_of_features_computed_here(
    splits, pretrained
) -> None:
    train, test = splits
    ckpt = pretrained / "checkpoints" / "best.ckpt"
    by_ckpt = evaluate_frozen(ckpt, train, test, "knn", image_size=32)
    by_file = evaluate_frozen(
        f"timm:resnet18_cifar@{pretrained / 'backbone.pth'}", train, test, "knn", image_size=32
    )
    assert by_ckpt == by_file
    assert by_ckpt["train_images"] == 20 and by_ckpt["test_images"] == 10 and "top5" not in by_ckpt
    # the same numbers from features computed by hand: resize, normalise with CIFAR statistics, embed
    enc = load_embedding(ckpt).encoder
    mean, std = torch.tensor(enc.pixel_mean)[:, None, None], torch.tensor(enc.pixel_std)[:, None, None]

    def embed(root):
        feats, labels = [], []
        for c, name in enumerate(("bright", "dark")):  # the class table is sorted
            for path in sorted((root / name).glob("*.png"), key=lambda p: p.name):
                x = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float()[None] / 255
                x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
                with torch.no_grad():
                    feats.append(enc((x - mean) / std))
                labels.append(c)
        return torch.cat(feats), torch.tensor(labels)

    (tf, ty), (qf, qy) = embed(train), embed(test)
    by_hand = knn_accuracy(tf, ty, qf, qy, 2, k=20, ks=(1,))
    assert by_ckpt["top1"] == pytest.approx(by_hand["top1"])
    assert by_ckpt["top1"] >= 0.9  # dark vs bright: even a barely trained network separates them


def test_linear_probe_and_the_random_floor(splits) -> None:
    train, test = splits
    out = evaluate_frozen("timm:resnet18_cifar@random", train, test, "linear", image_size=32, epochs=20)
    assert out["lr"] in protocols.LINEAR_LRS  # chosen by the sweep on a hold-out of the train set
    assert out["top1"] >= 0.9  # dark vs bright: random features separate them


def test_linear_protocol_sweeps_rates_unless_a_class_has_one_image(splits, tmp_path, monkeypatch) -> None:
    seen = []
    real = protocols.linear_probe
    monkeypatch.setattr(protocols, "linear_probe", lambda *a, **kw: seen.append(kw["lr"]) or real(*a, **kw))
    train, test = splits
    evaluate_frozen("timm:resnet18_cifar@random", train, test, "linear", image_size=32, epochs=2)
    single = _split(tmp_path / "single", 1, 3)  # one image per class: nothing to hold out
    evaluate_frozen("timm:resnet18_cifar@random", single, test, "linear", image_size=32, epochs=2)
    assert seen == [protocols.LINEAR_LRS, 0.1]


def test_the_command_prints_a_table_and_writes_json(splits, pretrained, tmp_path, capsys) -> None:
    train, test = splits
    out = tmp_path / "knn.json"
    argv = ["evaluate", "--protocol", "knn", "--checkpoint", str(pretrained / "checkpoints" / "best.ckpt"),
            "--train-data", str(train), "--data", str(test), "--size", "32", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "| top1 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["metrics"]["test_images"] == 10


def test_bad_inputs_are_one_line_errors(splits, tmp_path, depth_ckpt) -> None:
    train, test = splits
    with pytest.raises(DataError, match="not a pre-trained backbone"):
        load_embedding(depth_ckpt)
    with pytest.raises(DataError, match="@random"):
        load_embedding("timm:resnet18_cifar")
    with pytest.raises(DataError, match="not found"):
        load_embedding(f"timm:resnet18_cifar@{tmp_path / 'nope.pth'}")
    with pytest.raises(ConfigError, match="protocol"):
        evaluate_frozen("timm:resnet18_cifar@random", train, test, "finetune")
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / "only" / "a.png")
    with pytest.raises(DataError, match="class"):
        evaluate_frozen("timm:resnet18_cifar@random", one, test, "knn")
