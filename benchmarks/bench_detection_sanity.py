"""Is a slow detector budget-bound or broken? Two direct training loops of ``det_tiny`` on toyworld, with
no data module, validation or checkpoints in the way (issue 14's calibration):

* ``overfit``: 16 ``narrow`` images, 300 steps of batch 8; COCO mAP on those same images (a working
  detector drives it towards 1);
* ``in-domain``: 1,000 ``wide`` images, 800 steps of batch 8 with horizontal flips; COCO mAP on 128
  held-out ``wide`` images (seed 1000) every 200 steps (how fast a detector from random initialisation
  generalises, without the narrow → wide shift of the issue's protocol).

AdamW (lr 2e-3, weight decay 0.05), 50 warm-up steps, cosine decay (the ``task=detect`` defaults),
seed 0, 128², step budgets (the figures do not depend on the machine's load).

    python benchmarks/bench_detection_sanity.py [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import common  # first: it sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

SIZE, LR = 128, 2e-3


def load(domain: str, count: int, seed: int) -> tuple[list[torch.Tensor], list[dict]]:
    from anydistill.data.detection import ToyWorldDetection

    source = ToyWorldDetection(domain, SIZE, count, seed=seed)
    records = [source[i] for i in range(count)]
    images = [torch.from_numpy(np.ascontiguousarray(r.image)).permute(2, 0, 1) for r in records]
    targets = [
        {"boxes": torch.from_numpy(r.boxes).float(), "labels": torch.from_numpy(r.labels)} for r in records
    ]
    return images, targets


def mean_ap(model, images, targets) -> tuple[float, float]:
    model.eval()
    metric = MeanAveragePrecision()
    with torch.no_grad():
        for i in range(0, len(images), 16):
            metric.update(model(images[i : i + 16]), targets[i : i + 16])
    model.train()
    out = metric.compute()
    return float(out["map"]), float(out["map_50"])


def train(images, targets, steps: int, flip: bool, every: int, test) -> list[dict]:
    from anydistill.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("det_tiny", num_classes=5, input_size=SIZE).train()
    optim = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    rows, start = [], time.perf_counter()
    for step in range(steps):
        for group in optim.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        batch_images, batch_targets = [], []
        for i in torch.randperm(len(images))[:8].tolist():
            image, boxes = images[i], targets[i]["boxes"].clone()
            if flip and torch.rand(()) < 0.5:
                image, boxes[:, [0, 2]] = image.flip(-1), SIZE - boxes[:, [2, 0]]
            batch_images.append(image)
            batch_targets.append({"boxes": boxes, "labels": targets[i]["labels"]})
        losses = model(batch_images, batch_targets)
        optim.zero_grad()
        sum(losses.values()).backward()
        optim.step()
        if (step + 1) % every == 0:
            m, m50 = mean_ap(model, *test)
            rows.append({"step": step + 1, "map": m, "map_50": m50, "seconds": time.perf_counter() - start,
                         **{k: float(v.detach()) for k, v in losses.items()}})  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    few = load("narrow", 16, 0)
    overfit = train(*few, steps=300, flip=False, every=300, test=few)
    wide, held_out = load("wide", 1000, 0), load("wide", 128, 1000)
    in_domain = train(*wide, steps=800, flip=True, every=200, test=held_out)
    header = ["run", "steps (batch 8, 128²)", "mAP", "mAP50", "on", "s"]
    rows = [["overfit: 16 narrow images", r["step"], f"{r['map']:.3f}", f"{r['map_50']:.3f}", "the same 16",
             f"{r['seconds']:.0f}"] for r in overfit]  # fmt: skip
    rows += [["in-domain: 1000 wide images", r["step"], f"{r['map']:.3f}", f"{r['map_50']:.3f}",
              "128 held-out wide", f"{r['seconds']:.0f}"] for r in in_domain]  # fmt: skip
    table = common.markdown_table(header, rows)
    table += f"\n\n1-minute load at the end: {os.getloadavg()[0]:.1f} (quality does not depend on it: step budgets, seed 0)."
    print(table)
    common.write_results("detection_sanity", table, {"overfit": overfit, "in_domain": in_domain},
                         f"python benchmarks/bench_detection_sanity.py --threads {args.threads}")  # fmt: skip


if __name__ == "__main__":
    main()
