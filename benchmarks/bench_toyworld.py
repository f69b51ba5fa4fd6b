"""Throughput of the toyworld renderer: images per second on one core, per domain and image size.

    python benchmarks/bench_toyworld.py            # full run (about a minute)
    python benchmarks/bench_toyworld.py --quick    # a few seconds

Each cell renders images ``0 .. n-1`` (scene sampling + ray casting + shading, i.e. ``render_sample``,
no disk) in one process with BLAS/OpenMP pinned to one thread; the best of ``--repeats`` passes is
kept, since other work on the machine only ever slows a pass down. A last row runs all cores in a
process pool. Writes ``benchmarks/results/toyworld.md`` and ``.json`` next to it.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: measure one core

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from anydistill.bench.timing import cpu_name  # noqa: E402
from anydistill.data.toyworld import DOMAINS, GENERATOR_VERSION, render_sample  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _rate(domain: str, size: int, count: int, repeats: int) -> dict[str, float]:
    best = float("inf")
    render_sample(0, 0, domain, size)  # warm caches and imports
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            render_sample(i, 0, domain, size)
        best = min(best, time.perf_counter() - start)
    return {"images_per_s": count / best, "ms_per_image": 1000 * best / count}


def _render_index(job: tuple[str, int, int]) -> int:
    domain, size, index = job
    render_sample(index, 0, domain, size)
    return index


def _pool_rate(domain: str, size: int, count: int, processes: int) -> float:
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(processes) as pool:
        pool.map(_render_index, [(domain, size, i) for i in range(processes)])  # start the workers
        start = time.perf_counter()
        pool.map(_render_index, [(domain, size, i) for i in range(count)], chunksize=8)
        return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images per cell (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="passes per cell; the best is kept")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    cores = os.cpu_count() or 1
    rows = []
    for size in args.sizes:
        count = max(10, (40 if args.quick else 300) * 128 * 128 // (size * size))
        for domain in DOMAINS.names():
            r = _rate(domain, size, count, repeats)
            rows.append({"domain": domain, "size": size, "images": count, **r})
            print(
                f"{domain:8s} {size:4d}px  {r['images_per_s']:7.1f} img/s  {r['ms_per_image']:6.2f} ms/img",
                flush=True,
            )
    pooled = []
    if cores > 1:
        for size in args.sizes:
            count = max(20, (80 if args.quick else 600) * 128 * 128 // (size * size))
            rate = _pool_rate("wide", size, count, cores)
            pooled.append(
                {"domain": "wide", "size": size, "processes": cores, "images": count, "images_per_s": rate}
            )
            print(f"wide     {size:4d}px  {rate:7.1f} img/s with {cores} processes", flush=True)

    machine = f"{cpu_name()}, {cores} cores, Python {platform.python_version()}, numpy {np.__version__}"
    lines = [
        "# toyworld rendering throughput",
        "",
        f"`python benchmarks/bench_toyworld.py{' --quick' if args.quick else ''}` — {machine}; generator version "
        f"{GENERATOR_VERSION}. One core (OMP/BLAS threads = 1), best of {repeats} pass(es); `render_sample` = scene "
        "sampling + ray casting + shadows + shading, no disk.",
        "",
        "| domain | size | images/s (1 core) | ms/image |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['domain']} | {r['size']}² | {r['images_per_s']:.0f} | {r['ms_per_image']:.2f} |" for r in rows
    ]
    if pooled:
        lines += ["", f"| all cores | size | images/s ({cores} processes) |", "|---|---|---|"]
        lines += [f"| {p['domain']} | {p['size']}² | {p['images_per_s']:.0f} |" for p in pooled]
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    result = {
        "machine": machine,
        "cores": cores,
        "repeats": repeats,
        "quick": args.quick,
        "single_core": rows,
        "all_cores": pooled,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toyworld.md").write_text(table)
    (args.out / "toyworld.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
