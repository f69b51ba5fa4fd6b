"""Throughput of the teacher pass (read + teacher + fp16 shard writing) against the teacher's bare forward.

The teacher is ``depth_small`` (MobileNetV4-Conv-Medium + DPT, 8.4 M params, random weights) wrapped in
the teacher protocol, at 256² on toyworld images written to a temporary folder. "Bare forward" is
``teacher.predict`` on the same batches already decoded and in memory, in the layout the pass hands
the teacher (float ``(B, 3, H, W)`` in [0, 1], channels_last: the permuted HWC batch), under
``torch.inference_mode``; a row with contiguous NCHW batches shows what that layout is worth;
"pass" is the wall time of :func:`anydistill.cache.run_teacher_pass` into an empty folder: listing,
reading and hashing the files in DataLoader workers, the teacher, float16 conversion, tar shards with
their indexes (fsync'ed), and the manifest. Goal: pass >= 0.9 x bare. Runs alternate between the two
(so drift from other processes hits both), median of the repeats.

    python benchmarks/bench_teacher_pass.py [--quick] [--count 64] [--repeats 3] [--model depth_small]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import markdown_table, write_results
from torch import nn

from anydistill.cache import run_teacher_pass, writer
from anydistill.data.io import read_image
from anydistill.data.toyworld import write_toyworld
from anydistill.models import build_model

SIZE = 256


class ZooTeacher(nn.Module):
    """A zoo depth model in the teacher protocol: ``predict(images01) -> (B, 1, H, W)`` at the input size.

    The input side must be a multiple of the model's ``input_multiple`` (256 is, for the CNN models).
    """

    task = "depth"

    def __init__(self, name: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = build_model(name).eval()
        self.feature_dim = int(self.model.feature_channels[-1])
        h = hashlib.sha256(name.encode())
        for key, value in sorted(self.model.state_dict().items()):
            h.update(key.encode() + value.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        self.fingerprint = h.hexdigest()
        self.spec = f"zoo:{name} (random init)"

    @torch.no_grad()
    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        return self.model(self.model.normalize(images01))  # (B, 1, H, W)

    @torch.no_grad()
    def features(self, images01: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self.model.normalize(images01))[-1]  # (B, C, H/32, W/32)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bare_forward(teacher: ZooTeacher, batches: list[torch.Tensor], features: bool) -> tuple[float, float]:
    """(wall, CPU) seconds for ``predict`` (+ ``features``) over pre-decoded float batches."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    with torch.inference_mode():
        for x in batches:
            teacher.predict(x)
            if features:
                teacher.features(x)
    return time.perf_counter() - wall, cpu_seconds() - cpu


class TeacherClock:
    """Times the teacher calls inside the pass (``_BatchRunner.outputs``: uint8 batch to device,
    ``predict``/``features``, float16 on the CPU), so one run splits into teacher time and the rest.
    Both halves come from the same run, so the split survives other processes slowing the cores."""

    def __init__(self) -> None:
        self.seconds = 0.0
        inner = writer._BatchRunner.outputs

        def timed(runner: writer._BatchRunner, images: torch.Tensor) -> dict:
            start = time.perf_counter()
            try:
                return inner(runner, images)
            finally:
                self.seconds += time.perf_counter() - start

        writer._BatchRunner.outputs = timed  # type: ignore[method-assign]


CLOCK = TeacherClock()


