"""End to end through the CLI for promptable segmentation (Segment Anything): simulated-click training,
interactive evaluation, ``segment``, the SAM teacher pass + encoder distillation, and fine-tuning an
official segment-anything ``.pth`` with a frozen image encoder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam_upstream import tiny_upstream_sam
from segment_anything.modeling import Sam

from anydistill.cache import PseudoLabelDataset
from anydistill.cli import main
from anydistill.data.toyworld import write_toyworld
from anydistill.models.sam import official_to_anydistill
from anydistill.promptable import SamPredictor
from anydistill.promptable.loading import load_promptable
from anydistill.promptable.segment import segment
from anydistill.teachers.sam import SamTeacher

SIZE = 64  # SAM input size of every model here (SAM: 1024); embeddings (SIZE/16)^2
PROMPT = ["task=promptable", "model.name=sam_tiny", f"data.image_size={SIZE}", "data.batch_size=2",
          "data.num_workers=0", "data.train_count=4", "data.val_count=2", "trainer.progress_bar=false",
          "prompt.num_rounds=3", "prompt.refine_rounds=1", "prompt.val_max_clicks=2",
          "prompt.val_instances=2"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _global_step(ckpt: Path) -> int:
    return int(torch.load(ckpt, weights_only=False)["global_step"])


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The ``model.*`` tensors of an anydistill checkpoint, prefix removed."""
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anydistill: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step ``train task=promptable`` run of sam_tiny on toyworld instances: (run folder, best.ckpt)."""
    run = tmp_path_factory.mktemp("promptable") / "sam"
    assert main(["train", f"run_dir={run}", "trainer.max_steps=2", *PROMPT]) == 0
    return run, run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A non-square (48 x 64) toyworld image as a PNG."""
    root = tmp_path_factory.mktemp("image")
    write_toyworld(root / "w", count=1, size=SIZE, domain="wide", seed=3, progress=False)
    rgb = np.asarray(Image.open(next((root / "w" / "images").iterdir())).convert("RGB"))[:48]
    Image.fromarray(rgb).save(root / "scene.png")
    return root / "scene.png"


# ---------------------------------------------------------------------------------------- train
def test_train_writes_checkpoint_and_interactive_metrics(trained) -> None:
    run, best = trained
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["task"] == "promptable" and summary["global_step"] == 2
    assert {"val/miou@1", "val/miou@2", "val/noc@85", "val/noc@90"} <= set(summary["val"])
    # (their values: test_evaluate_runs_the_interactive_protocol finds them again through evaluate)
    assert _global_step(run / "checkpoints" / "last.ckpt") == 2  # not overwritten by the parent process
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))
    model = load_promptable(best)
    assert model.image_encoder.img_size == SIZE and not model.training
    assert model.image_encoder.backbone_name == "mobilenetv4_conv_small"


def test_rerun_resumes_instead_of_restarting(trained, tmp_path, capsys) -> None:
    run = tmp_path / "sam"
    shutil.copytree(trained[0], run)
    assert main(["train", f"run_dir={run}", "trainer.max_steps=2", *PROMPT]) == 0
    assert "resuming" in capsys.readouterr().out
    assert _global_step(run / "checkpoints" / "last.ckpt") == 2  # finished: no step redone
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2
    assert main(["train", f"run_dir={run}", "trainer.max_steps=3", *PROMPT]) == 0
    assert _global_step(run / "checkpoints" / "last.ckpt") == 3  # one more step, from step 2


def test_training_runs_the_student_in_train_mode(trained) -> None:
    """BatchNorm running statistics move only in train mode: after 2 steps they must have left 0/1."""
    state = _weights(trained[1])
    means = [v for k, v in state.items() if k.startswith("image_encoder.") and k.endswith("running_mean")]
    assert means and any(float(m.abs().max()) > 0 for m in means)


