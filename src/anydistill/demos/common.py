"""What the demo stories share: numbered, timed steps; toyworld folders; the teacher pass; the training
config of a story step; latency and parameter counts; the results and the markdown report, written
atomically."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anydistill.cache import run_teacher_pass
from anydistill.config import DataConfig, ModelConfig, TrainConfig, TrainerConfig
from anydistill.data.toyworld import write_toyworld
from anydistill.teachers import load_teacher

__all__ = [
    "UNLABELED_SEED",
    "Steps",
    "markdown_table",
    "median_latency_ms",
    "params_m",
    "relative",
    "report_head",
    "step_config",
    "teacher_pass",
    "time_note",
    "write_outputs",
    "write_split",
]

#: The toyworld seed of the unlabeled images (the labeled ones use 0, the test ones the held-out offset).
UNLABELED_SEED = 777


class Steps:
    """A story's steps, numbered in order: each prints ``[n/total] text`` and records its seconds under ``key``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        self.count += 1
        print(f"[{self.count}/{self.total}] {text}", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[key] = time.perf_counter() - start

    def elapsed(self) -> float:
        """Seconds since the story started."""
        return time.perf_counter() - self.started


def write_split(root: Path, count: int, size: int, domain: str, seed: int) -> Path:
    """``count`` toyworld images of ``domain`` in the user folder format, quietly; returns ``root``."""
    return write_toyworld(root, count=count, size=size, domain=domain, seed=seed, progress=False)


def teacher_pass(checkpoint: Path, images: Path, cache: Path) -> Path:
    """The trained teacher ``checkpoint`` pseudo-labels ``images`` once into ``cache``; returns ``cache``."""
    run_teacher_pass(partial(load_teacher, str(checkpoint)), images, cache, progress=False)
    return cache


def step_config(
    task: str,
    model: str,
    run_dir: Path,
    data: DataConfig,
    minutes: float,
    log_every_n_steps: int,
    seed: int = 0,
    gradient_clip_val: float | None = None,
    **sections: Any,
) -> TrainConfig:
    """The config of one training step of a story: ``minutes`` of training, validated once at the end
    (the budget goes to training); ``sections``: further :class:`TrainConfig` sections (``optim``, ...)."""
    return TrainConfig(
        task=task,
        run_dir=str(run_dir),
        seed=seed,
        data=data,
        model=ModelConfig(name=model),
        trainer=TrainerConfig(
            max_epochs=1000,
            max_time_minutes=minutes,
            val_every_n_epochs=1000,
            log_every_n_steps=log_every_n_steps,
            checkpoint_every_n_steps=50,
            gradient_clip_val=gradient_clip_val,
        ),
        **sections,
    )


@torch.inference_mode()
def median_latency_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``model(x)`` over ``repeats`` calls after one warm-up call, in ms."""
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def params_m(model: nn.Module) -> float:
    """Parameters of ``model``, in millions."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def time_note(elapsed: float) -> str:
    """``total time X min on N CPU thread(s)``, for a report's summary."""
    return f"total time {elapsed / 60:.1f} min on {torch.get_num_threads()} CPU thread(s)"


def relative(path: str | Path, out: Path) -> str:
    """``path`` relative to the demo folder ``out`` (links in the report)."""
    return Path(path).relative_to(out).as_posix()


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def report_head(title: str, summary: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A report's first lines: its title, the summary paragraph, the results table."""
    return [f"# {title}", "", summary, "", *markdown_table(header, rows)]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(out: Path, results: dict[str, Any], report: str) -> Path:
    """``out/results.json`` and ``out/report.md``, each written whole or not at all; returns the report's path."""
    _write_atomic(out / "results.json", json.dumps(results, indent=2))
    _write_atomic(out / "report.md", report)
    return out / "report.md"