def full_pass(
    teacher: ZooTeacher, images: Path, out: Path, batch: int, workers: int, features: bool
) -> tuple[float, float, float]:
    """(wall, CPU, teacher-inside-the-pass) seconds of a whole pass into an empty folder."""
    shutil.rmtree(out, ignore_errors=True)
    CLOCK.seconds = 0.0
    wall, cpu = time.perf_counter(), cpu_seconds()
    manifest = run_teacher_pass(
        teacher,
        images,
        out,
        batch_size=batch,
        shard_size=64,
        num_workers=workers,
        features=features,
        progress=False,
    )
    seconds = time.perf_counter() - wall, cpu_seconds() - cpu, CLOCK.seconds
    assert manifest.count == manifest.num_images and not manifest.unreadable
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 images, 1 timed repeat")
    parser.add_argument("--count", type=int, default=64, help="toyworld images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="depth_small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    args = parser.parse_args(argv)
    count, repeats = (32, 1) if args.quick else (args.count, args.repeats)
    torch.set_num_threads(args.threads)
    teacher = ZooTeacher(args.model)
    bs = args.batch_size
    configs = [  # (label, reader workers, features)
        ("pass, 2 reader workers", 2, False),
        ("pass, reading in the main process", 0, False),
        ("pass + features, 2 reader workers", 2, True),
    ]
    names = {
        "bare": "teacher bare forward (channels_last, as the pass gives it)",
        "bare NCHW": "teacher bare forward (contiguous NCHW batches)",
        "bare+features": "teacher bare forward + features()",
    }

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = root / "toy"
        write_toyworld(images, count=count, size=SIZE, domain="wide", seed=0, workers=2, progress=False)
        decoded = [torch.from_numpy(read_image(p)) for p in sorted((images / "images").glob("*.png"))]
        batches = [  # exactly what the pass hands the teacher: the permuted uint8 HWC batch, as float
            torch.stack(decoded[i : i + bs])
            .permute(0, 3, 1, 2)
            .float()
            .div(255)  # (B, 3, H, W) channels_last
            for i in range(0, len(decoded), bs)
        ]
        nchw = [b.contiguous() for b in batches]  # (B, 3, H, W) contiguous
        bare_forward(teacher, batches, features=True)  # warm-up (oneDNN primitives for every batch shape)
        bare_forward(teacher, nchw, features=False)
        full_pass(teacher, images, root / "cache", bs, 2, False)
        load_before = load_average()
        times: dict[str, list[tuple[float, ...]]] = {k: [] for k in names} | {c[0]: [] for c in configs}
        for _ in range(repeats):  # alternate, so drift from other processes hits every row alike
            times["bare"].append(bare_forward(teacher, batches, features=False))
            times["bare NCHW"].append(bare_forward(teacher, nchw, features=False))
            times["bare+features"].append(bare_forward(teacher, batches, features=True))
            for label, workers, features in configs:
                times[label].append(full_pass(teacher, images, root / "cache", bs, workers, features))
        load_after = load_average()

    wall = {k: count / statistics.median(t[0] for t in v) for k, v in times.items()}  # images/s
    cpu = {k: statistics.median(t[1] for t in v) / count for k, v in times.items()}  # CPU s/image
    # Share of the pass's wall time spent in the teacher call (median over repeats): 1 - overhead.
    share = {k: statistics.median(t[2] / t[0] for t in v) for k, v in times.items() if len(v[0]) > 2}
    header = [
        "what",
        "images/s (wall, median)",
        "vs bare (wall)",
        "vs bare (CPU time)",
        "teacher share of pass",
    ]
    rows: list[list[object]] = []
    data: list[dict[str, object]] = []
    for label in times:
        ref = "bare+features" if "features" in label else "bare"
        ratio_wall, ratio_cpu = wall[label] / wall[ref], cpu[ref] / cpu[label]
        name = names.get(label, label)
        inside = f"{share[label]:.1%}" if label in share else ""
        rows.append([name, f"{wall[label]:.1f}", f"{ratio_wall:.2f}×", f"{ratio_cpu:.2f}×", inside])
        data.append(
            {
                "what": name,
                "images_per_s_wall": wall[label],
                "cpu_s_per_image": cpu[label],
                "ratio_wall": ratio_wall,
                "ratio_cpu": ratio_cpu,
                "teacher_share_of_pass": share.get(label),
                "runs_seconds": times[label],
            }
        )
    table = markdown_table(header, rows)
    note = (
        f"\n\nTeacher `{args.model}` (random init) at {SIZE}², batch {bs}, {count} toyworld images, "
        f"{torch.get_num_threads()} torch threads, shards of 64, median of {repeats} alternating repeat(s). "
        "The pass includes listing, reading + sha256 of every file (in DataLoader workers), float16 "
        "conversion, tar shards + indexes (fsync) and the manifest; features rows compare with "
        "predict() + features() (the pass calls both). 'vs bare (CPU time)' = CPU time of the bare "
        "forward / CPU time of the pass (this process + its reaped workers). 'teacher share of pass' = "
        "time inside the teacher call (to device, predict/features, float16 to CPU) / wall time of the "
        "same pass: 1 - the pass's own overhead, measured within one run, so it survives other "
        "processes sharing the cores, which the between-run columns do not. 1-min load average "
        f"before/after: {load_before:.2f}/{load_after:.2f}."
    )
    print(table + note)
    command = "python benchmarks/bench_teacher_pass.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_results(
        "teacher_pass",
        table + note,
        {
            "rows": data,
            "model": args.model,
            "size": SIZE,
            "count": count,
            "batch_size": bs,
            "repeats": repeats,
            "load_before": load_before,
            "load_after": load_after,
        },
        command,
    )
    print(f"\nwritten: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
