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

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anydistill.config import DataConfig, DistillConfig, ModelConfig, TrainConfig, TrainerConfig
from anydistill.data.datamodule import TOYWORLD_HELDOUT_SEED_OFFSET
from anydistill.evaluation import evaluate
from anydistill.inference import load_student
from anydistill.training import distill, train

UNLABELED_SEED = 777


@dataclass(frozen=True)
class DemoBudget:
    """Sizes of the demo; the default fits in about ten minutes on a 2-core CPU."""

    labeled_count: int = 1000
    unlabeled_count: int = 1500
    test_count: int = 128
    image_size: int = 128
    teacher_minutes: float = 2.0
    student_minutes: float = 1.5
    distill_minutes: float = 2.5
    semantic_minutes: float = 1.0
    batch_size: int = 16
    workers: int = 1  # one loader process leaves a core for the model on a 2-core machine


DEFAULT = DemoBudget()
QUICK = DemoBudget(
    labeled_count=128,
    unlabeled_count=128,
    test_count=32,
    image_size=64,
    teacher_minutes=0.4,
    student_minutes=0.25,
    distill_minutes=0.4,
    semantic_minutes=0.25,
)


def _config(task: str, model: str, run_dir: Path, data_dir: Path, budget: DemoBudget, minutes: float) -> TrainConfig:
    return TrainConfig(
        task=task,
        run_dir=str(run_dir),
        data=DataConfig(
            source="folder",
            train_root=str(data_dir / "labeled"),
            val_root=str(data_dir / "test"),
            image_size=budget.image_size,
            batch_size=budget.batch_size,
            num_workers=budget.workers,
        ),
        model=ModelConfig(name=model),
        trainer=TrainerConfig(
            max_epochs=1000,
            max_time_minutes=minutes,
            val_every_n_epochs=1000,  # validate once, at the end: the budget goes to training
            log_every_n_steps=10,
            checkpoint_every_n_steps=50,
        ),
    )


@torch.inference_mode()
def _latency_ms(checkpoint: Path, size: int = 518, repeats: int = 5) -> float:
    model = load_student(checkpoint).module.model
    multiple = model.input_multiple
    side = (size + multiple - 1) // multiple * multiple
    x = torch.randn(1, 3, side, side)
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def _params_m(checkpoint: Path) -> float:
    return sum(p.numel() for p in load_student(checkpoint).module.model.parameters()) / 1e6


