"""`Predictor` with and without channels_last (its default since issue 11): PyTorch eager, batch 1, one
photo-sized input, round-robin in one process; the outputs compared too.

    python benchmarks/bench_predictor_layout.py [--size 544] [--rounds 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import common  # noqa: E402
from tiny_students import save_tiny_depth_student, save_tiny_semantic_student  # noqa: E402

from anydistill.bench.timing import round_robin  # noqa: E402
from anydistill.inference import Predictor, load_student  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=544)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    tmp = Path(common.RESULTS).parent / "_out" / "predictor_layout"
    tmp.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 256, (args.size * 3 // 4, args.size, 3), dtype=np.uint8)
    calls, outputs, rows = {}, {}, []
    for name, save in (("depth_tiny", save_tiny_depth_student), ("seg_tiny", save_tiny_semantic_student)):
        ckpt = save(tmp / f"{name}.ckpt", size=args.size)
        nhwc = Predictor(load_student(ckpt))
        nchw = Predictor(load_student(ckpt))
        nchw.channels_last = False
        nchw.model = copy.deepcopy(nchw.model).to(memory_format=torch.contiguous_format)
        sample = nhwc.prepare(image)
        for layout, predictor in (("channels_last", nhwc), ("contiguous", nchw)):
            calls[(name, layout)] = lambda p=predictor, s=sample: p.run([s])
            outputs[(name, layout)] = predictor.run([sample])
    load_before = os.getloadavg()[0]
    timings = round_robin(calls, rounds=args.rounds, warmup=2)
    load_after = os.getloadavg()[0]
    for name in ("depth_tiny", "seg_tiny"):
        base, fast = timings[(name, "contiguous")], timings[(name, "channels_last")]
        diff = float((outputs[(name, "channels_last")] - outputs[(name, "contiguous")]).abs().max())
        rows.append([name, f"{args.size}²", f"{base.median_ms:.1f}", f"{fast.median_ms:.1f}",
                     f"{base.median_ms / fast.median_ms:.2f}×", f"{diff:.1e}"])  # fmt: skip
    header = [
        "student (random weights)",
        "input",
        "contiguous ms",
        "channels_last ms",
        "speed-up",
        "max abs diff",
    ]
    table = common.markdown_table(header, rows)
    note = (
        f"`Predictor.run`, batch 1, {args.rounds} rounds round-robin after 2 warm-ups; load average "
        f"{load_before:.2f}/{load_after:.2f}.\n\nMachine: {common.machine()}\n\n"
        f"Command: `python benchmarks/bench_predictor_layout.py --size {args.size} --rounds {args.rounds}`\n"
    )
    print(table + "\n\n" + note)
    (common.RESULTS / "predictor_layout.md").write_text(table + "\n\n" + note)


if __name__ == "__main__":
    main()
