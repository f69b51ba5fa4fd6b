"""``anydistill demo``: the whole story on toyworld, with no arguments and no downloads.

1. data: labeled images of the ``narrow`` domain, unlabeled and test images of the ``wide`` domain,
   written in the user folder format (so every code path is a user's);
2. a bigger teacher (``depth_small``) trained on the labeled images only;
3. the teacher pass: the teacher pseudo-labels the unlabeled images once (the cache);
4. a small student (``depth_tiny``) trained on the labeled images only, as the baseline;
5. the same student distilled with the Depth Anything recipe (labeled + pseudo-labeled, strong
   perturbations, CutMix);
6. a semantic-segmentation student on labeled images;
7. a report comparing teacher, labeled-only student and distilled student on the wide test split
   (quality, parameters, latency) with their predictions side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from anydistill.bench.pareto import save_pareto_png
from anydistill.config import DataConfig, DistillConfig, TrainConfig
from anydistill.data.folder import FolderDataset
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
from anydistill.eval.evaluate import evaluate
from anydistill.inference import Predictor, load_student
from anydistill.losses import align_scale_shift
from anydistill.training import distill, train
from anydistill.viz import colorize_depth, image_grid, save_png


@dataclass(frozen=True)
class DemoBudget:
    """Sizes of the demo, in optimizer steps with fixed seeds (the same figures on a quiet or a busy
    machine); the default takes about ten minutes on a quiet 2-core CPU. ``cap_minutes`` stops a run that
    takes far longer than that (the report then says so)."""

    labeled_count: int = 1000
    unlabeled_count: int = 1500
    test_count: int = 128
    image_size: int = 128
    teacher_steps: int = 150
    student_steps: int = 150
    distill_steps: int = 150
    semantic_steps: int = 100
    cap_minutes: float | None = 30.0
    batch_size: int = 16
    workers: int = 1  # one loader process leaves a core for the model on a 2-core machine


DEFAULT = DemoBudget()
QUICK = DemoBudget(
    labeled_count=128,
    unlabeled_count=128,
    test_count=32,
    image_size=64,
    teacher_steps=60,
    student_steps=60,
    distill_steps=60,
    semantic_steps=40,
    cap_minutes=10.0,
)


def _config(out: Path, budget: DemoBudget, task: str, model: str, run: str, steps: int) -> TrainConfig:
    """The run ``out/runs/<run>``: ``steps`` of training on the labeled images, validated on the test split."""
    data = DataConfig(
        source="folder",
        train_root=str(out / "data" / "labeled"),
        val_root=str(out / "data" / "test"),
        image_size=budget.image_size,
        batch_size=budget.batch_size,
        num_workers=budget.workers,
    )
    return step_config(task, model, out / "runs" / run, data, steps, budget.cap_minutes, log_every_n_steps=10)


def _latency_ms(models: dict[str, torch.nn.Module], size: int = 518, rounds: int = 5) -> dict[str, float]:
    """Median latency of each model on one ``size``² image (rounded up to its input multiple), batch 1,
    measured round-robin."""
    calls = {}
    for name, model in models.items():
        side = (size + model.input_multiple - 1) // model.input_multiple * model.input_multiple
        calls[name] = partial(model, torch.randn(1, 3, side, side))
    return round_robin_latency_ms(calls, rounds)


def _comparison_grid(checkpoints: dict[str, Path], test_root: Path, out: Path, count: int = 5) -> Path:
    """Rows: test images; columns: input, each model's disparity (aligned to the truth), truth."""
    data = FolderDataset(test_root, task="depth")
    predictors = {name: Predictor(load_student(ckpt)) for name, ckpt in checkpoints.items()}
    rows = []
    for i in range(min(count, len(data))):
        sample = data[i]
        depth = sample["depth"]
        valid = depth > 0
        truth = np.where(valid, 1.0 / np.maximum(depth, 1e-6), 0.0).astype(np.float32)
        lo, hi = np.percentile(truth[valid], [2, 98]) if valid.any() else (0.0, 1.0)
        row = [sample["image"]]
        for predictor in predictors.values():
            pred = predictor.predict([sample["image"]])[0]
            p, t, v = (torch.from_numpy(a)[None, None] for a in (pred, truth, valid))
            scale, shift = align_scale_shift(p, t, v)
            aligned = (p * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1))[0, 0].numpy()
            row.append(colorize_depth(aligned, None, lo, hi))
        row.append(colorize_depth(truth, valid, lo, hi))
        zoom = max(1, 128 // row[0].shape[0])  # small tiles are enlarged so the titles fit
        rows.append([tile.repeat(zoom, axis=0).repeat(zoom, axis=1) for tile in row])
    return save_png(image_grid(rows, titles=["input", *checkpoints, "truth"]), out)


def run_demo(out: Path, quick: bool = False) -> Path:
    """Run the demo into ``out`` and return the path of its ``report.md``."""
    budget = QUICK if quick else DEFAULT
    out = Path(out)
    data_dir = out / "data"
    size = budget.image_size
    steps = Steps(7)

    with steps.step(
        "data",
        f"rendering toyworld: {budget.labeled_count} labeled (narrow), {budget.unlabeled_count} unlabeled and "
        f"{budget.test_count} test images (wide)",
    ):
        write_split(data_dir / "labeled", budget.labeled_count, size, "narrow", seed=0)
        write_split(data_dir / "unlabeled", budget.unlabeled_count, size, "wide", seed=UNLABELED_SEED)
        write_split(data_dir / "test", budget.test_count, size, "wide", seed=TOYWORLD_HELDOUT_SEED_OFFSET)

    with steps.step(
        "teacher", f"training the teacher (depth_small) on the labeled images, {budget.teacher_steps} steps"
    ):
        teacher = train(_config(out, budget, "depth", "depth_small", "teacher", budget.teacher_steps))

    with steps.step("teacher_pass", "teacher pass: pseudo-labeling the unlabeled images once"):
        cache = teacher_pass(teacher.best_checkpoint, data_dir / "unlabeled" / "images", out / "cache")

    with steps.step(
        "student_labeled",
        f"training the student (depth_tiny) on labeled images only, {budget.student_steps} steps",
    ):
        labeled_only = train(
            _config(out, budget, "depth", "depth_tiny", "student_labeled", budget.student_steps)
        )

    with steps.step(
        "student_distilled",
        f"distilling the student: labeled + pseudo-labeled, perturbations, CutMix, {budget.distill_steps} steps",
    ):
        cfg = _config(out, budget, "depth", "depth_tiny", "student_distilled", budget.distill_steps)
        cfg.distill = DistillConfig(cache=str(cache))
        distilled = distill(cfg)

    with steps.step(
        "semantic",
        f"training a semantic student (seg_tiny) on the labeled images, {budget.semantic_steps} steps",
    ):
        semantic = train(_config(out, budget, "semantic", "seg_tiny", "semantic", budget.semantic_steps))

    with steps.step("evaluate", "evaluating on the wide test split, measuring latency, writing the report"):
        test_root = str(data_dir / "test")
        models = {
            "teacher (depth_small)": teacher.best_checkpoint,
            "student, labeled only": labeled_only.best_checkpoint,
            "student, distilled": distilled.best_checkpoint,
        }
        results = {}
        loaded = {name: load_student(ckpt).model for name, ckpt in models.items()}
        latency = _latency_ms(loaded)
        for name, ckpt in models.items():
            results[name] = {
                "checkpoint": str(ckpt),
                "metrics": evaluate(ckpt, test_root, progress=False),
                "params_m": params_m(loaded[name]),
                "latency_ms_518": latency[name],
            }
        machine = load_note()
        results["semantic student (seg_tiny)"] = {
            "checkpoint": str(semantic.best_checkpoint),
            "metrics": evaluate(semantic.best_checkpoint, test_root, progress=False),
            "grid": str(semantic.run_dir / "val_grid.png"),
        }
        short = dict(zip(("teacher", "labeled only", "distilled"), models.values(), strict=True))
        grid = _comparison_grid(short, data_dir / "test", out / "comparison.png")
        pareto = save_pareto_png(
            [{"name": name, "latency_ms": r["latency_ms_518"], "quality": r["metrics"]["delta1"], "metric": "δ1"}
             for name, r in results.items() if "params_m" in r],
            out / "pareto.png",
            title="δ1 on the wide test split against latency at 518², batch 1",
            xlabel="latency at 518², batch 1, ms (log scale, PyTorch eager)",
        )  # fmt: skip
    elapsed = steps.elapsed()
    runs = {
        "teacher": (teacher, budget.teacher_steps), "labeled-only student": (labeled_only, budget.student_steps),
        "distilled student": (distilled, budget.distill_steps), "semantic student": (semantic, budget.semantic_steps),
    }  # fmt: skip
    notes = {"budget": budget_note(runs, budget.cap_minutes), "machine": machine,
             "pareto": "" if pareto is None else relative(pareto, out)}  # fmt: skip
    report = _report(results, budget, elapsed, out, grid, notes)
    data = {"results": results, "seconds": steps.seconds, "budget": asdict(budget), "notes": notes}
    return write_outputs(out, data, report)


def _report(
    results: dict, budget: DemoBudget, elapsed: float, out: Path, grid: Path, notes: dict[str, str]
) -> str:
    summary = (
        f"Labeled: {budget.labeled_count} toyworld images of the `narrow` domain (rooms only). Unlabeled: "
        f"{budget.unlabeled_count} images of the `wide` domain (rooms and open scenes), pseudo-labeled once by the "
        f"teacher. Test: {budget.test_count} held-out `wide` images. {budget.image_size}² pixels; {time_note(elapsed)}."
    )
    header = ["depth model", "δ1 ↑", "AbsRel ↓", "params (M)", "latency at 518², batch 1"]
    rows = [
        [name, f"{r['metrics']['delta1']:.3f}", f"{r['metrics']['abs_rel']:.3f}", f"{r['params_m']:.2f}",
         f"{r['latency_ms_518']:.0f} ms"]
        for name, r in results.items()
        if "params_m" in r  # the depth models
    ]  # fmt: skip
    sem = results["semantic student (seg_tiny)"]
    lines = report_head("anydistill demo report", summary, header, rows) + [
        "",
        "Depth is evaluated as Depth Anything evaluates relative depth: the predicted disparity is aligned to "
        "the ground truth by per-image least squares (scale and shift), then compared in depth.",
        "",
        notes["budget"],
        f"Latency: median of 5 rounds, the models measured in turn (round-robin); {notes['machine']}.",
        "",
        "## Speed against quality",
        "The models no other is both faster and better than are joined by the line (the Pareto front); "
        "`anydistill bench` draws the same picture for any checkpoints.",
        "",
        f"![speed and quality]({notes['pareto']})" if notes["pareto"] else "(no picture)",
        "",
        "## Predictions side by side (disparity, aligned to the truth)",
        f"![comparison]({relative(grid, out)})",
        "",
        f"## Semantic student: mIoU {sem['metrics']['miou']:.3f}, pixel accuracy {sem['metrics']['pixel_acc']:.3f}",
        f"![semantic]({relative(sem['grid'], out)})",
        "",
        "Checkpoints are under `runs/`, the teacher's pseudo-labels under `cache/`.",
        "",
    ]
    return "\n".join(lines)
