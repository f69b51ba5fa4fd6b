"""Training throughput (images/s) of the default students on this machine.

Measures the full optimisation step (forward, loss, backward, AdamW step) of
``SupervisedModule`` on batches already in memory, so the figure is the model's, and separately
the data path (toyworld rendering + joint transforms + collate) on one worker, so you can see
which one bounds a run.

    python benchmarks/bench_train_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import markdown_table, write_results

from anydistill.data.toyworld import ToyWorldDataset
from anydistill.data.transforms import collate_samples, train_transforms
from anydistill.methods.supervised import SupervisedModule


def step_rate(task: str, model: str, size: int, batch: int, steps: int) -> float:
    module = SupervisedModule(task=task, model_name=model, num_classes=8 if task == "semantic" else None)
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    data = ToyWorldDataset(
        "wide", size, batch, seed=0, transform=train_transforms(size, module.model.input_multiple)
    )
    b = collate_samples([data[i] for i in range(batch)])
    if task == "semantic":
        b["semantic"] = b["semantic"].clamp_max(7)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = module.compute_loss(module(b["image"]), b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def loader_rate(size: int, count: int) -> float:
    data = ToyWorldDataset("wide", size, count, seed=1, transform=train_transforms(size, 32))
    start = time.perf_counter()
    collate_samples([data[i] for i in range(count)])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 3 if args.quick else 10
    rows, data = [], {}
    for task, model in (("depth", "depth_tiny"), ("semantic", "seg_tiny"), ("depth", "depth_small")):
        for size in (128, 256):
            rate = step_rate(task, model, size, 16, steps)
            rows.append([model, f"{size}²", 16, f"{rate:.1f}"])
            data[f"{model}@{size}"] = rate
            print(rows[-1], flush=True)
    for size in (128, 256):
        rate = loader_rate(size, 32 if args.quick else 128)
        rows.append(["data: toyworld render + transforms (1 worker)", f"{size}²", "-", f"{rate:.1f}"])
        data[f"loader@{size}"] = rate
    table = markdown_table(["what", "size", "batch", "train images/s"], rows)
    print(table)
    command = "python benchmarks/bench_train_throughput.py" + (" --quick" if args.quick else "")
    write_results("train_throughput", table, {"images_per_s": data}, command)


if __name__ == "__main__":
    main()
