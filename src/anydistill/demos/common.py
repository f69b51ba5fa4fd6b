"""What the demo stories share: numbered, timed steps; toyworld folders; the teacher pass; the training
config of a story step; latency and parameter counts; the results and the markdown report, written
atomically."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anydistill.atomic import write_text_atomic
from anydistill.bench.timing import round_robin
from anydistill.cache import run_teacher_pass
from anydistill.config import DataConfig, ModelConfig, TrainConfig, TrainerConfig
from anydistill.data.toyworld import write_toyworld
from anydistill.teachers import load_teacher
from anydistill.training import TrainResult

__all__ = [
    "UNLABELED_SEED",
    "Steps",
    "markdown_table",
    "round_robin_latency_ms",
    "budget_note",
    "load_note",
    "steps_done",
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
    """A story's steps, numbered in order: each prints ``[n/total] text`` and records its seconds under ``key``.

    With a ``plan`` (the expected seconds of every step, by key, e.g. from step budgets and per-step costs
    measured on a reference machine), each line also says about how long the story has left: the plan's
    remaining seconds, scaled by how fast this machine has been so far against the plan (elapsed / planned
    for the finished steps). Each step's start also samples the 1-minute load average (:meth:`load_range`).
    """

    def __init__(self, total: int, plan: dict[str, float] | None = None) -> None:
        self.total = total
        self.count = 0
        self.seconds: dict[str, float] = {}
        self.plan = dict(plan or {})
        self.loads: list[float] = []
        self.started = time.perf_counter()

    def time_left(self) -> float | None:
        """Estimated seconds from now (between steps) to the end of the story (None without a plan)."""
        if not self.plan:
            return None
        planned_done = sum(self.plan.get(k, 0.0) for k in self.seconds)
        speed = sum(self.seconds.values()) / planned_done if planned_done > 0 else 1.0
        remaining = sum(v for k, v in self.plan.items() if k not in self.seconds)
        return remaining * speed

    @contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        self.count += 1
        self.loads.append(os.getloadavg()[0])
        left = self.time_left()
        eta = "" if left is None else f" (about {max(1, round(left / 60))} min left)"
        print(f"[{self.count}/{self.total}] {text}{eta}", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[key] = time.perf_counter() - start

    def elapsed(self) -> float:
        """Seconds since the story started."""
        return time.perf_counter() - self.started

    def load_range(self) -> str:
        """``a–b``: the lowest and highest 1-minute load average seen at the steps' starts and now."""
        loads = [*self.loads, os.getloadavg()[0]]
        return f"{min(loads):.1f}–{max(loads):.1f}"


def write_split(root: Path, count: int, size: int, domain: str, seed: int) -> Path:
    """``count`` toyworld images of ``domain`` in the user folder format, quietly, rendered in up to two
    processes (each image depends only on its index and ``seed``: the same files); returns ``root``."""
    workers = min(2, os.cpu_count() or 1) if count >= 256 else 0  # a pool's start-up outweighs small splits
    return write_toyworld(
        root, count=count, size=size, domain=domain, seed=seed, workers=workers, progress=False
    )


def teacher_pass(checkpoint: Path, images: Path, cache: Path) -> Path:
    """The trained teacher ``checkpoint`` pseudo-labels ``images`` once into ``cache``; returns ``cache``."""
    run_teacher_pass(partial(load_teacher, str(checkpoint)), images, cache, progress=False)
    return cache


def step_config(
    task: str,
    model: str,
    run_dir: Path,
    data: DataConfig,
    steps: int,
    cap_minutes: float | None,
    log_every_n_steps: int,
    seed: int = 0,
    gradient_clip_val: float | None = None,
    **sections: Any,
) -> TrainConfig:
    """The config of one training step of a story: ``steps`` optimizer steps with a fixed seed, so the
    same command gives the same figures on a quiet or a busy machine; ``cap_minutes`` only stops a run
    that would take far longer than planned (the report says when it did). Validated once at the end (the
    budget goes to training); ``sections``: further :class:`TrainConfig` sections (``optim``, ...)."""
    return TrainConfig(
        task=task,
        run_dir=str(run_dir),
        seed=seed,
        data=data,
        model=ModelConfig(name=model),
        trainer=TrainerConfig(
            max_epochs=-1,
            max_steps=steps,
            max_time_minutes=cap_minutes,
            val_every_n_epochs=1000,
            log_every_n_steps=log_every_n_steps,
            checkpoint_every_n_steps=50,
            progress_bar=False,  # one line per story step instead (Steps)
            gradient_clip_val=gradient_clip_val,
        ),
        **sections,
    )


def steps_done(result: TrainResult) -> int:
    """The optimizer steps a finished run took (its ``metrics.json``)."""
    return int(json.loads((Path(result.run_dir) / "metrics.json").read_text())["global_step"])


def budget_note(runs: dict[str, tuple[TrainResult, int]], cap_minutes: float | None) -> str:
    """How each run's budget was spent: ``"teacher 150 steps, ..."``, and which runs the time cap cut short
    (their figures then depend on the machine's speed)."""
    parts, cut = [], []
    for name, (result, target) in runs.items():
        done = steps_done(result)
        parts.append(f"{name} {target} steps")
        if done < target:
            cut.append(f"{name} at step {done} of {target}")
    cap = f"time cap {cap_minutes:g} min a run" if cap_minutes else "no time cap"
    if cut:
        return f"Budgets: {', '.join(parts)} ({cap}; **stopped by the cap: {', '.join(cut)}**, figures depend on the machine's speed)."
    return f"Budgets: {', '.join(parts)}, fixed seeds ({cap}, not reached): the same command gives the same figures."


@torch.inference_mode()
def round_robin_latency_ms(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median wall time of each call in ms, measured round-robin (one call of each in turn, ``rounds``
    times, after one warm-up call each; :func:`anydistill.bench.timing.round_robin`), so a change in the
    machine's load affects every model alike; the thread count is the process's, the same for every call."""
    return {name: t.median_ms for name, t in round_robin(calls, rounds=rounds, warmup=1).items()}


def load_note() -> str:
    """``N threads, load average a / b / c`` (1, 5, 15 min), recorded beside latencies."""
    one, five, fifteen = os.getloadavg()
    return f"{torch.get_num_threads()} thread(s), load average {one:.2f} / {five:.2f} / {fifteen:.2f}"


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


def write_outputs(out: Path, results: dict[str, Any], report: str) -> Path:
    """``out/results.json`` and ``out/report.md``, each written whole or not at all; returns the report's path."""
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    write_text_atomic(out / "report.md", report)
    return out / "report.md"
