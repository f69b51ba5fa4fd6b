"""Inference latency of our depth students against Depth-Anything-V2-Small on this machine.

Batch 1, 518×518 (CNN students get the next multiple of their stride, 544×544: 10 % more pixels, so
the comparison is conservative), ``torch.inference_mode``, random weights, warm-up runs, then the
median of N runs taken round-robin over the models (so drift from other processes hits them all
alike). The reference is transformers' ``DepthAnythingForDepthEstimation`` with the
Depth-Anything-V2-Small-hf configuration (DINOv2 ViT-S/14, out_indices [3, 6, 9, 12] of the hidden
states = blocks [2, 5, 8, 11], neck [48, 96, 192, 384], fusion 64, relative depth).

    python benchmarks/bench_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import markdown_table, write_results
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from anydistill.models import build_model

SIZE = 518


@dataclass
class Candidate:
    label: str
    model: nn.Module
    side: int
    channels_last: bool = False

    def input(self) -> torch.Tensor:
        x = torch.randn(1, 3, self.side, self.side)
        return x.to(memory_format=torch.channels_last) if self.channels_last else x


def depth_anything_v2_small() -> nn.Module:
    """Depth-Anything-V2-Small (transformers), random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        patch_size=14,
        image_size=518,
        out_indices=[3, 6, 9, 12],
        reshape_hidden_states=False,
        apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=384,
        patch_size=14,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        depth_estimation_type="relative",
    )
    return DepthAnythingForDepthEstimation(config)


def ours(name: str, channels_last: bool = False) -> Candidate:
    model = build_model(name)
    m = model.input_multiple
    side = (SIZE + m - 1) // m * m
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    label = f"`{name}`" + (" (channels_last)" if channels_last else "")
    return Candidate(label, model, side, channels_last)


def gflops(c: Candidate) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        c.model(c.input())
    return counter.get_total_flops() / 1e9


def measure(candidates: list[Candidate], warmup: int, repeats: int) -> dict[str, list[float]]:
    inputs = {c.label: c.input() for c in candidates}
    runs: dict[str, Callable[[], object]] = {
        c.label: (lambda c=c: c.model(inputs[c.label])) for c in candidates
    }
    times: dict[str, list[float]] = {c.label: [] for c in candidates}
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runs.values():
                run()
        for _ in range(repeats):
            for label, run in runs.items():
                start = time.perf_counter()
                run()
                times[label].append((time.perf_counter() - start) * 1000)
    return times


def load_average() -> float:
    """1-minute load average (other processes on the machine distort every figure)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 warm-up runs and 5 timed runs per model")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)"
    )
    args = parser.parse_args(argv)
    warmup, repeats = (2, 5) if args.quick else (3, 15)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = Candidate("Depth-Anything-V2-Small (transformers)", depth_anything_v2_small(), SIZE)
    candidates = [
        ours("depth_tiny"),
        ours("depth_tiny", channels_last=True),
        ours("depth_small"),
        ours("depth_small", channels_last=True),
        ours("depth_vits14"),
        reference,
    ]
    for c in candidates:
        c.model.eval()
    load_before = load_average()
    if load_before > 0.5:
        print(
            f"warning: load average {load_before:.2f}: other processes will distort the timings",
            file=sys.stderr,
        )
    times = measure(candidates, warmup, repeats)
    load_after = load_average()
    ref_ms = statistics.median(times[reference.label])

    header = [
        "model",
        "input",
        "params (M)",
        "GFLOPs",
        "latency ms (median)",
        "min–max ms",
        "speed-up vs DA-V2-S",
    ]
    rows, data = [], []
    for c in candidates:
        t = times[c.label]
        med = statistics.median(t)
        params = sum(p.numel() for p in c.model.parameters()) / 1e6
        flops = gflops(c)
        rows.append(
            [
                c.label,
                f"{c.side}²",
                f"{params:.2f}",
                f"{flops:.1f}",
                f"{med:.1f}",
                f"{min(t):.0f}–{max(t):.0f}",
                f"{ref_ms / med:.1f}×",
            ]
        )
        data.append(
            dict(
                model=c.label.strip("`"),
                side=c.side,
                params_m=params,
                gflops=flops,
                median_ms=med,
                times_ms=t,
                speedup_vs_da_v2_small=ref_ms / med,
            )
        )
    table = markdown_table(header, rows)
    note = (
        f"\n\nBatch 1, `torch.inference_mode`, {torch.get_num_threads()} threads, {warmup} warm-up + "
        f"{repeats} timed runs per model (round-robin), random weights. GFLOPs = 2 × multiply-adds "
        f"(torch FlopCounterMode). 1-min load average before/after: {load_before:.2f}/{load_after:.2f}."
    )
    print(table + note)
    command = "python benchmarks/bench_latency.py" + (" --quick" if args.quick else "")
    if args.threads != (os.cpu_count() or 1):
        command += f" --threads {args.threads}"
    path = write_results(
        "latency",
        table + note,
        {
            "rows": data,
            "warmup": warmup,
            "repeats": repeats,
            "load_before": load_before,
            "load_after": load_after,
        },
        command,
    )
    print(f"\nwritten: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
