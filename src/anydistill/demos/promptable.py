"""``anydistill demo --promptable``: the Segment Anything story on toyworld, no arguments, no downloads.

1. data: ``wide``-domain unlabeled images written in the user folder format (the labeled training
   and test images are rendered on the fly with their instance masks);
2. a bigger promptable teacher (``sam_small``: MobileNetV4-Conv-Medium encoder + SAM's prompt encoder
   and two-way mask decoder) trained with SAM's simulated interactive recipe on labeled instances;
3. the teacher pass: its image embeddings of the unlabeled images, cached once;
4. a small student (``sam_tiny``) distilled MobileSAM-style: its encoder regresses the cached
   embeddings (+ EdgeSAM's prompt-in-the-loop mask loss), the teacher's decoder reused, frozen;
5. optionally (``baseline=True``) the same student trained on the labels directly, same step budget,
   twice: with its own decoder learned from scratch, and with the teacher's decoder taken over and frozen
   as the distilled student has it (so the comparison separates the decoder from the distillation);
6. a report: the interactive protocol (mIoU after 1 and 5 clicks, NoC@85/90, oracle 1-click mIoU)
   on held-out ``wide`` scenes, parameters, image-encoder latency at 1024², and a picture of the
   teacher's and the student's masks for the same click.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from anydistill.config import DataConfig, DistillConfig, OptimConfig, PromptConfig, TrainConfig
from anydistill.data.clicks import evaluation_clicks
from anydistill.data.instances import InstanceDataset, ToyWorldInstances
from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET
from anydistill.demos.common import (
    UNLABELED_SEED,
    Steps,
    budget_note,
    load_note,
    params_m,
    relative,
    report_head,
    round_robin_latency_ms,
    step_config,
    teacher_pass,
    time_note,
    write_outputs,
    write_split,
)
from anydistill.eval.evaluate import evaluate_promptable
from anydistill.models import build_model
from anydistill.promptable import SamPredictor
from anydistill.promptable.loading import load_promptable
from anydistill.training import distill, train
from anydistill.viz import image_grid, overlay, save_png


@dataclass(frozen=True)
class PromptableBudget:
    """Sizes of the promptable demo, in optimizer steps with fixed seeds (the same figures on a quiet or a
    busy machine); the default takes about seven minutes on a quiet 2-core CPU. ``cap_minutes`` stops a
    run that takes far longer (the report then says so)."""

    labeled_count: int = 2000
    unlabeled_count: int = 800
    test_count: int = 48
    image_size: int = 128
    teacher_steps: int = 200
    student_steps: int = 180
    cap_minutes: float | None = 30.0
    batch_size: int = 8
    max_instances: int = 8
    num_rounds: int = 11
    max_clicks: int = 10
    workers: int = 1


DEFAULT = PromptableBudget()
QUICK = PromptableBudget(
    labeled_count=128, unlabeled_count=64, test_count=8, teacher_steps=50, student_steps=50, cap_minutes=10.0,
    batch_size=4, max_instances=4, num_rounds=5, max_clicks=5,
)  # fmt: skip


def _config(
    model: str,
    run_dir: Path,
    budget: PromptableBudget,
    steps: int,
    lr: float,
    clip: float | None = 0.1,
    seed: int = 0,
) -> TrainConfig:
    """A promptable run; ``clip``: the global gradient-norm clip (SAM 2's 0.1; without it the simulated
    interactive training from scratch, without warm-up, collapsed to empty masks after ~575 steps)."""
    data = DataConfig(
        source="toyworld", train_domain="wide", val_domain="wide", train_count=budget.labeled_count,
        val_count=budget.test_count, image_size=budget.image_size, batch_size=budget.batch_size,
        num_workers=budget.workers,
    )  # fmt: skip
    # From random init SAM's 20:1 focal:dice collapses to empty masks on toyworld's small objects
    # (configs/promptable_toyworld.yaml says more); 1:1 learns.
    prompt = PromptConfig(num_rounds=budget.num_rounds, max_instances=budget.max_instances,
                          val_max_clicks=budget.max_clicks, focal_weight=1.0, dice_weight=1.0)  # fmt: skip
    return step_config(
        "promptable", model, run_dir, data, steps, budget.cap_minutes, log_every_n_steps=5, seed=seed,
        gradient_clip_val=clip,
        optim=OptimConfig(lr=lr, weight_decay=0.1, warmup_steps=20), prompt=prompt,
    )  # fmt: skip


def encoder_latency_ms(model_names: list[str], size: int = 1024, rounds: int = 3) -> dict[str, float]:
    """Median latency of each model's image encoder (the part run once per image) on one ``size``² image,
    random weights (the cost does not depend on them), measured round-robin."""
    x = torch.randn(1, 3, size, size)
    encoders = {
        name: build_model(name, img_size=size).image_encoder.eval() for name in dict.fromkeys(model_names)
    }
    return round_robin_latency_ms({name: partial(encoder, x) for name, encoder in encoders.items()}, rounds)


def _click_picture(models: dict[str, Path], budget: PromptableBudget, out: Path, count: int = 4) -> Path:
    """Rows: test scenes; columns: the input with one click on an object (green), then each model's
    mask for that click (best of its 3 masks by predicted IoU), then the true mask."""
    data = InstanceDataset(
        ToyWorldInstances("wide", budget.image_size, count, seed=TOYWORLD_HELDOUT_SEED_OFFSET),
        budget.image_size, 1, 64, sampling="fixed",
    )  # fmt: skip
    predictors = {name: SamPredictor(load_promptable(path)) for name, path in models.items()}
    rows = []
    for sample in data:
        if not sample["masks"].shape[0]:
            continue
        h, w = (int(v) for v in sample["input_size"])
        image = sample["image"][:, :h, :w].permute(1, 2, 0).numpy()  # (h, w, 3) uint8
        gt = sample["masks"][0, :h, :w]  # (h, w)
        coords, _ = evaluation_clicks(torch.zeros(1, h, w, dtype=torch.bool), gt[None])
        x, y = (float(v) for v in coords.reshape(-1, 2)[0])
        marked = image.copy()
        marked[max(0, int(y) - 2) : int(y) + 3, max(0, int(x) - 2) : int(x) + 3] = (0, 230, 0)
        row = [marked]
        for predictor in predictors.values():
            predictor.set_image(image)
            masks, iou, _ = predictor.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
            red = overlay(image, np.full_like(image, (255, 60, 60)), 0.6)
            row.append(np.where(masks[int(iou.argmax())][..., None], red, image))
        blue = overlay(image, np.full_like(image, (60, 120, 255)), 0.6)
        row.append(np.where(gt.numpy()[..., None], blue, image))
        rows.append(row)
    return save_png(image_grid(rows, titles=["click", *models, "truth"]), out)


def run_promptable_demo(
    out: Path,
    quick: bool = False,
    baseline: bool = False,
    budget: PromptableBudget | None = None,
    seed: int = 0,
) -> Path:
    """Run the promptable story into ``out`` and return the path of its ``report.md``; ``budget``
    replaces the default (or ``quick``) sizes, e.g. longer training for a benchmark; ``seed`` is the
    training runs' seed (initialisation, prompts, order; the scenes stay the same)."""
    budget = budget or (QUICK if quick else DEFAULT)
    out = Path(out)
    steps = Steps(7 if baseline else 5)
    student_steps = budget.student_steps

    with steps.step("data", f"rendering {budget.unlabeled_count} unlabeled toyworld images (wide)"):
        unlabeled = write_split(
            out / "data" / "unlabeled", budget.unlabeled_count, budget.image_size, "wide", seed=UNLABELED_SEED
        )

    with steps.step(
        "teacher",
        f"training the promptable teacher (sam_small) with simulated clicks, {budget.teacher_steps} steps",
    ):
        teacher = train(
            _config("sam_small", out / "runs/teacher", budget, budget.teacher_steps, 8e-4, seed=seed)
        )

    with steps.step(
        "teacher_pass", "teacher pass: caching the teacher's image embeddings of the unlabeled images"
    ):
        cache = teacher_pass(teacher.best_checkpoint, unlabeled / "images", out / "cache")

    with steps.step(
        "student_distilled",
        f"distilling the student's encoder (sam_tiny) from the cached embeddings, {student_steps} steps",
    ):
        cfg = _config(
            "sam_tiny", out / "runs/student_distilled", budget, student_steps, 2e-3, clip=None, seed=seed
        )
        cfg.distill = DistillConfig(cache=str(cache))
        cfg.prompt.teacher = str(teacher.best_checkpoint)
        cfg.prompt.mask_weight = 1.0
        distilled = distill(cfg)
    models = {
        "teacher (sam_small)": teacher.best_checkpoint,
        "student, distilled (sam_tiny)": distilled.best_checkpoint,
    }

    if baseline:
        with steps.step(
            "student_labeled", f"training the same student on the labels directly, {student_steps} steps"
        ):
            direct = train(
                _config("sam_tiny", out / "runs/student_labeled", budget, student_steps, 8e-4, seed=seed)
            )
        models["student, labels only (sam_tiny)"] = direct.best_checkpoint
        with steps.step(
            "student_labeled_teacher_decoder",
            f"training the same student's encoder on the labels, the teacher's decoder frozen, {student_steps} steps",
        ):
            cfg = _config(
                "sam_tiny",
                out / "runs/student_labeled_teacher_decoder",
                budget,
                student_steps,
                8e-4,
                seed=seed,
            )
            cfg.prompt.teacher = str(teacher.best_checkpoint)
            direct_decoder = train(cfg)
        models["student, labels only, teacher's decoder (sam_tiny)"] = direct_decoder.best_checkpoint

    with steps.step("evaluate", "interactive evaluation on held-out wide scenes, latency, report"):
        results = {}
        encoder_names = {name: name.rpartition("(")[2].rstrip(")") for name in models}
        latency = encoder_latency_ms(list(encoder_names.values()), rounds=1 if quick else 3)
        machine = load_note()
        for name, ckpt in models.items():
            model = load_promptable(ckpt)
            metrics = evaluate_promptable(
                ckpt, "toyworld:wide", count=budget.test_count, max_clicks=budget.max_clicks, progress=False
            )
            results[name] = {
                "checkpoint": str(ckpt),
                "metrics": metrics,
                "params_m": params_m(model),
                "encoder_params_m": params_m(model.image_encoder),
                "encoder_ms_1024": latency[encoder_names[name]],
            }
        picture = _click_picture(models, budget, out / "clicks.png")
    elapsed = steps.elapsed()
    runs = {"teacher": (teacher, budget.teacher_steps), "distilled student": (distilled, student_steps)}
    if baseline:
        runs["labels-only student"] = (direct, student_steps)
        runs["labels-only student with the teacher's decoder"] = (direct_decoder, student_steps)
    notes = {"budget": budget_note(runs, budget.cap_minutes), "machine": machine}
    data = {"results": results, "seconds": steps.seconds, "budget": asdict(budget), "total_seconds": elapsed,
            "notes": notes}  # fmt: skip
    return write_outputs(out, data, _report(results, budget, elapsed, out, picture, notes))


