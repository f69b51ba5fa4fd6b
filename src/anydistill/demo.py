"""``anydistill demo``: the whole path on toyworld with no arguments and no downloads.

make data (folder format, like a user's) → train a depth and a semantic student → evaluate on a
held-out split → predict a few images → write ``report.md`` with the figures and pictures.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from anydistill.config import DataConfig, ModelConfig, TrainConfig, TrainerConfig
from anydistill.data.datamodule import TOYWORLD_HELDOUT_SEED_OFFSET
from anydistill.evaluation import evaluate
from anydistill.inference import predict_folder
from anydistill.training import train


@dataclass(frozen=True)
class DemoBudget:
    """Sizes of the demo; the default fits in about five minutes on a 2-core CPU."""

    train_count: int = 1500
    test_count: int = 128
    image_size: int = 128
    epochs: int = 6
    minutes_per_task: float = 2.0
    batch_size: int = 16
    workers: int = 1  # one loader process leaves a core for the model on a 2-core machine


DEFAULT = DemoBudget()
QUICK = DemoBudget(train_count=160, test_count=32, image_size=64, epochs=2, minutes_per_task=0.5, batch_size=16)


def _task_config(task: str, model: str, root: Path, data_dir: Path, budget: DemoBudget) -> TrainConfig:
    return TrainConfig(
        task=task,
        run_dir=str(root / "runs" / task),
        data=DataConfig(
            source="folder",
            train_root=str(data_dir / "train"),
            val_root=str(data_dir / "test"),
            image_size=budget.image_size,
            batch_size=budget.batch_size,
            num_workers=budget.workers,
        ),
        model=ModelConfig(name=model),
        trainer=TrainerConfig(
            max_epochs=budget.epochs,
            max_time_minutes=budget.minutes_per_task,
            log_every_n_steps=10,
            checkpoint_every_n_steps=50,
        ),
    )


@torch.inference_mode()
def _latency_ms(checkpoint: Path, size: int = 518, repeats: int = 5) -> float:
    from anydistill.inference import load_student

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


def run_demo(out: Path, quick: bool = False) -> Path:
    """Run the demo into ``out`` and return the path of its ``report.md``."""
    from anydistill.data.toyworld import write_toyworld

    budget = QUICK if quick else DEFAULT
    out = Path(out)
    data_dir = out / "data"
    started = time.perf_counter()
    print(f"[1/4] rendering toyworld: {budget.train_count} train + {budget.test_count} held-out test images")
    write_toyworld(data_dir / "train", count=budget.train_count, size=budget.image_size, domain="wide", seed=0)
    write_toyworld(
        data_dir / "test",
        count=budget.test_count,
        size=budget.image_size,
        domain="wide",
        seed=TOYWORLD_HELDOUT_SEED_OFFSET,
    )
    results = {}
    for step, (task, model) in enumerate((("depth", "depth_tiny"), ("semantic", "seg_tiny")), start=2):
        print(f"[{step}/4] training the {task} student ({model}), up to {budget.minutes_per_task} min")
        cfg = _task_config(task, model, out, data_dir, budget)
        result = train(cfg)
        metrics = evaluate(result.best_checkpoint, str(data_dir / "test"), progress=False)
        predict_folder(result.best_checkpoint, data_dir / "test" / "images", out / "predictions" / task, progress=False)
        results[task] = {"checkpoint": str(result.best_checkpoint), "metrics": metrics, "grid": str(result.run_dir / "val_grid.png")}
    print("[4/4] measuring latency and writing the report")
    results["depth"]["latency_ms_518"] = _latency_ms(Path(results["depth"]["checkpoint"]))
    elapsed = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report = out / "report.md"
    report.write_text(_report(results, budget, elapsed, out))
    return report


def _report(results: dict, budget: DemoBudget, elapsed: float, out: Path) -> str:
    d, s = results["depth"]["metrics"], results["semantic"]["metrics"]
    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731
    lines = [
        "# anydistill demo report",
        "",
        f"toyworld `wide` domain, {budget.train_count} labeled training images, {budget.test_count} held-out test "
        f"images at {budget.image_size}x{budget.image_size}; total time {elapsed / 60:.1f} min on "
        f"{torch.get_num_threads()} CPU thread(s).",
        "",
        "| student | metric | value |",
        "|---|---|---|",
        f"| depth (`depth_tiny`) | δ1 ↑ | {d.get('delta1', float('nan')):.3f} |",
        f"| depth (`depth_tiny`) | AbsRel ↓ | {d.get('abs_rel', float('nan')):.3f} |",
        f"| depth (`depth_tiny`) | latency at 518², batch 1 | {results['depth']['latency_ms_518']:.0f} ms |",
        f"| semantic (`seg_tiny`) | mIoU ↑ | {s.get('miou', float('nan')):.3f} |",
        f"| semantic (`seg_tiny`) | pixel accuracy ↑ | {s.get('pixel_acc', float('nan')):.3f} |",
        "",
        "Depth is evaluated as Depth Anything evaluates relative depth: the predicted disparity is aligned "
        "to the ground truth by per-image least squares (scale and shift), then compared in depth.",
        "",
        "## Depth: input / prediction / target",
        f"![depth]({rel(results['depth']['grid'])})",
        "",
        "## Semantic: input / prediction / target",
        f"![semantic]({rel(results['semantic']['grid'])})",
        "",
        f"Checkpoints: `{rel(results['depth']['checkpoint'])}`, `{rel(results['semantic']['checkpoint'])}`; "
        "predictions for the test images in `predictions/`.",
        "",
    ]
    return "\n".join(lines)
