"""`anydistill evaluate` with and without channels_last (its default since issue 11, item 5): the whole
call (data, forward, metric) over rendered toyworld test images, round-robin in one process; the metrics
compared too.

    python benchmarks/bench_evaluate_layout.py [--size 128] [--count 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import common  # noqa: E402
from tiny_students import save_tiny_depth_student, save_tiny_semantic_student  # noqa: E402

from anydistill.bench.timing import round_robin  # noqa: E402
from anydistill.data.toyworld import write_toyworld  # noqa: E402
from anydistill.eval import evaluate as evaluate_module  # noqa: E402


def _nchw(model) -> bool:
    """Stands in for ``to_channels_last``: the model stays contiguous (NCHW), as before issue 11."""
    return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    tmp = Path(common.RESULTS).parent / "_out" / "evaluate_layout"
    data = tmp / f"test_{args.size}_{args.count}"
    if not (data / "images").is_dir():
        write_toyworld(data, args.count, args.size, "wide", seed=10_000, progress=False)
    real = evaluate_module.to_channels_last
    calls, metrics = {}, {}
    for name, save in (("depth_tiny", save_tiny_depth_student), ("seg_tiny", save_tiny_semantic_student)):
        ckpt = save(tmp / f"{name}.ckpt", size=args.size)
        for layout, fn in (("channels_last", real), ("contiguous", _nchw)):

            def call(ckpt=ckpt, fn=fn):
                evaluate_module.to_channels_last = fn
                try:
                    return evaluate_module.evaluate(ckpt, str(data), count=args.count, progress=False)
                finally:
                    evaluate_module.to_channels_last = real

            calls[(name, layout)] = call
            metrics[(name, layout)] = call()
    load_before = os.getloadavg()[0]
    timings = round_robin(calls, rounds=args.rounds, warmup=1)
    load_after = os.getloadavg()[0]
    rows = []
    for name in ("depth_tiny", "seg_tiny"):
        base, fast = timings[(name, "contiguous")], timings[(name, "channels_last")]
        a, b = metrics[(name, "contiguous")], metrics[(name, "channels_last")]
        diff = max(abs(a[k] - b[k]) for k in a)
        rows.append([name, f"{args.count} × {args.size}²", f"{base.median_ms / 1000:.2f}",
                     f"{fast.median_ms / 1000:.2f}", f"{base.median_ms / fast.median_ms:.2f}×", f"{diff:.1e}"])  # fmt: skip
    header = ["student (random weights)", "images", "contiguous s", "channels_last s", "speed-up",
              "max metric diff"]  # fmt: skip
    table = common.markdown_table(header, rows)
    note = (
        f"`anydistill.eval.evaluate` (batch 16, data + forward + metric), {args.rounds} rounds round-robin "
        f"after 1 warm-up, {os.environ.get('OMP_NUM_THREADS', 'all')} threads; load average "
        f"{load_before:.2f}/{load_after:.2f}.\n\nMachine: {common.machine()}\n\n"
        f"Command: `python benchmarks/bench_evaluate_layout.py --size {args.size} --count {args.count} "
        f"--rounds {args.rounds}`\n"
    )
    print(table + "\n\n" + note)
    (common.RESULTS / "evaluate_layout.md").write_text(table + "\n\n" + note)


if __name__ == "__main__":
    main()