def _report(
    results: dict, budget: PromptableBudget, elapsed: float, out: Path, picture: Path, notes: dict[str, str]
) -> str:
    k = budget.max_clicks
    summary = (
        f"Teacher trained on {budget.labeled_count} labeled toyworld scenes (`wide`) with SAM's simulated "
        f"interactive recipe ({budget.num_rounds} rounds per object); student distilled from the teacher's "
        f"cached image embeddings of {budget.unlabeled_count} unlabeled scenes. Evaluated on "
        f"{budget.test_count} held-out scenes by the interactive protocol (up to {k} clicks, each at the "
        f"centre of the largest error). {budget.image_size}² pixels; {time_note(elapsed)}."
    )
    header = ["model", "1-click mIoU ↑", "5-click mIoU ↑", "NoC@85 ↓", "NoC@90 ↓", "oracle 1-click ↑", "params (M)",
              "image encoder at 1024²"]  # fmt: skip
    rows = []
    for name, r in results.items():
        m = r["metrics"]
        rows.append([
            name, f"{m['miou@1']:.3f}", f"{m.get('miou@5', float('nan')):.3f}", f"{m['noc@85']:.2f}",
            f"{m['noc@90']:.2f}", f"{m['oracle_miou@1']:.3f}", f"{r['params_m']:.1f}", f"{r['encoder_ms_1024']:.0f} ms",
        ])  # fmt: skip
    names = list(results)
    ratio = results[names[1]]["metrics"]["miou@1"] / max(results[names[0]]["metrics"]["miou@1"], 1e-9)
    lines = report_head("anydistill promptable demo report", summary, header, rows) + [
        "",
        f"The distilled student keeps {100 * ratio:.0f}% of the teacher's 1-click mIoU.",
        "",
        notes["budget"],
        f"Encoder latency: median of the rounds, the encoders measured in turn (round-robin); {notes['machine']}.",
        "",
        "## One click, each model's mask",
        f"![clicks]({relative(picture, out)})",
        "",
        "Checkpoints are under `runs/`, the cached teacher embeddings under `cache/`. Try "
        "`anydistill segment --checkpoint runs/student_distilled/checkpoints/best.ckpt --image IMAGE --point X,Y`.",
        "",
    ]
    return "\n".join(lines)
