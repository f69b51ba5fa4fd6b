"""``anydistill evaluate --protocol finetune``: the backbone and a new linear head trained on class folders,
the weights chosen on a hold-out of the train split, scored on the test split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.cli import main
from anydistill.errors import ConfigError, DataError
from anydistill.eval.finetune import FinetuneSettings, TrainCrops, holdout_split
from anydistill.eval.protocols import evaluate_protocol, finetune_backbone, load_embedding
from anydistill.models.ssl_heads import EmbeddingEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 200), (40, 200, 200))
SIZE = 16
# 6 colours: chance is 1/6 and top-5 is defined. Small steps, small batch: a few seconds on one thread.
QUICK = FinetuneSettings(steps=40, batch_size=16, lr=0.4, evals=4, seed=0)


def _split(root, per_class: int, seed: int, colours=COLOURS):
    """One class per colour, 16 px noisy flat images: separable, but not by a random network's head alone
    at 2 steps (the top-5 check needs mistakes)."""
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(colours):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.asarray(colour)[None, None] + rng.normal(0, 25, (SIZE, SIZE, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return _split(root / "train", 8, 0), _split(root / "test", 4, 1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random-init tiny timm backbone with BatchNorm (timm's ``test_resnet``), saved as a weights file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "test_resnet.pth"
    torch.save(EmbeddingEncoder("test_resnet").model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tuned(colours, weights):
    train, test = colours
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    result = finetune_backbone(f"timm:test_resnet@{weights}", train, test, QUICK, image_size=SIZE)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest  # the weights file is only read
    return result


def _images(root):
    """Test images and labels prepared by hand: 16 px already, scaled to [0, 1], normalised (0.5, 0.5)."""
    xs, ys = [], []
    for c in range(len(COLOURS)):
        for path in sorted((root / f"c{c}").glob("*.png"), key=lambda p: p.name):
            xs.append(torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float() / 255)
            ys.append(c)
    return (torch.stack(xs) - 0.5) / 0.5, torch.tensor(ys)


def test_finetuning_learns_the_classes_far_above_chance(tuned) -> None:
    m = tuned.metrics
    assert m["top1"] >= 0.8 > 1 / 6  # 6 classes
    assert m["top5"] >= m["top1"]
    assert (m["fit_images"], m["holdout_images"], m["test_images"], m["train_images"]) == (42, 6, 24, 48)
    assert m["steps"] == 40 and m["image_size"] == SIZE


def test_every_layer_trains_and_batchnorm_runs_in_train_mode(tuned, weights) -> None:
    before = load_embedding(f"timm:test_resnet@{weights}").encoder.model.state_dict()
    after = tuned.model.encoder.model.state_dict()
    convs = [k for k in before if k.endswith("conv.weight") or k.endswith("conv1.weight")]
    assert convs and all(not torch.equal(before[k], after[k]) for k in convs)  # the backbone moved
    means = [k for k in before if k.endswith("running_mean")]
    assert means and all(
        not torch.equal(before[k], after[k]) for k in means
    )  # BN statistics followed the data
    assert not tuned.model.training  # handed back in eval mode


def test_the_chosen_weights_are_the_best_on_the_holdout_and_are_the_ones_returned(tuned, colours) -> None:
    history = tuned.history
    assert [step for step, _, _ in history] == [10, 20, 30, 40]
    best = max(history, key=lambda h: (h[1], -h[2], -h[0]))
    assert tuned.metrics["best_step"] == best[0] and tuned.metrics["holdout_top1"] == best[1]
    # the returned model scores the test split as reported: the chosen weights were loaded back
    x, y = _images(colours[1])
    with torch.no_grad():
        top1 = (tuned.model(x).argmax(dim=1) == y).float().mean().item()
    assert top1 == pytest.approx(tuned.metrics["top1"])


def test_top5_is_computed_as_a_rank_and_is_at_least_top1(colours, weights) -> None:
    train, test = colours
    barely = replace(QUICK, steps=2, evals=1, lr=0.01)  # mistakes left for top-5 to count
    result = finetune_backbone(f"timm:test_resnet@{weights}", train, test, barely, image_size=SIZE)
    x, y = _images(test)
    with torch.no_grad():
        scores = result.model(x)
    order = torch.argsort(scores, dim=1, descending=True)  # (M, C)
    rank = (order == y[:, None]).float().argmax(dim=1)  # position of the true class
    assert result.metrics["top5"] == pytest.approx((rank < 5).float().mean().item())
    assert result.metrics["top1"] == pytest.approx((rank < 1).float().mean().item())
    assert result.metrics["top1"] <= result.metrics["top5"] and result.metrics["top1"] < 1.0


def test_the_same_seed_gives_the_same_run_and_another_seed_another(colours, weights, tuned) -> None:
    train, test = colours
    spec = f"timm:test_resnet@{weights}"
    again = finetune_backbone(spec, train, test, QUICK, image_size=SIZE)
    assert again.metrics == tuned.metrics and again.history == tuned.history
    a, b = tuned.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = finetune_backbone(spec, train, test, replace(QUICK, seed=1, steps=10, evals=1), image_size=SIZE)
    assert not torch.equal(other.model.head.weight, tuned.model.head.weight)
    # a randomly initialised backbone is drawn from the seed too
    short = replace(QUICK, steps=2, evals=1)
    one, two = (
        finetune_backbone("timm:test_resnet@random", train, test, short, image_size=SIZE) for _ in "ab"
    )
    assert one.metrics == two.metrics and torch.equal(one.model.head.weight, two.model.head.weight)


def test_the_global_random_state_is_left_as_it_was(colours, weights) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    settings = replace(QUICK, steps=2, evals=1)
    finetune_backbone(f"timm:test_resnet@{weights}", *colours, settings, image_size=SIZE)
    assert torch.equal(torch.rand(3), expected)


def test_the_holdout_takes_at_least_one_image_of_every_class_and_keeps_one_to_train_on() -> None:
    labels = [0] * 2 + [1] * 3 + [2] * 40
    fit, hold = holdout_split(labels, 0.1, seed=0)
    assert sorted(fit + hold) == list(range(len(labels))) and not set(fit) & set(hold)
    held = [labels[i] for i in hold]
    assert (held.count(0), held.count(1), held.count(2)) == (1, 1, 4)
    assert holdout_split(labels, 0.1, seed=0) == (fit, hold) != holdout_split(labels, 0.1, seed=1)
    with pytest.raises(ValueError, match="fewer than 2"):
        holdout_split([0, 0, 1], 0.1, seed=0)


def test_train_crops_augment_small_images_by_padding_and_keep_the_size() -> None:
    base = [{"image": torch.full((3, 20, 24), 255, dtype=torch.uint8), "label": 1}]
    crops = TrainCrops(base, SIZE, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(0)
    seen = [crops[0]["image"] for _ in range(20)]
    assert all(img.shape == (3, SIZE, SIZE) for img in seen) and crops[0]["label"] == 1
    assert any(float(img.min()) == -1.0 for img in seen)  # a zero-padded border came in (0 → -1)


def test_the_command_prints_a_table_and_writes_json(colours, weights, tmp_path, capsys) -> None:
    train, test = colours
    out = tmp_path / "ft.json"
    argv = ["evaluate", "--protocol", "finetune", "--checkpoint", f"timm:test_resnet@{weights}",
            "--train-data", str(train), "--data", str(test), "--size", str(SIZE), "--steps", "3",
            "--batch-size", "8", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "| top1 |" in capsys.readouterr().out
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["steps"] == 3 and metrics["test_images"] == 24


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_arguments_are_one_line_errors(colours, weights, tmp_path, capsys) -> None:
    train, test = colours
    spec = f"timm:test_resnet@{weights}"
    base = ["evaluate", "--checkpoint", spec, "--train-data", str(train), "--data", str(test), "--size", "16"]
    for steps in ("0", "-3"):
        err = _one_line_error([*base, "--protocol", "finetune", "--steps", steps], capsys)
        assert "--steps" in err and "at least 1" in err
    err = _one_line_error([*base, "--protocol", "knn", "--steps", "5"], capsys)
    assert "steps" in err and "finetune" in err
    err = _one_line_error([*base, "--protocol", "finetune", "--batch-size", "1"], capsys)
    assert "batch_size" in err and ">= 2" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one line naming the choices
        main([*base, "--protocol", "finetuning"])
    assert exit_info.value.code == 2 and "invalid choice: 'finetuning'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="^protocol: must be one of knn, linear, finetune, got 'fine'$"):
        evaluate_protocol(spec, train, test, "fine")
    for bad in ({"steps": 0}, {"lr": float("nan")}, {"holdout_fraction": 1.0}, {"optimizer": "adam"}):
        with pytest.raises(ConfigError, match=f"^{next(iter(bad))}: "):
            finetune_backbone(spec, train, test, replace(QUICK, **bad))


def test_classes_of_one_image_and_a_single_class_are_refused_before_training(
    weights, tmp_path, capsys
) -> None:
    spec = f"timm:test_resnet@{weights}"
    test = _split(tmp_path / "test", 1, 2, COLOURS[:2])
    singles = _split(tmp_path / "singles", 1, 3, COLOURS[:2])
    err = _one_line_error(["evaluate", "--protocol", "finetune", "--checkpoint", spec, "--train-data",
                           str(singles), "--data", str(test)], capsys)  # fmt: skip
    assert str(singles / "c0") in err and "1 image" in err and "2 or more" in err
    # the frozen protocols need no hold-out of the train split: a class of one image is fine there
    assert main(["evaluate", "--protocol", "knn", "--checkpoint", spec, "--train-data", str(singles),
                 "--data", str(test), "--size", "16"]) == 0  # fmt: skip
    one = _split(tmp_path / "one", 3, 4, COLOURS[:1])
    for protocol in ("knn", "linear", "finetune"):
        err = _one_line_error(["evaluate", "--protocol", protocol, "--checkpoint", spec, "--train-data",
                               str(one), "--data", str(test)], capsys)  # fmt: skip
        assert "only one class" in err
    with pytest.raises(DataError, match="has 1 image"):
        finetune_backbone(spec, singles, test, QUICK)


def test_a_vit_crop_must_be_a_multiple_of_its_patch(colours, capsys) -> None:
    train, test = colours
    base = [
        "evaluate",
        "--checkpoint",
        "timm:test_vit@random",
        "--train-data",
        str(train),
        "--data",
        str(test),
    ]
    for protocol in ("knn", "finetune"):
        err = _one_line_error([*base, "--protocol", protocol, "--size", "20"], capsys)
        assert "patch size 16" in err and "use 16" in err
    # a timm ViT runs at any multiple of its patch (its position embeddings interpolated), not just 160
    assert main([*base, "--protocol", "knn", "--size", "32"]) == 0


def test_an_earlier_best_holdout_score_is_the_model_handed_back(colours, weights, monkeypatch) -> None:
    """When the first hold-out evaluation is the best, its weights (not the last step's) are returned and
    scored on the test split (a missing reload of the best weights passed the test above: its best step
    was the last)."""
    from anydistill.eval import finetune as ft

    real, calls = ft._logits, []

    def scripted(model, loader, device):
        scores, labels = real(model, loader, device)
        calls.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if len(calls) <= QUICK.evals:  # the hold-out evaluations: only the first is right
            right = torch.nn.functional.one_hot(labels, scores.shape[1]).float()
            scores = right * 10 if len(calls) == 1 else (1 - right) * 10
        return scores, labels

    monkeypatch.setattr(ft, "_logits", scripted)
    train, test = colours
    result = finetune_backbone(f"timm:test_resnet@{weights}", train, test, QUICK, image_size=SIZE)
    assert result.metrics["best_step"] == 10 and len(calls) == QUICK.evals + 1
    first, scored = calls[0], calls[-1]  # the state at step 10, the state the test split saw
    assert all(torch.equal(first[k], scored[k]) for k in first)
    assert all(torch.equal(first[k], v) for k, v in result.model.state_dict().items())
    assert not all(torch.equal(first[k], calls[-2][k]) for k in first)  # the last step's differed
