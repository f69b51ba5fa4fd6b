"""Small shared helpers for the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
from pathlib import Path

# As the anydistill command does (src/anydistill/cli.py), for the scripts that import this module before
# torch (the training benchmarks): OpenMP threads sleep instead of spinning while
# they wait, so a benchmark beside other work slows in proportion. Set before torch loads; the caller's
# value wins (benchmarks/bench_busy_slowdown.py sets it per run).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from anydistill.bench.timing import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line naming the machine the figures come from."""
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, table: str, data: dict, command: str) -> Path:
    """Write ``results/<name>.md`` (table + command + machine) and ``results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = RESULTS / f"{name}.md"
    md.write_text(f"{table}\n\nMachine: {machine()}\n\nCommand: `{command}`\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": machine(), "command": command, **data}, indent=2)
    )
    return md


def cached_result(path: Path, spec: dict, settings: tuple[str, ...], compute) -> dict:
    """The result stored at ``path`` when it was made with the same ``settings`` keys of ``spec``; else
    ``compute()``, stored there atomically (a long benchmark stopped part-way goes on where it was)."""
    if path.exists():
        done = json.loads(path.read_text())
        if all(done.get(k) == spec.get(k) for k in settings):
            return done
    result = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def mean_sd(values: list[float]) -> str:
    """``mean ± sample standard deviation`` (3 decimals), ``x (1 seed)`` for one value, ``–`` for none."""
    import statistics

    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
