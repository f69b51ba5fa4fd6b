"""Peak memory and time of ``anydistill predict`` on large photos: the streaming code against the code before it.

For each student (a tiny depth student and a tiny 21-class semantic student, random weights, saved as
training saves them) and each photo size (a procedural JPEG written to a temporary folder), one
``anydistill predict`` process per measurement, run under GNU ``/usr/bin/time`` for its peak RSS (the
whole process: torch, the model, everything); its wall time comes from this script. The code before the
change runs from a git worktree of ``--old-ref`` (``PYTHONPATH=<worktree>/src``), created for the run and
removed after it. Both runs' outputs are compared (depth: largest difference relative to the largest
disparity; semantic: the share of differing class ids).

The old code needs about 155 bytes per input pixel for depth and 105 for a 21-class semantic student
(16.7 GB and 11.3 GB for 12000 x 9000): it is run on a size only when the machine has that much memory
available and 1 GB to spare, and every child volunteers to be the
out-of-memory killer's first pick (``oom_score_adj`` 1000), so a neighbour's process is never the one
stopped; the table says when the old run was skipped or killed.

    python benchmarks/bench_predict_memory.py [--sizes 4000x3000,12000x9000] [--image-size 512]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import markdown_table, write_results
from PIL import Image

from anydistill.data.classes import ClassInfo
from anydistill.loading import model_record
from anydistill.models import build_model

REPO = Path(__file__).resolve().parents[1]


def old_bytes_per_pixel(task: str, num_classes: int) -> int:
    """What the code before streaming needed per input pixel (measured at 12000 x 9000: depth 16.7 GB,
    21-class semantic 11.3 GB), with a margin: float32 logits of every class, float64 colour maps."""
    return 160 if task == "depth" else 4 * num_classes + 30


SPARE_BYTES = 1 << 30
TIME = "/usr/bin/time"  # GNU time: the peak RSS of exactly one process tree


def save_student(task: str, path: Path, size: int, num_classes: int) -> Path:
    """An untrained ``depth_tiny`` / ``seg_tiny`` saved as training saves a student (tests/tiny_students.py)."""
    torch.manual_seed(0)
    if task == "depth":
        model, classes = build_model("depth_tiny"), ClassInfo()
        arch = {"model_name": "depth_tiny", "model_kwargs": {}, "num_classes": None}
    else:
        model = build_model("seg_tiny", num_classes=num_classes)
        classes = ClassInfo([f"class{i}" for i in range(num_classes)])
        arch = {"model_name": "seg_tiny", "model_kwargs": {}, "num_classes": num_classes}
    record = model_record(task, model.preprocess_spec(size), arch, classes)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path


def write_photo(path: Path, height: int, width: int) -> Path:
    """A procedural photo-like JPEG (smooth gradients, a checkerboard, noise), made in strips of rows."""
    image = np.empty((height, width, 3), np.uint8)
    x = np.arange(width, dtype=np.float32)
    rng = np.random.default_rng(0)
    for y0 in range(0, height, 500):
        y = np.arange(y0, min(height, y0 + 500), dtype=np.float32)[:, None]
        strip = np.stack(
            [np.sin(x / 300 + y / 500), np.cos(x / 700 - y / 200), (x // 400 + y // 400) % 2 - 0.5], -1
        )  # (b, W, 3)
        strip = 127 + 100 * strip + rng.normal(0, 8, strip.shape)
        image[y0 : y0 + len(y)] = strip.clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=90)
    return path


def _first_to_go() -> None:
    """In the child: be the process the kernel's out-of-memory killer picks first (not a neighbour's)."""
    Path("/proc/self/oom_score_adj").write_text("1000")


def run_predict(src: Path, checkpoint: Path, images: Path, out: Path, image_size: int) -> dict | None:
    """One ``anydistill predict`` child with ``PYTHONPATH=src``: its peak RSS (bytes) and wall seconds;
    None if the out-of-memory killer stopped it.

    The peak comes from GNU time (``%M``), whose own child is the measured process: a child forked
    straight from this (large) benchmark process would report this process's high-water mark when it is
    larger (Linux carries the forking process's peak into the child's ``ru_maxrss`` across ``exec``).
    """
    env = {**os.environ, "PYTHONPATH": str(src)}
    report = out.parent / f"{out.name}.time"
    cmd = [TIME, "-f", "%M", "-o", str(report), sys.executable, "-m", "anydistill.cli", "predict",
           "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
           "--size", str(image_size)]  # fmt: skip
    log = out.parent / f"{out.name}.log"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=out.parent, preexec_fn=_first_to_go
        )
    seconds = time.perf_counter() - start
    measured = report.read_text()
    if "signal 9" in measured:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{log.read_text()[-2000:]}")
    peak_kb = int(measured.strip().splitlines()[-1])
    return {"peak_rss_bytes": peak_kb * 1024, "seconds": seconds, "load_before": load}


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def compare(task: str, old: Path, new: Path) -> str:
    """How far the new outputs are from the old ones."""
    Image.MAX_IMAGE_PIXELS = None  # this run's own 108 Mpx masks: no decompression-bomb warning
    if task == "depth":
        a, b = np.load(old / "raw" / "photo.npy"), np.load(new / "raw" / "photo.npy")
        return f"max rel. diff {np.abs(a - b).max() / max(np.abs(a).max(), 1e-12):.1e}"
    a = np.asarray(Image.open(old / "masks" / "photo.png"))
    b = np.asarray(Image.open(new / "masks" / "photo.png"))
    return f"{(a != b).mean() * 100:.4f}% ids differ"


def ensure_worktree(ref: str, path: Path) -> bool:
    """A worktree of ``ref`` at ``path``; True when this run created it (and removes it)."""
    if (path / "src" / "anydistill").is_dir():
        return False
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)  # fmt: skip
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="4000x3000,12000x9000", help="photo sizes, WIDTHxHEIGHT, comma-separated"
    )
    parser.add_argument("--image-size", type=int, default=512, help="the students' input size (long side)")
    parser.add_argument("--classes", type=int, default=21, help="classes of the semantic student")
    parser.add_argument("--old-ref", default="bb4ee3e", help="the commit before streaming")
    parser.add_argument("--old-worktree", type=Path, default=Path("/tmp/anydistill_old"))
    parser.add_argument("--skip-old", action="store_true", help="measure the new code only")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]

    created = False if args.skip_old else ensure_worktree(args.old_ref, args.old_worktree)
    rows, records = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="bench_predict_memory_") as tmp:
            tmp = Path(tmp)
            students = {
                task: save_student(task, tmp / f"{task}.ckpt", args.image_size, args.classes)
                for task in ("depth", "semantic")
            }
            for width, height in sizes:
                images = tmp / f"images_{width}x{height}"
                write_photo(images / "photo.jpg", height, width)
                for task, ckpt in students.items():
                    record = {
                        "student": task,
                        "width": width,
                        "height": height,
                        "image_size": args.image_size,
                    }
                    new_out = tmp / f"new_{task}_{width}x{height}"
                    record["new"] = run_predict(REPO / "src", ckpt, images, new_out, args.image_size)
                    need = old_bytes_per_pixel(task, args.classes) * width * height + SPARE_BYTES
                    if args.skip_old:
                        record["old"], match = None, "old not run"
                    elif available_bytes() < need:
                        record["old"] = None
                        match = f"old skipped: needs ~{need / 1e9:.0f} GB, {available_bytes() / 1e9:.0f} GB available"
                    else:
                        old_out = tmp / f"old_{task}_{width}x{height}"
                        record["old"] = run_predict(
                            args.old_worktree / "src", ckpt, images, old_out, args.image_size
                        )
                        match = (
                            compare(task, old_out, new_out) if record["old"] else "old killed: out of memory"
                        )
                        shutil.rmtree(old_out, ignore_errors=True)
                    shutil.rmtree(new_out)
                    record["outputs"] = match
                    records.append(record)
                    old, new = record["old"], record["new"]
                    rows.append([
                        task, f"{width}×{height} ({width * height / 1e6:.1f} Mpx)", f"{args.image_size}",
                        f"{old['peak_rss_bytes'] / 1e9:.2f}" if old else "—", f"**{new['peak_rss_bytes'] / 1e9:.2f}**",
                        f"{old['seconds']:.1f}" if old else "—", f"{new['seconds']:.1f}", match,
                    ])  # fmt: skip
                    print(json.dumps(record), flush=True)
                shutil.rmtree(images)
    finally:
        if created:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(args.old_worktree)],
                           check=False, capture_output=True)  # fmt: skip
    header = ["student", "photo", "model input", "peak RSS old (GB)", "peak RSS new (GB)", "seconds old",
              "seconds new", "outputs new vs old"]  # fmt: skip
    table = markdown_table(header, rows)
    print(table)
    command = "python benchmarks/bench_predict_memory.py " + " ".join(sys.argv[1:])
    write_results("predict_memory", table, {"runs": records, "old_ref": args.old_ref}, command.strip())


if __name__ == "__main__":
    main()