def test_promptable_without_a_model_name_trains_the_default_sam_student(tmp_path) -> None:
    argv = [a for a in PROMPT if not a.startswith("model.name")]
    assert main(["train", f"run_dir={tmp_path / 'r'}", "trainer.max_steps=1", *argv]) == 0
    config = torch.load(tmp_path / "r" / "checkpoints" / "best.ckpt", weights_only=False)["anydistill_config"]
    assert config["task"] == "promptable"
    assert any(k.startswith("model.image_encoder.backbone.") for k in _ckpt_keys(tmp_path / "r"))


def test_promptable_with_a_depth_model_name_is_one_clear_line(tmp_path, capsys) -> None:
    argv = [a for a in PROMPT if not a.startswith("model.name")]
    assert (
        main(["train", f"run_dir={tmp_path / 'r'}", "trainer.max_steps=1", "model.name=seg_tiny", *argv]) == 2
    )
    assert "model.name='seg_tiny'" in _one_error_line(capsys.readouterr().err)


def _ckpt_keys(run) -> list[str]:
    return list(torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"])


# ------------------------------------------------------------------------------------- evaluate
def _evaluate_like_validation(checkpoint: Path, out: Path, clicks: int = 2) -> dict[str, float]:
    """``anydistill evaluate`` on the validation scenes of ``PROMPT`` runs (2 held-out toyworld:wide
    scenes, at most 2 objects each), ``clicks`` clicks per object; the metrics of its JSON."""
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--count", "2", "--max-instances", "2",
            "--max-clicks", str(clicks), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text())["metrics"]


def _assert_same_as_validation(metrics: dict[str, float], run: Path) -> None:
    """The first two clicks' mIoU and the oracle mIoU of an evaluation equal the run's validation ones
    (metrics.json: best.ckpt on the same scenes and objects, 2 clicks)."""
    val = json.loads((run / "metrics.json").read_text())["val"]
    for name in ("miou@1", "miou@2", "oracle_miou@1", "num_objects"):
        assert metrics[name] == pytest.approx(val[f"val/{name}"], abs=1e-6), name


def test_evaluate_runs_the_interactive_protocol(trained, tmp_path, capsys) -> None:
    metrics = _evaluate_like_validation(trained[1], tmp_path / "eval.json", clicks=3)
    table = capsys.readouterr().out
    assert (
        f"| noc@85 | {metrics['noc@85']:.4f} |" in table and f"| miou@3 | {metrics['miou@3']:.4f} |" in table
    )
    assert {"miou@1", "miou@2", "miou@3", "noc@85", "noc@90", "oracle_miou@1"} <= set(metrics)
    assert "miou@4" not in metrics and metrics["images"] == 2
    assert 1 <= metrics["noc@85"] <= 3  # clicks, capped at --max-clicks
    # Clicks 1 and 2 do not depend on --max-clicks: the same numbers as the training's validation.
    _assert_same_as_validation(metrics, trained[0])
    # The oracle keeps the best of the three first-click masks, the protocol the one of highest
    # predicted IoU: never better than the oracle.
    assert metrics["oracle_miou@1"] >= metrics["miou@1"] - 1e-6
    assert metrics["num_objects"] > 0


# -------------------------------------------------------------------------------------- segment
def test_segment_with_points_matches_the_predictor(trained, image, tmp_path) -> None:
    out = tmp_path / "seg"
    argv = ["segment", "--checkpoint", str(trained[1]), "--image", str(image), "--out", str(out)]
    assert main([*argv, "--point", "20,30"]) == 0
    assert {p.name for p in out.iterdir()} == {"mask.png", "overlay.png", "result.json"}
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(out / "overlay.png")).shape == (48, 64, 3)
    result = json.loads((out / "result.json").read_text())
    assert result["size"] == [48, 64] and result["points"] == [[20, 30, 1]] and len(result["iou"]) == 1
    # The CLI's one-click answer: SAM's 3 masks, the one of highest predicted IoU, in image pixels.
    predictor = SamPredictor(load_promptable(trained[1]))
    predictor.set_image(np.asarray(Image.open(image).convert("RGB")))
    masks, iou, _ = predictor.predict(np.array([[20.0, 30.0]]), np.array([1]), multimask_output=True)
    assert np.array_equal(mask > 0, masks[int(np.argmax(iou))])
    assert result["iou"][0] == pytest.approx(float(iou.max()), abs=1e-5)
    # Positive + negative clicks: one mask, labels recorded.
    assert main([*argv, "--point", "20,30", "--point", "50,10,0"]) == 0
    assert json.loads((out / "result.json").read_text())["points"] == [[20, 30, 1], [50, 10, 0]]


