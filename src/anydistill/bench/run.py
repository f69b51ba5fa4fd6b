"""``anydistill bench``: measure every (model, backend) pair in one run and write the table, the JSON
file and the Pareto picture."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from anydistill.atomic import write_text_atomic
from anydistill.bench.backends import BACKENDS, Runner, make_runner
from anydistill.bench.flops import forward_gflops, params_m
from anydistill.bench.memory import peak_memory_mb
from anydistill.bench.pareto import save_pareto_png
from anydistill.bench.quality import measure_quality
from anydistill.bench.targets import BenchTarget, resolve_target
from anydistill.bench.timing import Timing, cpu_name, load_average, round_robin
from anydistill.errors import ConfigError

__all__ = ["BenchSettings", "run_bench"]


@dataclass(frozen=True)
class BenchSettings:
    """How ``anydistill bench`` measures.

    Args:
        backends: a subset of :data:`~anydistill.bench.backends.BACKENDS`.
        batch: the batch of the throughput figure (latency is always batch 1).
        rounds: timed calls of each (model, backend) at batch 1, round-robin; half as many at ``batch``.
        warmup: untimed calls of each first.
        threads: torch's and onnxruntime's intra-op threads (``None``: all cores).
        size: input side of dense models (``None``: the checkpoint's, 518 for zoo names).
        data: measure quality on this (``toyworld:<domain>`` or a labelled folder); ``None``: speed only.
        quality_count: images (or, promptable, images of objects) the quality figure uses.
    """

    backends: tuple[str, ...] = ("eager", "channels_last", "onnx")
    batch: int = 8
    rounds: int = 10
    warmup: int = 2
    threads: int | None = None
    size: int | None = None
    data: str | None = None
    quality_count: int = 64

    def check(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise ConfigError(f"--backends: choose from {list(BACKENDS)}, got {list(self.backends)}")
        for key in ("batch", "rounds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key}: must be at least 1, got {getattr(self, key)}")
        if self.warmup < 0 or (self.threads is not None and self.threads < 1):
            raise ConfigError(f"--warmup must be >= 0 and --threads >= 1, got {self.warmup}, {self.threads}")


def _timed(targets: list[BenchTarget], backends: tuple[str, ...], batch: int, rounds: int, warmup: int,
           workdir: Path) -> tuple[dict[tuple[str, str], Timing], dict[tuple[str, str], Runner]]:  # fmt: skip
    runners: dict[tuple[str, str], Runner] = {}
    for target in targets:
        x = target.example(batch)
        for backend in backends:
            runners[(target.name, backend)] = make_runner(backend, target, x, workdir / target.name)
    calls = {key: r.call for key, r in runners.items() if r.call is not None}
    timings = round_robin(calls, rounds=rounds, warmup=warmup) if calls else {}
    return timings, runners


def _row(target: BenchTarget, backend: str, lat: Timing | None, thr: Timing | None, runner: Runner,
         batch: int, memory: float | None) -> dict[str, Any]:  # fmt: skip
    return {
        "name": target.name,
        "task": target.task,
        "backend": backend,
        "input": f"{target.side}x{target.side}",
        "latency_ms": None if lat is None else round(lat.median_ms, 3),
        "latency_min_ms": None if lat is None else round(lat.min_ms, 3),
        "latency_p90_ms": None if lat is None else round(lat.p90_ms, 3),
        "throughput_img_s": None if thr is None else round(batch / (thr.median_ms / 1e3), 2),
        "peak_memory_mb": None if memory is None else round(memory, 1),
        "setup_s": round(runner.setup_s, 2),
        "unavailable": runner.reason or None,
        **runner.extra,
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table plus the conditions it was measured under."""
    batch = result["settings"]["batch"]
    head = ["model", "task", "input", "backend", "params (M)", "GFLOPs", "ms, batch 1 (median)",
            f"img/s, batch {batch}", "peak MB", "× eager", "quality"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    models = {m["name"]: m for m in result["models"]}
    eager = {r["name"]: r["latency_ms"] for r in result["rows"] if r["backend"] == "eager"}
    for r in result["rows"]:
        m = models[r["name"]]
        quality = "–" if m.get("quality") is None else f"{m['metric']} {m['quality']:.3f}"
        if r["unavailable"] or r["latency_ms"] is None or r["throughput_img_s"] is None:
            cells = [r["name"], r["task"], r["input"], r["backend"], f"{m['params_m']:.2f}", f"{m['gflops']:.3g}",
                     f"n/a: {r['unavailable'] or 'failed at one batch size'}", "–", "–", "–", quality]  # fmt: skip
        else:
            ratio = eager.get(r["name"])
            speed = f"{ratio / r['latency_ms']:.2f}×" if ratio and r["latency_ms"] else "–"
            memory = "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
            cells = [r["name"], r["task"], r["input"], r["backend"], f"{m['params_m']:.2f}", f"{m['gflops']:.3g}",
                     f"{r['latency_ms']:.1f}", f"{r['throughput_img_s']:.1f}", memory, speed, quality]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    load = result["load_average"]
    lines += [
        "",
        f"Round-robin over every (model, backend): {result['settings']['rounds']} timed calls each at batch 1, "
        f"{max(1, result['settings']['rounds'] // 2)} at batch {batch}, after {result['settings']['warmup']} "
        f"warm-up call(s). {result['threads']} thread(s); load average before/after "
        f"{load['before'][0]:.2f}/{load['after'][0]:.2f}. Promptable models: the image encoder. Peak MB: how "
        f"much the process's resident memory grows during one batch-{batch} call after the warm-up, the C "
        "heap's free memory handed back to the system first (weights and arenas already held are not counted; "
        "onnxruntime's own arena is not measured).",
        f"Machine: {result['machine']}",
    ]
    return "\n".join(lines) + "\n"


def run_bench(specs: list[str], out: str | Path, settings: BenchSettings = BenchSettings(),
              progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Measure ``specs`` (zoo names or model files) and write ``out/bench.json``, ``out/bench.md`` and,
    with quality figures, ``out/pareto.png``. Returns the JSON's content.

    Raises:
        ConfigError: bad settings, an unknown model; DataError: a model file that cannot be loaded.
    """
    settings.check()
    if not specs:
        raise ConfigError("bench: give at least one checkpoint or zoo name")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    threads = settings.threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(specs, out, settings, threads, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    specs: list[str], out: Path, settings: BenchSettings, threads: int, progress: bool
) -> dict[str, Any]:
    say = print if progress else (lambda *_: None)
    targets = [resolve_target(spec, settings.size) for spec in specs]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ConfigError(f"bench: two models have the same name in {names}; give distinct files")
    out.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    models = []
    for target in targets:
        say(f"bench: {target.name}: parameters and FLOPs")
        model = {"name": target.name, "task": target.task, "source": str(target.checkpoint or target.name),
                 "params_m": params_m(target.module), "gflops": forward_gflops(target.module, target.example(1))}  # fmt: skip
        if settings.data:
            say(f"bench: {target.name}: quality on {settings.data}")
            model.update(measure_quality(target, settings.data, settings.quality_count))
        models.append(model)
    with tempfile.TemporaryDirectory(prefix="bench-", dir=out) as tmp:
        say(f"bench: latency at batch 1 ({len(targets)} model(s) x {len(settings.backends)} backend(s))")
        latency, runners1 = _timed(
            targets, settings.backends, 1, settings.rounds, settings.warmup, Path(tmp) / "b1"
        )
        del runners1
        say(f"bench: throughput and memory at batch {settings.batch}")
        throughput, runners = _timed(targets, settings.backends, settings.batch, max(1, settings.rounds // 2),
                                     1, Path(tmp) / f"b{settings.batch}")  # fmt: skip
        rows = []
        for target in targets:
            for backend in settings.backends:
                runner = runners[(target.name, backend)]
                key = (target.name, backend)
                # onnxruntime allocates from its own arena, which the resident-set reading cannot separate.
                measurable = runner.call is not None and backend != "onnx"
                memory = peak_memory_mb(runner.call, torch.device("cpu")) if measurable else None
                rows.append(
                    _row(
                        target, backend, latency.get(key), throughput.get(key), runner, settings.batch, memory
                    )
                )
        del runners
    result = {
        "settings": asdict(settings),
        "threads": threads,
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average": {"before": list(load_before), "after": list(load_average())},
        "models": models,
        "rows": rows,
    }
    for model in models:
        fastest = [
            r["latency_ms"] for r in rows if r["name"] == model["name"] and r["latency_ms"] is not None
        ]
        model["best_latency_ms"] = min(fastest) if fastest else None
    picture = save_pareto_png(
        [{"name": m["name"], "latency_ms": m["best_latency_ms"], "quality": m.get("quality"), "metric": m.get("metric")}
         for m in models],
        out / "pareto.png",
        title=f"quality vs latency, {threads} thread(s)",
    )  # fmt: skip
    result["pareto_png"] = None if picture is None else picture.name
    write_text_atomic(out / "bench.json", json.dumps(result, indent=2))
    write_text_atomic(out / "bench.md", markdown(result))
    return result
