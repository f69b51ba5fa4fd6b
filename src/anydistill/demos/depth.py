"""``anydistill demo``: the whole story on toyworld, with no arguments and no downloads.

1. data, written in the user folder format (so every code path is a user's): the teacher's own labeled
   images of the ``wide`` domain (rooms and open scenes; they stand in for the broad labeled data a
   foundation model such as Depth Anything learned from, which the user does not have), the user's
   labeled images of the ``narrow`` domain (rooms only), the user's unlabeled images and the test images
   of the ``wide`` domain;
2. a bigger teacher (``depth_small``) trained on its own labeled images;
3. the teacher pass: the teacher pseudo-labels the user's unlabeled images once (the cache);
4. a small student (``depth_tiny``) trained on the user's labeled images only, as the baseline;
5. the same student distilled with the Depth Anything recipe (labeled + pseudo-labeled, strong
   perturbations, CutMix), the same number of optimizer steps as the baseline;
6. a report that leads with the answer (how much faster the distilled student is than its teacher and
   how much of its quality it keeps, with and without the unlabeled images), then the table, the
   speed/quality picture and the predictions side by side. ``seeds=2`` trains both students twice
   (seeds 0 and 1) and reports each figure's mean and spread.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
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
from anydistill.errors import ConfigError
from anydistill.eval.evaluate import evaluate
from anydistill.inference import Predictor, load_student
from anydistill.losses import align_scale_shift
from anydistill.training import TrainResult, distill, train
from anydistill.viz import colorize_depth, image_grid, save_png

#: The toyworld seed of the teacher's own labeled images (the user's use 0, the unlabeled ones
#: ``UNLABELED_SEED``, the test ones the held-out offset).
TEACHER_DATA_SEED = 555

#: Seconds per optimizer step (batch 16) or per image at 128², measured on the reference machine (2-core
#: Intel Xeon, quiet, `anydistill demo`, 2026-12-02; the mean of two runs of 5.1 and 7.7 min, which shows
#: how much this shared VM's speed moves), for the time-left estimate of each step's line; other sizes
#: scale with the pixel count.
REFERENCE_COST = {"render": 0.0033, "teacher": 1.03, "teacher_pass": 0.011, "student_labeled": 0.32,
                  "student_distilled": 1.29, "evaluate": 0.005}  # fmt: skip


@dataclass(frozen=True)
class DemoBudget:
    """Sizes of the demo, in optimizer steps with fixed seeds (the same figures on a quiet or a busy
    machine); the default takes about eight minutes on a quiet 2-core CPU. ``cap_minutes`` stops a run that
    takes far longer than that (the report then says so). Both students take ``student_steps`` steps:
    the distilled one sees three times the images per step (16 labeled + 32 pseudo-labeled), which is
    the point of the recipe; ``seeds`` trains both students with seeds 0 .. seeds-1."""

    teacher_count: int = 1000
    labeled_count: int = 1000
    unlabeled_count: int = 1500
    test_count: int = 128
    image_size: int = 128
    teacher_steps: int = 160
    student_steps: int = 100
    cap_minutes: float | None = 30.0
    batch_size: int = 16
    workers: int = 1  # one loader process leaves a core for the model on a 2-core machine
    seeds: int = 1

    def plan(self) -> dict[str, float]:
        """Expected seconds of each step on the reference machine (:data:`REFERENCE_COST`)."""
        c, px = REFERENCE_COST, (self.image_size / 128) ** 2
        images = self.teacher_count + self.labeled_count + self.unlabeled_count + self.test_count
        return {
            "data": c["render"] * images * px,
            "teacher": c["teacher"] * self.teacher_steps * px,
            "teacher_pass": c["teacher_pass"] * self.unlabeled_count * px,
            "student_labeled": c["student_labeled"] * self.student_steps * self.seeds * px,
            "student_distilled": c["student_distilled"] * self.student_steps * self.seeds * px,
            "evaluate": c["evaluate"] * self.test_count * (2 * self.seeds + 1) * px + 8,
        }


DEFAULT = DemoBudget()
QUICK = DemoBudget(
    teacher_count=128,
    labeled_count=128,
    unlabeled_count=128,
    test_count=32,
    image_size=64,
    teacher_steps=80,
    student_steps=60,
    cap_minutes=10.0,
)


def _config(out: Path, budget: DemoBudget, task: str, model: str, run: str, steps: int, train_root: str = "labeled",
            seed: int = 0) -> TrainConfig:  # fmt: skip
    """The run ``out/runs/<run>``: ``steps`` of training on ``data/<train_root>``, validated once at the end on
    the test split (no checkpoint is chosen on it: with one validation, best.ckpt is the last state)."""
    data = DataConfig(
        source="folder",
        train_root=str(out / "data" / train_root),
        val_root=str(out / "data" / "test"),
        image_size=budget.image_size,
        batch_size=budget.batch_size,
        num_workers=budget.workers,
    )
    return step_config(task, model, out / "runs" / run, data, steps, budget.cap_minutes, log_every_n_steps=10,
                       seed=seed)  # fmt: skip


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


def run_demo(out: Path, quick: bool = False, seeds: int = 1) -> Path:
    """Run the demo into ``out`` and return the path of its ``report.md``; ``seeds`` trains both students
    with seeds 0 .. seeds-1 (the spread of the gain)."""
    if seeds < 1:
        raise ConfigError(f"demo: --seeds must be at least 1, got {seeds}")
    budget = replace(QUICK if quick else DEFAULT, seeds=seeds)
    out = Path(out)
    data_dir = out / "data"
    size = budget.image_size
    steps = Steps(6, plan=budget.plan())
    n_runs = f"{budget.student_steps} steps" + (f", seeds 0–{seeds - 1}" if seeds > 1 else "")

    with steps.step(
        "data",
        f"rendering toyworld: {budget.teacher_count} wide images for the teacher; {budget.labeled_count} labeled "
        f"narrow, {budget.unlabeled_count} unlabeled wide and {budget.test_count} test wide images for the student",
    ):
        write_split(data_dir / "teacher", budget.teacher_count, size, "wide", seed=TEACHER_DATA_SEED)
        write_split(data_dir / "labeled", budget.labeled_count, size, "narrow", seed=0)
        write_split(data_dir / "unlabeled", budget.unlabeled_count, size, "wide", seed=UNLABELED_SEED)
        write_split(data_dir / "test", budget.test_count, size, "wide", seed=TOYWORLD_HELDOUT_SEED_OFFSET)

    with steps.step(
        "teacher",
        f"training the teacher (depth_small) on its own labeled images, {budget.teacher_steps} steps",
    ):
        teacher = train(
            _config(
                out, budget, "depth", "depth_small", "teacher", budget.teacher_steps, train_root="teacher"
            )
        )

    with steps.step("teacher_pass", "teacher pass: pseudo-labeling the unlabeled images once"):
        cache = teacher_pass(teacher.best_checkpoint, data_dir / "unlabeled" / "images", out / "cache")

    labeled_runs: list[TrainResult] = []
    distilled_runs: list[TrainResult] = []
    with steps.step("student_labeled", f"training the student (depth_tiny) on labeled images only, {n_runs}"):
        for seed in range(seeds):
            run = "student_labeled" + (f"_seed{seed}" if seed else "")
            labeled_runs.append(
                train(_config(out, budget, "depth", "depth_tiny", run, budget.student_steps, seed=seed))
            )

    with steps.step(
        "student_distilled",
        f"distilling the student: labeled + pseudo-labeled, perturbations, CutMix, {n_runs}",
    ):
        for seed in range(seeds):
            run = "student_distilled" + (f"_seed{seed}" if seed else "")
            cfg = _config(out, budget, "depth", "depth_tiny", run, budget.student_steps, seed=seed)
            cfg.distill = DistillConfig(cache=str(cache))
            distilled_runs.append(distill(cfg))

    with steps.step("evaluate", "evaluating on the wide test split, measuring latency, writing the report"):
        test_root = str(data_dir / "test")
        groups = {
            "teacher (depth_small)": [teacher],
            "student, labeled only": labeled_runs,
            "student, distilled": distilled_runs,
        }
        loaded = {name: load_student(runs[0].best_checkpoint).model for name, runs in groups.items()}
        latency = _latency_ms(loaded)
        results = {}
        for name, runs in groups.items():
            per_seed = [evaluate(r.best_checkpoint, test_root, progress=False) for r in runs]
            results[name] = {
                "checkpoint": str(runs[0].best_checkpoint),
                "metrics": {k: statistics.mean(m[k] for m in per_seed) for k in ("delta1", "abs_rel")},
                "per_seed": per_seed,
                "params_m": params_m(loaded[name]),
                "latency_ms_518": latency[name],
            }
        machine = load_note()
        short = {"teacher": teacher.best_checkpoint, "labeled only": labeled_runs[0].best_checkpoint,
                 "distilled": distilled_runs[0].best_checkpoint}  # fmt: skip
        grid = _comparison_grid(short, data_dir / "test", out / "comparison.png")
        pareto = save_pareto_png(
            [{"name": name, "latency_ms": r["latency_ms_518"], "quality": r["metrics"]["delta1"], "metric": "δ1"}
             for name, r in results.items() if "params_m" in r],
            out / "pareto.png",
            title="δ1 on the wide test split against latency at 518², batch 1",
            xlabel="latency at 518², batch 1, ms (log scale, PyTorch eager)",
        )  # fmt: skip
    elapsed = steps.elapsed()
    runs = {"teacher": (teacher, budget.teacher_steps)}
    for seed in range(seeds):
        tag = f" (seed {seed})" if seeds > 1 else ""
        runs[f"labeled-only student{tag}"] = (labeled_runs[seed], budget.student_steps)
        runs[f"distilled student{tag}"] = (distilled_runs[seed], budget.student_steps)
    notes = {"budget": budget_note(runs, budget.cap_minutes), "machine": machine, "load": steps.load_range(),
             "pareto": "" if pareto is None else relative(pareto, out)}  # fmt: skip
    report = _report(results, budget, elapsed, out, grid, notes)
    data = {"results": results, "seconds": steps.seconds, "budget": asdict(budget), "notes": notes,
            "answer": answer(results)}  # fmt: skip
    return write_outputs(out, data, report)


def _spread(per_seed: list[dict[str, float]], key: str) -> float | None:
    """Sample standard deviation of ``key`` over seeds (None for one seed)."""
    return statistics.stdev(m[key] for m in per_seed) if len(per_seed) > 1 else None


def answer(results: dict) -> dict[str, float | None]:
    """The figures of the report's first sentence: speed-up of the distilled student over its teacher,
    the share of the teacher's δ1 each student keeps, the gain of distillation over labels only (δ1 up,
    AbsRel down; means over seeds) and, with two seeds or more, the largest seed spread of either student."""
    t, lab, dis = (
        results[k] for k in ("teacher (depth_small)", "student, labeled only", "student, distilled")
    )
    spreads = {key: [s for s in (_spread(lab["per_seed"], key), _spread(dis["per_seed"], key)) if s is not None]
               for key in ("delta1", "abs_rel")}  # fmt: skip
    return {
        "speedup": t["latency_ms_518"] / dis["latency_ms_518"],
        "distilled_share": dis["metrics"]["delta1"] / t["metrics"]["delta1"],
        "labeled_share": lab["metrics"]["delta1"] / t["metrics"]["delta1"],
        "gain_delta1": dis["metrics"]["delta1"] - lab["metrics"]["delta1"],
        "gain_abs_rel": lab["metrics"]["abs_rel"] - dis["metrics"]["abs_rel"],
        "spread_delta1": max(spreads["delta1"]) if spreads["delta1"] else None,
        "spread_abs_rel": max(spreads["abs_rel"]) if spreads["abs_rel"] else None,
    }


def answer_sentence(a: dict[str, float | None], seeds: int) -> str:
    """The report's first lines: the answer in one sentence, then the gain against the seeds' spread."""
    first = (
        f"**The distilled student is {a['speedup']:.1f}× faster than its teacher and keeps "
        f"{a['distilled_share']:.0%} of its δ1 on the wide test images; trained on the labeled images alone, "
        f"it keeps {a['labeled_share']:.0%}.**"
    )
    gain = f"Distillation moves δ1 by {a['gain_delta1']:+.3f} and AbsRel by {-a['gain_abs_rel']:+.3f}"
    if seeds > 1 and a["spread_delta1"] is not None:
        times = [g / s if s else float("inf") for g, s in ((a["gain_delta1"], a["spread_delta1"]),
                                                           (a["gain_abs_rel"], a["spread_abs_rel"]))]  # fmt: skip
        gain += (
            f" (means over {seeds} seeds); the largest seed spread (standard deviation) of either student is "
            f"{a['spread_delta1']:.3f} in δ1 and {a['spread_abs_rel']:.3f} in AbsRel, so the gain is "
            f"{times[0]:.1f}× and {times[1]:.1f}× the spread."
        )
    else:
        gain += " (one seed; `anydistill demo --seeds 2` measures the spread between seeds)."
    return f"{first}\n\n{gain}"


def _cell(result: dict, key: str) -> str:
    mean = f"{result['metrics'][key]:.3f}"
    spread = _spread(result["per_seed"], key)
    return mean if spread is None else f"{mean} ± {spread:.3f}"


def _report(
    results: dict, budget: DemoBudget, elapsed: float, out: Path, grid: Path, notes: dict[str, str]
) -> str:
    summary = (
        f"The teacher learned from {budget.teacher_count} labeled toyworld images of the `wide` domain (rooms and "
        f"open scenes), standing in for the broad data a foundation model learned from. The student's user has "
        f"{budget.labeled_count} labeled images of the `narrow` domain (rooms only) and {budget.unlabeled_count} "
        f"unlabeled `wide` images, pseudo-labeled once by the teacher. Test: {budget.test_count} held-out `wide` "
        f"images. {budget.image_size}² pixels; {time_note(elapsed)}; load average {notes['load']} during the run."
    )
    seeds = budget.seeds
    header = ["depth model", "δ1 ↑" + (f" (mean ± sd, {seeds} seeds)" if seeds > 1 else ""), "AbsRel ↓",
              "params (M)", "latency at 518², batch 1"]  # fmt: skip
    rows = [
        [
            name,
            _cell(r, "delta1"),
            _cell(r, "abs_rel"),
            f"{r['params_m']:.2f}",
            f"{r['latency_ms_518']:.0f} ms",
        ]
        for name, r in results.items()
        if "params_m" in r  # the depth models
    ]
    lines = report_head("anydistill demo report", answer_sentence(answer(results), seeds), header, rows) + [
        "",
        summary,
        "",
        "Depth is evaluated as Depth Anything evaluates relative depth: the predicted disparity is aligned to "
        "the ground truth by per-image least squares (scale and shift), then compared in depth.",
        "",
        notes["budget"],
        "Both students take the same number of optimizer steps; a distillation step carries three times the "
        "images (16 labeled + 32 pseudo-labeled).",
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
        "Checkpoints are under `runs/`, the teacher's pseudo-labels under `cache/`.",
        "",
    ]
    return "\n".join(lines)