def _comparison_grid(checkpoints: dict[str, Path], test_root: Path, out: Path, count: int = 5) -> Path:
    """Rows: test images; columns: input, each model's disparity (aligned to the truth), truth."""
    from anydistill.data.folder import FolderDataset
    from anydistill.inference import Predictor
    from anydistill.losses import align_scale_shift
    from anydistill.viz import colorize_depth, image_grid, save_png

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
    from anydistill.cache import run_teacher_pass
    from anydistill.data.toyworld import write_toyworld
    from anydistill.teachers import load_teacher

    budget = QUICK if quick else DEFAULT
    out = Path(out)
    data_dir = out / "data"
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def step(n: int, text: str) -> float:
        print(f"[{n}/7] {text}", flush=True)
        return time.perf_counter()

    t = step(1, f"rendering toyworld: {budget.labeled_count} labeled (narrow), {budget.unlabeled_count} "
               f"unlabeled and {budget.test_count} test images (wide)")  # fmt: skip
    size = budget.image_size
    write_toyworld(data_dir / "labeled", count=budget.labeled_count, size=size, domain="narrow", seed=0, progress=False)
    write_toyworld(data_dir / "unlabeled", count=budget.unlabeled_count, size=size, domain="wide",
                   seed=UNLABELED_SEED, progress=False)  # fmt: skip
    write_toyworld(data_dir / "test", count=budget.test_count, size=size, domain="wide",
                   seed=TOYWORLD_HELDOUT_SEED_OFFSET, progress=False)  # fmt: skip
    seconds["data"] = time.perf_counter() - t

    t = step(2, f"training the teacher (depth_small) on the labeled images, {budget.teacher_minutes} min")
    teacher = train(_config("depth", "depth_small", out / "runs/teacher", data_dir, budget, budget.teacher_minutes))
    seconds["teacher"] = time.perf_counter() - t

    t = step(3, "teacher pass: pseudo-labeling the unlabeled images once")
    cache = out / "cache"
    run_teacher_pass(load_teacher(teacher.best_checkpoint), data_dir / "unlabeled" / "images", cache, progress=False)
    seconds["teacher_pass"] = time.perf_counter() - t

    t = step(4, f"training the student (depth_tiny) on labeled images only, {budget.student_minutes} min")
    labeled_only = train(_config("depth", "depth_tiny", out / "runs/student_labeled", data_dir, budget,
                                 budget.student_minutes))  # fmt: skip
    seconds["student_labeled"] = time.perf_counter() - t

    t = step(5, f"distilling the student: labeled + pseudo-labeled, perturbations, CutMix, {budget.distill_minutes} min")
    cfg = _config("depth", "depth_tiny", out / "runs/student_distilled", data_dir, budget, budget.distill_minutes)
    cfg.distill = DistillConfig(cache=str(cache))
    distilled = distill(cfg)
    seconds["student_distilled"] = time.perf_counter() - t

    t = step(6, f"training a semantic student (seg_tiny) on the labeled images, {budget.semantic_minutes} min")
    semantic = train(_config("semantic", "seg_tiny", out / "runs/semantic", data_dir, budget, budget.semantic_minutes))
    seconds["semantic"] = time.perf_counter() - t

    t = step(7, "evaluating on the wide test split, measuring latency, writing the report")
    test_root = str(data_dir / "test")
    models = {
        "teacher (depth_small)": teacher.best_checkpoint,
        "student, labeled only": labeled_only.best_checkpoint,
        "student, distilled": distilled.best_checkpoint,
    }
    results = {
        name: {
            "checkpoint": str(ckpt),
            "metrics": evaluate(ckpt, test_root, progress=False),
            "params_m": _params_m(ckpt),
            "latency_ms_518": _latency_ms(ckpt),
        }
        for name, ckpt in models.items()
    }
    results["semantic student (seg_tiny)"] = {
        "checkpoint": str(semantic.best_checkpoint),
        "metrics": evaluate(semantic.best_checkpoint, test_root, progress=False),
        "grid": str(semantic.run_dir / "val_grid.png"),
    }
    short = dict(zip(("teacher", "labeled only", "distilled"), models.values(), strict=True))
    grid = _comparison_grid(short, data_dir / "test", out / "comparison.png")
    seconds["evaluate"] = time.perf_counter() - t
    elapsed = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps({"results": results, "seconds": seconds}, indent=2))
    report = out / "report.md"
    report.write_text(_report(results, budget, elapsed, out, grid))
    return report


def _report(results: dict, budget: DemoBudget, elapsed: float, out: Path, grid: Path) -> str:
    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731
    lines = [
        "# anydistill demo report",
        "",
        f"Labeled: {budget.labeled_count} toyworld images of the `narrow` domain (rooms only). Unlabeled: "
        f"{budget.unlabeled_count} images of the `wide` domain (rooms and open scenes), pseudo-labeled once by the "
        f"teacher. Test: {budget.test_count} held-out `wide` images. {budget.image_size}² pixels; total time "
        f"{elapsed / 60:.1f} min on {torch.get_num_threads()} CPU thread(s).",
        "",
        "| depth model | δ1 ↑ | AbsRel ↓ | params (M) | latency at 518², batch 1 |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "params_m" not in r:
            continue
        m = r["metrics"]
        lines.append(
            f"| {name} | {m['delta1']:.3f} | {m['abs_rel']:.3f} | {r['params_m']:.2f} | {r['latency_ms_518']:.0f} ms |"
        )
    sem = results["semantic student (seg_tiny)"]["metrics"]
    lines += [
        "",
        "Depth is evaluated as Depth Anything evaluates relative depth: the predicted disparity is aligned to "
        "the ground truth by per-image least squares (scale and shift), then compared in depth.",
        "",
        "## Predictions side by side (disparity, aligned to the truth)",
        f"![comparison]({rel(grid)})",
        "",
        f"## Semantic student: mIoU {sem['miou']:.3f}, pixel accuracy {sem['pixel_acc']:.3f}",
        f"![semantic]({rel(results['semantic student (seg_tiny)']['grid'])})",
        "",
        "Checkpoints are under `runs/`, the teacher's pseudo-labels under `cache/`.",
        "",
    ]
    return "\n".join(lines)
