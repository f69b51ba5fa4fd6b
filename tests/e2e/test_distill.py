"""End to end through the CLI: teacher → pseudo-label cache → distilled student → evaluate/predict."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.cli import main
from anydistill.data.toyworld import write_toyworld
from anydistill.inference import Predictor, load_student

COMMON = ["data.image_size=64", "data.batch_size=4", "data.num_workers=0", "data.val_count=4",
          "trainer.progress_bar=false", "trainer.grid_images=1"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    write_toyworld(root / "unlabeled", count=12, size=64, domain="wide", seed=5, progress=False)
    code = main(
        ["train", f"run_dir={root / 'teacher'}", "data.train_count=8", "trainer.max_steps=2", *COMMON]
    )
    assert code == 0
    teacher = root / "teacher" / "checkpoints" / "best.ckpt"
    code = main(["pseudo-label", "--teacher", str(teacher), "--images", str(root / "unlabeled" / "images"),
                 "--out", str(root / "cache"), "--shard-size", "5", "--num-workers", "0"])  # fmt: skip
    assert code == 0
    return root, teacher


@pytest.mark.parametrize("extra", [
    [],  # the full recipe: perturbations + CutMix
    ["distill.perturb=false", "distill.cutmix=false", "distill.use_labeled=false"],
    ["distill.feature_align=true"],  # frozen encoder = the teacher's own encoder
])  # fmt: skip
def test_distill_runs_and_its_student_is_usable(setup, extra, capsys):
    root, teacher = setup
    run = root / f"student_{len(extra)}"
    code = main(["distill", f"run_dir={run}", "model.name=depth_tiny", "data.train_count=8",
                 "trainer.max_steps=3", f"distill.cache={root / 'cache'}", f"distill.frozen_encoder={teacher}",
                 *COMMON, *extra])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    ckpt = run / "checkpoints" / "best.ckpt"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    state = torch.load(ckpt, weights_only=False)
    assert not any(k.startswith("frozen.") for k in state["state_dict"])
    # metrics.json holds best.ckpt's validation metrics on the 4 validation scenes, which are evaluate's
    # held-out toyworld:wide scenes: the evaluation path gives the same numbers.
    val = json.loads((run / "metrics.json").read_text())["val"]
    assert (
        main(["evaluate", "--checkpoint", str(ckpt), "--count", "4", "--json", str(run / "eval.json")]) == 0
    )
    evaluated = json.loads((run / "eval.json").read_text())["metrics"]
    for name in ("delta1", "abs_rel"):
        assert val[f"val/{name}"] == pytest.approx(evaluated[name], rel=1e-5, abs=1e-6), name
    images = root / "unlabeled" / "images"
    assert (
        main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(run / "pred")]) == 0
    )
    raws = sorted((run / "pred" / "raw").glob("*.npy"))
    assert [p.stem for p in raws] == sorted(p.stem for p in images.iterdir())
    # The prediction written for an image is the student's for that image, at the image's size.
    rgb = np.asarray(Image.open(images / f"{raws[3].stem}.png").convert("RGB"))
    np.testing.assert_allclose(
        np.load(raws[3]), Predictor(load_student(ckpt)).predict([rgb])[0], rtol=1e-4, atol=1e-5
    )


def test_distill_without_cache_is_a_clear_error(capsys):
    assert main(["distill", "data.train_count=4"]) == 2
    assert "distill.cache" in capsys.readouterr().err


def test_distill_with_a_missing_cache_names_it(tmp_path, capsys):
    assert main(["distill", f"distill.cache={tmp_path / 'nope'}", f"run_dir={tmp_path / 'r'}", *COMMON]) == 2
    assert "nope" in capsys.readouterr().err


def test_semantic_distillation_end_to_end(tmp_path, capsys):
    """A semantic teacher's logits are cached, then a student learns from them with temperature KD."""
    write_toyworld(tmp_path / "unlabeled", count=6, size=64, domain="wide", seed=9, progress=False)
    seg = ["task=semantic", "model.name=seg_tiny", *COMMON]
    assert (
        main(["train", f"run_dir={tmp_path / 'teacher'}", "data.train_count=8", "trainer.max_steps=2", *seg])
        == 0
    )
    teacher = tmp_path / "teacher" / "checkpoints" / "best.ckpt"
    assert main(["pseudo-label", "--teacher", str(teacher), "--images", str(tmp_path / "unlabeled" / "images"),
                 "--out", str(tmp_path / "cache"), "--num-workers", "0"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["teacher"]["task"] == "semantic"
    assert "logits" in manifest["targets"]
    run = tmp_path / "student"
    code = main(["distill", f"run_dir={run}", "data.train_count=8", "trainer.max_steps=3",
                 f"distill.cache={tmp_path / 'cache'}", "distill.kd_temperature=2.0", *seg])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    val = json.loads((run / "metrics.json").read_text())["val"]
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.ckpt"), "--count", "4",
                 "--json", str(out)]) == 0  # fmt: skip
    evaluated = json.loads(out.read_text())["metrics"]
    for name in ("miou", "pixel_acc"):  # the validation scenes are evaluate's held-out scenes
        assert val[f"val/{name}"] == pytest.approx(evaluated[name], rel=1e-5, abs=1e-6), name
    capsys.readouterr()
    # The same cache given to a depth student: one line before the first step, not a KeyError inside it.
    code = main(["distill", f"run_dir={tmp_path / 'depth_student'}", "data.train_count=8", "trainer.max_steps=1",
                 f"distill.cache={tmp_path / 'cache'}", *COMMON])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds a 'semantic' teacher's targets; this student's task is 'depth'" in err[0]
