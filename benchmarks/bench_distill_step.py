"""Student training step with the pseudo-label cache vs. the same step with the teacher run on the fly.

The cache is the default because teachers are much slower than students: this measures the
ratio. Both variants run the full Depth Anything step (labeled batch of 16 + unlabeled batch of
32, perturbations, CutMix, backward, AdamW step); the on-the-fly variant additionally runs the
teacher on the clean unlabeled batch to make its targets, exactly what the cache saves.

    python benchmarks/bench_distill_step.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import markdown_table, write_results

from anydistill.config import DistillConfig
from anydistill.methods.distill import DistillModule
from anydistill.models import build_model


def make_batch(size: int, labeled: int, unlabeled: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "labeled": {
            "image": torch.rand(labeled, 3, size, size, generator=g),
            "depth": torch.rand(labeled, 1, size, size, generator=g) * 10 + 0.5,
            "depth_valid": torch.ones(labeled, 1, size, size, dtype=torch.bool),
        },
        "unlabeled": {
            "image": torch.rand(unlabeled, 3, size, size, generator=g),
            "disparity": torch.rand(unlabeled, 1, size, size, generator=g),
            "disparity_valid": torch.ones(unlabeled, 1, size, size, dtype=torch.bool),
        },
    }


def time_steps(module: DistillModule, batch: dict, steps: int, teacher: torch.nn.Module | None) -> float:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.log_dict = lambda *a, **k: None  # no trainer attached: logging is a no-op here
    module.log = lambda *a, **k: None
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        if teacher is not None:
            with torch.no_grad():
                x = batch["unlabeled"]["image"]
                batch["unlabeled"]["disparity"] = teacher(teacher.normalize(x))
        loss = module.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=128, help="input size with the CNN teacher")
    args = parser.parse_args()
    steps = 2 if args.quick else 5
    rows, data = [], {}
    # depth_vits14 / depth_vitb14 have the sizes of Depth-Anything-V2-Small / -Base.
    for teacher_name in ("depth_small", "depth_vits14", "depth_vitb14"):
        module = DistillModule(distill=DistillConfig(trim=0.0), task="depth", model_name="depth_tiny")
        module.train()
        teacher = build_model(teacher_name).eval()
        # one input size both models accept: 224 is a multiple of 32 (student) and of 14 (ViT teacher)
        side = 224 if teacher_name.endswith("14") else args.size
        batch = make_batch(side, 16, 32)
        cached = time_steps(module, batch, steps, None)
        online = time_steps(module, batch, steps, teacher)
        rows.append(
            [
                teacher_name,
                f"{side}²",
                f"{cached * 1000:.0f}",
                f"{online * 1000:.0f}",
                f"{online / cached:.2f}×",
            ]
        )
        data[teacher_name] = {"size": side, "cached_s": cached, "online_s": online}
        print(rows[-1], flush=True)
    table = markdown_table(
        ["teacher", "input", "step with cache (ms)", "step with teacher on the fly (ms)", "cache speed-up"],
        rows,
    )
    print(table)
    command = "python benchmarks/bench_distill_step.py" + (" --quick" if args.quick else "")
    write_results("distill_step", table, data, command)


if __name__ == "__main__":
    main()