def test_segment_with_a_box(trained, image, tmp_path) -> None:
    argv = ["segment", "--checkpoint", str(trained[1]), "--image", str(image), "--box", "5,4,40,30"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert {p.name for p in (tmp_path / "one").iterdir()} == {"mask.png", "overlay.png", "result.json"}
    assert json.loads((tmp_path / "one" / "result.json").read_text())["box"] == [5, 4, 40, 30]
    assert main([*argv, "--multimask", "--out", str(tmp_path / "three")]) == 0
    names = {p.name for p in (tmp_path / "three").iterdir()}
    assert names == {"mask_0.png", "mask_1.png", "mask_2.png", "overlay.png", "result.json"}
    assert len(json.loads((tmp_path / "three" / "result.json").read_text())["iou"]) == 3


def test_segment_auto_writes_coco_rle(trained, image, tmp_path) -> None:
    from pycocotools import mask as mask_utils

    out = tmp_path / "auto"
    argv = ["segment", "--checkpoint", str(trained[1]), "--image", str(image), "--out", str(out)]
    assert main([*argv, "--auto", "--points-per-side", "4"]) == 0
    assert {p.name for p in out.iterdir()} == {"masks_coco.json", "overlay.png"}
    coco = json.loads((out / "masks_coco.json").read_text())
    assert coco["images"][0]["height"] == 48 and coco["images"][0]["width"] == 64
    assert np.asarray(Image.open(out / "overlay.png")).shape == (48, 64, 3)
    # An untrained model's masks fail SAM's quality filters; the function behind the CLI, filters off:
    report = segment(trained[1], image, tmp_path / "all", auto=True,
                     auto_kwargs={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})  # fmt: skip
    coco = json.loads((tmp_path / "all" / "masks_coco.json").read_text())
    assert len(coco["annotations"]) == len(report.scores) > 0
    for ann in coco["annotations"]:
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        decoded = mask_utils.decode(rle)  # pycocotools reads it
        assert decoded.shape == (48, 64) and int(decoded.sum()) == ann["area"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--point", "70,10"], "outside"),  # x beyond the 64-wide image
        (["--box", "30,5,10,20"], "x1 > x0"),
        (["--point", "1,2,3"], "LABEL"),
        ([], "--point"),  # no prompt at all
        (["--point", "5,5", "--missing-image"], "missing.png"),
        (["--point", "5,5", "--truncated"], "truncated"),
    ],
)
def test_segment_bad_input_is_one_clear_line(trained, image, tmp_path, capsys, extra, message) -> None:
    checkpoint, picture = trained[1], image
    if "--missing-image" in extra:
        extra, picture = extra[:-1], tmp_path / "missing.png"
    if "--truncated" in extra:
        data = trained[1].read_bytes()
        checkpoint = tmp_path / "truncated.ckpt"
        checkpoint.write_bytes(data[: len(data) // 2])
        extra = extra[:-1]
    argv = ["segment", "--checkpoint", str(checkpoint), "--image", str(picture), "--out", str(tmp_path / "o")]
    assert main([*argv, *extra]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------- teacher pass + distillation
@pytest.fixture(scope="module")
def sam_cache(trained, tmp_path_factory) -> Path:
    """``pseudo-label --teacher best.ckpt`` (a promptable checkpoint) over 4 unlabeled images."""
    root = tmp_path_factory.mktemp("sam_cache")
    write_toyworld(root / "unlabeled", count=4, size=SIZE, domain="wide", seed=5, progress=False)
    code = main(["pseudo-label", "--teacher", str(trained[1]), "--images", str(root / "unlabeled" / "images"),
                 "--out", str(root / "cache"), "--num-workers", "0"])  # fmt: skip
    assert code == 0
    return root / "cache"


def test_teacher_pass_caches_sam_embeddings(trained, sam_cache) -> None:
    manifest = json.loads((sam_cache / "manifest.json").read_text())
    teacher = SamTeacher(trained[1])
    assert manifest["count"] == 4 and manifest["targets"] == ["feat"]
    assert (
        manifest["teacher"]["task"] == "features"
        and manifest["teacher"]["fingerprint"] == teacher.fingerprint
    )
    dataset = PseudoLabelDataset(sam_cache, features=True)
    sample = dataset[0]
    x01 = torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1)[None].float() / 255
    expected = teacher.features(x01)[0]  # (256, 4, 4)
    feat = torch.from_numpy(sample["feat"]).float()
    assert feat.shape == expected.shape == (256, SIZE // 16, SIZE // 16)
    torch.testing.assert_close(feat, expected, atol=2e-3, rtol=2e-3)  # stored as float16


@pytest.mark.parametrize(
    "extra",
    [
        ["prompt.mask_weight=0"],  # MobileSAM: embedding MSE only, decoder frozen
        ["prompt.mask_weight=1", "prompt.mask_points=2", "prompt.finetune_decoder=true"],  # + EdgeSAM loss
    ],
)
def test_distill_promptable(trained, sam_cache, tmp_path, capsys, extra) -> None:
    run = tmp_path / "student"
    code = main(["distill", f"run_dir={run}", f"prompt.teacher={trained[1]}", f"distill.cache={sam_cache}",
                 "trainer.max_steps=2", "trainer.log_every_n_steps=1", *PROMPT, *extra])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert _global_step(run / "checkpoints" / "last.ckpt") == 2  # not overwritten by the parent process
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))
    _assert_same_as_validation(
        _evaluate_like_validation(run / "checkpoints" / "best.ckpt", tmp_path / "e.json"), run
    )
    with open(next((run / "logs" / "csv").glob("version_*/metrics.csv"))) as f:
        columns = set(next(csv.reader(f)))
    assert "train/embed_mse" in columns
    assert ("train/mask_loss" in columns) == ("prompt.mask_weight=1" in extra)

    student, teacher = load_promptable(run / "checkpoints" / "best.ckpt"), load_promptable(trained[1])
    for part in ("prompt_encoder", "mask_decoder"):
        s, t = getattr(student, part).state_dict(), getattr(teacher, part).state_dict()
        assert s.keys() == t.keys()
        same = all(torch.equal(s[k], t[k]) for k in s)
        if part == "mask_decoder" and "prompt.finetune_decoder=true" in extra:
            assert not same  # trained through the prompt-in-the-loop loss
        elif "prompt.finetune_decoder=true" not in extra:
            assert same  # the teacher's, copied in and frozen


def test_distill_with_another_teachers_cache_is_refused(trained, sam_cache, tmp_path, capsys) -> None:
    raw = torch.load(trained[1], weights_only=False)
    key = next(k for k in raw["state_dict"] if k.startswith("model.image_encoder.") and k.endswith("weight"))
    raw["state_dict"][key] = raw["state_dict"][key] + 0.01
    other = tmp_path / "other.ckpt"
    torch.save(raw, other)
    code = main(["distill", f"run_dir={tmp_path / 'r'}", f"prompt.teacher={other}", f"distill.cache={sam_cache}",
                 "trainer.max_steps=1", *PROMPT])  # fmt: skip
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "fingerprint" in line and "another teacher" in line


def test_distill_promptable_config_errors(trained, sam_cache, tmp_path, capsys) -> None:
    base = [
        "distill",
        f"run_dir={tmp_path / 'r'}",
        f"distill.cache={sam_cache}",
        "trainer.max_steps=1",
        *PROMPT,
    ]
    assert main(base) == 2
    assert "prompt.teacher" in _one_error_line(capsys.readouterr().err)
    assert main([*base, f"prompt.teacher={trained[1]}", "data.image_size=128"]) == 2
    assert "data.image_size=128" in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------- fine-tuning an official SAM .pth
def _upstream_tiny(seed: int = 0) -> Sam:
    return tiny_upstream_sam(seed, img_size=SIZE, decoder_heads=8)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, Path]:
    """(official-layout .pth, best.ckpt of a 2-step fine-tune with the image encoder frozen)."""
    root = tmp_path_factory.mktemp("finetune")
    pth = root / "sam_tiny_official.pth"
    torch.save(_upstream_tiny().state_dict(), pth)
    code = main(["train", f"run_dir={root / 'run'}", f"prompt.init_checkpoint={pth}",
                 "prompt.freeze_image_encoder=true", "trainer.max_steps=2", *PROMPT])  # fmt: skip
    assert code == 0
    return pth, root / "run" / "checkpoints" / "best.ckpt"


