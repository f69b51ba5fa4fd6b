"""SimCLR views: per-image torchvision pipeline in the loader vs crops in the loader + kornia on the batch.

Two ways to make the two SimCLR views of every image of a batch (:mod:`anydistill.data.views`):

- (a) ``SimCLRViews(size)`` per image in the loader: random resized crop, flip, colour jitter, grayscale,
  blur (from 96²: SimCLR's CIFAR setting has none at 32²), normalisation, all with torchvision v2;
- (b) ``SimCLRViews(size).crops()`` in the loader (crop + flip only, uint8), then
  ``SimCLRViews(size).batched()`` (kornia) on each collated ``(B, 3, h, w)`` batch, where training runs
  (here the CPU: this machine has no GPU, so (b)'s photometry competes for the same cores).

Images are decoded beforehand and held in memory (decoding is the same in both paths): CIFAR-10 test
images at 32² (``../shared/data/cifar10``, toyworld 32² renders when absent), toyworld renders of side
``size · 8 / 7`` for 96² and 224² (110², 256²: the usual resize-then-crop margin). One process
(``DataLoader(num_workers=0)``), ``torch.set_num_threads(--threads)``; a loader with W workers would
multiply (a) and (b)'s loader part by up to W where W cores are free. Each measurement is a warm-up
batch, then ``--batches`` batches of ``--batch`` images; sizes and paths are measured round-robin,
``--repeats`` times, and the median is reported with the 1-minute load average before and after.

    python benchmarks/bench_views.py [--quick] [--threads 1] [--sizes 32,96,224] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import common  # first (and sorted first): it sets OMP_WAIT_POLICY before torch loads
import torch
from torch.utils.data import DataLoader, Dataset

from anydistill.data.classify import ClassFolderDataset
from anydistill.data.toyworld import render_sample
from anydistill.data.views import MultiViews, SimCLRViews, collate_views

CIFAR_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "test"


class InMemory(Dataset):
    """Pre-decoded uint8 ``(3, H, W)`` images, cycled to ``length`` items, through ``transform``."""

    def __init__(self, images: list[torch.Tensor], length: int, transform: MultiViews) -> None:
        self.images, self.length, self.transform = images, length, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {"image": self.transform(self.images[i % len(self.images)]), "id": str(i)}


def source_images(size: int, count: int) -> tuple[list[torch.Tensor], str]:
    """``count`` decoded images to crop ``size``² views from, and where they come from."""
    if size == 32 and CIFAR_TEST.is_dir():
        data = ClassFolderDataset(CIFAR_TEST)
        step = max(1, len(data) // count)
        return [data[i * step]["image"] for i in range(count)], "CIFAR-10 test, 32²"
    side = round(size * 8 / 7) if size > 32 else 32
    images = [
        torch.from_numpy(render_sample(i, seed=0, domain="wide", size=side)["image"])
        .permute(2, 0, 1)
        .contiguous()
        for i in range(count)
    ]
    return images, f"toyworld wide, {side}²"


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def run(images: list[torch.Tensor], size: int, path: str, batch: int, batches: int, device: str) -> dict:
    """One measurement: seconds for ``batches`` batches after a warm-up batch (path ``a`` or ``b``)."""
    views = SimCLRViews(size)
    transform = views if path == "a" else views.crops()
    augment = views.batched().to(device)
    loader = DataLoader(
        InMemory(images, batch * (batches + 1), transform), batch_size=batch, collate_fn=collate_views
    )
    load_before = load_average()
    start = tick = loader_s = cpu = 0.0
    for k, b in enumerate(loader):
        if k >= 1:  # batch 0 is the warm-up; the clock starts when it is done
            loader_s += time.perf_counter() - tick  # making batch k (crops, collate)
        out = [v.to(device) for v in b["views"]]
        if path == "b":
            out = augment(out)
        if device == "cuda":
            torch.cuda.synchronize()
        assert out[0].dtype == torch.float32 and out[0].shape == (batch, 3, size, size)
        tick = time.perf_counter()
        if k == 0:
            start, cpu = tick, time.process_time()
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return {"total_s": total, "loader_s": loader_s, "cpu_s": cpu, "load": (load_before + load_average()) / 2}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 timed batch per measurement, 3 repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: per-core figures)")
    parser.add_argument("--sizes", default="32,96,224")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=None, help="timed batches (default 2, quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="round-robin repeats (default 5, quick 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    batches = args.batches or (1 if args.quick else 2)
    repeats = args.repeats or (3 if args.quick else 5)
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    sources = {size: source_images(size, min(args.batch, 256)) for size in sizes}
    load_start = load_average()
    if load_start > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: load average {load_start:.2f}: other processes will slow every figure", file=sys.stderr
        )
    results: dict[str, list[dict]] = {f"{s}|{p}": [] for s in sizes for p in "ab"}
    for r in range(repeats):
        for size in sizes:
            for path in "ab":
                m = run(sources[size][0], size, path, args.batch, batches, args.device)
                results[f"{size}|{path}"].append(m)
                print(
                    f"repeat {r + 1}/{repeats} {size}² ({path}): {m['total_s']:.2f} s, load {m['load']:.2f}"
                )
    load_end = load_average()

    n = args.batch * batches
    header = [
        "views",
        "source",
        "(a) per-image v2 in loader, img/s",
        "(b) loader crops only, img/s",
        "(b) kornia on batch, img/s",
        "(b) total, img/s",
        "(b) / (a)",
        "(a) / (b) img per CPU-s",
        "load (min–max)",
    ]
    rows, data = [], []
    for size in sizes:
        a, b = results[f"{size}|a"], results[f"{size}|b"]
        rate_a = n / statistics.median(m["total_s"] for m in a)
        rate_b = n / statistics.median(m["total_s"] for m in b)
        rate_b_loader = n / statistics.median(m["loader_s"] for m in b)
        rate_b_aug = n / statistics.median(m["total_s"] - m["loader_s"] for m in b)
        cpu_a = n / statistics.median(m["cpu_s"] for m in a)
        cpu_b = n / statistics.median(m["cpu_s"] for m in b)
        loads = [m["load"] for m in a + b]
        rows.append(
            [
                f"SimCLR 2 × {size}²",
                sources[size][1],
                f"{rate_a:.0f}",
                f"{rate_b_loader:.0f}",
                f"{rate_b_aug:.0f}",
                f"{rate_b:.0f}",
                f"{rate_b / rate_a:.2f}×",
                f"{cpu_a:.0f} / {cpu_b:.0f}",
                f"{min(loads):.1f}–{max(loads):.1f}",
            ]
        )
        data.append(
            dict(
                size=size,
                source=sources[size][1],
                per_image_img_s=rate_a,
                batched_total_img_s=rate_b,
                batched_loader_img_s=rate_b_loader,
                batched_augment_img_s=rate_b_aug,
                per_image_img_per_cpu_s=cpu_a,
                batched_img_per_cpu_s=cpu_b,
                times_a_s=[m["total_s"] for m in a],
                times_b_s=[m["total_s"] for m in b],
                loads=loads,
            )
        )
    table = common.markdown_table(header, rows)
    note = (
        f"\n\nImages/s of source images (2 views each), batch {args.batch}, {batches} timed batch(es) after a "
        f"warm-up batch, median of {repeats} round-robin repeats; {torch.get_num_threads()} torch thread(s), "
        f"one process (DataLoader num_workers=0), (b)'s photometry on `{args.device}`. Blur p=0.5 from 96² "
        f"(none at 32², SimCLR's CIFAR setting). 1-minute load average at start/end: {load_start:.2f}/"
        f"{load_end:.2f} on {os.cpu_count()} cores (other jobs share this machine: wall-clock figures are lower "
        "bounds; images per CPU-second of this process are less sensitive to the load)."
    )
    print(table + note)
    command = " ".join(["python benchmarks/bench_views.py", *(argv if argv is not None else sys.argv[1:])])
    path = common.write_results(
        "views",
        table + note,
        {
            "rows": data,
            "batch": args.batch,
            "batches": batches,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "load_start": load_start,
            "load_end": load_end,
        },
        command,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