def test_finetune_official_checkpoint_with_frozen_encoder(finetuned) -> None:
    pth, best = finetuned
    official = official_to_anydistill(torch.load(pth, weights_only=True))
    tuned = _weights(best)
    assert tuned.keys() == official.keys()
    encoder = [k for k in official if k.startswith("image_encoder.")]
    assert encoder and all(torch.equal(tuned[k], official[k]) for k in encoder)
    decoder = [k for k in official if k.startswith("mask_decoder.")]
    assert any(not torch.equal(tuned[k], official[k]) for k in decoder)


def test_finetune_with_another_image_size_is_refused(finetuned, tmp_path, capsys) -> None:
    code = main(["train", f"run_dir={tmp_path / 'r'}", f"prompt.init_checkpoint={finetuned[0]}",
                 "trainer.max_steps=1", *PROMPT, "data.image_size=128"])  # fmt: skip
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "data.image_size=128" in line and f"data.image_size={SIZE}" in line


def test_finetuned_official_checkpoint_can_be_evaluated(finetuned, capsys) -> None:
    assert main(["evaluate", "--checkpoint", str(finetuned[1]), "--count", "1", "--max-clicks", "2"]) == 0


def test_distill_task_teacher_images_runs_the_pass_then_trains(trained, tmp_path, capsys) -> None:
    """The issue's one-liner: ``distill --task promptable --teacher T --images DIR`` caches the
    teacher's embeddings into RUN_DIR/cache, then trains; a rerun reuses the finished cache."""
    write_toyworld(tmp_path / "unlabeled", count=3, size=SIZE, domain="wide", seed=8, progress=False)
    run = tmp_path / "student"
    argv = ["distill", "--task", "promptable", "--teacher", str(trained[1]), "--images",
            str(tmp_path / "unlabeled" / "images"), f"run_dir={run}", "trainer.max_steps=1",
            *[a for a in PROMPT if not a.startswith("task=")]]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    manifest = json.loads((run / "cache" / "manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["targets"] == ["feat"]
    assert _global_step(run / "checkpoints" / "last.ckpt") == 1
    assert main(argv) == 0  # resumes: cache finished, run finished


def test_distill_images_without_teacher_is_one_clear_line(tmp_path, capsys) -> None:
    assert main(["distill", "--task", "promptable", "--images", str(tmp_path), *PROMPT[1:]]) == 2
    assert "--teacher" in _one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_promptable_training_runs_under_two_process_ddp(tmp_path) -> None:
    """Two CPU processes (gloo), points only and one round: the box embeddings and the mask-prompt
    encoder get no gradient, which plain DDP refuses; trainer_strategy turns on find_unused_parameters."""
    run = tmp_path / "ddp"
    main(["train", *PROMPT, f"run_dir={run}", "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.devices=2",
          "trainer.strategy=ddp_spawn", "prompt.p_box=0", "prompt.num_rounds=1", "prompt.refine_rounds=0"])  # fmt: skip
    assert _global_step(run / "checkpoints" / "last.ckpt") == 2  # not overwritten by the parent process
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))
