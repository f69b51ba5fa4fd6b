"""Detection on toyworld: a teacher, the student from labels only, the student distilled from the teacher's
boxes, the focal-loss ablation and torchvision's Faster R-CNN MobileNetV3 peer, same data, size and steps.

Issue 14's protocol. Labeled images: toyworld ``narrow`` (rendered on the fly, ``--labeled`` images); the
teacher's unlabeled images: ``--unlabeled`` toyworld ``wide`` images written once to a folder; validation
(checkpoint choice): 128 ``wide`` images of the held-out seed; test: ``--test`` ``wide`` images of another
seed (``anydistill evaluate --data toyworld:wide --seed 1000``), COCO box mAP. Every row is one process
with ``--threads`` torch threads, through the product's own path (``api.train`` / ``api.distill`` /
``api.evaluate``); results are stored in ``_out/detection/<row>-s<seed>.json`` (resumable; ``--report``
rebuilds the table). Rows:

* ``teacher``: ``det_small`` on the labeled images, ``--teacher-steps`` (seed 0 only: one teacher);
* ``labels``: ``det_tiny`` on the labeled images, ``--steps``;
* ``distilled``: ``det_tiny`` on the labeled images plus the teacher's cached boxes on the unlabeled ones
  (``anydistill pseudo-label --task detect``; ``detect.pseudo_score`` 0.3, class-wise NMS 0.5), ``--steps``;
* ``labels+ce``, ``labels+ce_hard_negatives``: ``labels`` with plain / hard-negative-mined cross-entropy
  instead of the focal loss (the seeds' claim);
* ``frcnn_mnv3``: torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` without weights, on the labeled
  images (registered in this process as a zoo model, so it trains through the same path).

Latency (``--latency``): batch-1 forward + post-processing at the input size, round-robin over the rows'
networks in one process, threads pinned (on a quiet machine).

    python benchmarks/bench_detection.py [--rows teacher labels distilled ...] [--seeds 0,1] [--threads 2]
        [--size 256] [--steps 600] [--teacher-steps 1500] [--latency] [--report] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common  # first: it sets OMP_WAIT_POLICY before torch loads
import torch

REPO = Path(__file__).resolve().parents[1]
STATE = Path(__file__).resolve().parent / "_out" / "detection"
ROWS = ("teacher", "labels", "distilled", "labels+ce", "labels+ce_hard_negatives", "frcnn_mnv3")
TEST_SEED = 1000  # evaluate(seed=1000): renders seeds disjoint from training (0) and validation (offset)


# ------------------------------------------------------------------------------------------- peer
def register_peer() -> None:
    """``frcnn_mnv3``: torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` (no weights) as a zoo model,
    behind anydistill's detector convention (labels 0 … K-1 in, out; the data pipeline resizes)."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    from anydistill.models.detection import DetectionModel, _AsIsTransform
    from anydistill.models.zoo import MODELS

    if "frcnn_mnv3" in MODELS.names():
        return

    def frcnn_mnv3(num_classes: int = 21, input_size: int = 512, pretrained: bool = False,
                   checkpoint_path: str | None = None, **_: Any) -> DetectionModel:  # fmt: skip
        """torchvision fasterrcnn_mobilenet_v3_large_fpn, random initialisation."""
        net = fasterrcnn_mobilenet_v3_large_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1
        )
        t = net.transform
        net.transform = _AsIsTransform(input_size, input_size, t.image_mean, t.image_std, size_divisible=32)
        model = DetectionModel(net, "faster_rcnn", num_classes, input_size, [])
        if checkpoint_path:
            from anydistill.models.zoo import load_model_weights

            load_model_weights(model, checkpoint_path)
        return model

    MODELS.register("frcnn_mnv3")(frcnn_mnv3)


# ------------------------------------------------------------------------------------------- runs
def base_overrides(args: argparse.Namespace) -> list[str]:
    return ["task=detect", "data.source=toyworld", "data.train_domain=narrow", "data.val_domain=wide",
            f"data.train_count={args.labeled}", f"data.val_count={16 if args.quick else 128}",
            f"data.image_size={args.size}", f"data.batch_size={args.batch}", "data.num_workers=1",
            "trainer.max_epochs=-1", "trainer.val_every_n_epochs=1", "trainer.progress_bar=false",
            f"trainer.log_every_n_steps={max(1, min(10, args.steps // 4))}"]  # fmt: skip


def child(spec: dict) -> dict:
    """One row and seed: train (or distill), then the test evaluation, in this fresh process."""
    torch.set_num_threads(spec["threads"])
    register_peer()
    from anydistill import api

    row, seed = spec["row"], spec["seed"]
    model = {"teacher": "det_small", "frcnn_mnv3": "frcnn_mnv3"}.get(row, "det_tiny")
    overrides = [*spec["base"], f"run_dir={spec['run_dir']}", f"seed={seed}", f"model.name={model}",
                 f"trainer.max_steps={spec['steps']}"]  # fmt: skip
    if "+" in row:
        overrides.append(f"detect.classification_loss={row.split('+', 1)[1]}")
    start = time.perf_counter()
    if row == "distilled":
        result = api.distill(None, [*overrides, f"distill.cache={spec['cache']}"])
    else:
        result = api.train(None, overrides)
    seconds = time.perf_counter() - start
    test = api.evaluate(result.best_checkpoint, "toyworld:wide", count=spec["test_count"], seed=TEST_SEED,
                        progress=False)  # fmt: skip
    return {**spec, "test": test, "val": result.metrics, "train_seconds": seconds,
            "checkpoint": str(result.best_checkpoint), "load": os.getloadavg()[0]}  # fmt: skip


def run(spec: dict) -> dict:
    key = spec["row"].replace("+", "_")
    path = STATE / f"{key}-s{spec['seed']}{'-quick' if spec['quick'] else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def compute() -> dict:
        run_dir = path.with_suffix("")
        shutil.rmtree(run_dir, ignore_errors=True)
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "run_dir": str(run_dir)})],
                              cwd=REPO, capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{spec['row']} seed {spec['seed']} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    return common.cached_result(path, spec, ("row", "seed", "steps", "base", "threads"), compute)


def teacher_cache(teacher: dict, args: argparse.Namespace) -> Path:
    """The teacher's boxes on the unlabeled images, cached once (resumes; a finished cache returns at once)."""
    from anydistill.cache import run_teacher_pass
    from anydistill.data.toyworld import write_toyworld
    from anydistill.teachers import load_teacher

    suffix = "-quick" if args.quick else ""
    images = STATE / f"unlabeled{suffix}"
    if not (images / "done").exists():
        shutil.rmtree(images, ignore_errors=True)
        write_toyworld(images, count=args.unlabeled, size=args.size, domain="wide", seed=9200, progress=False)
        (images / "done").write_text("")
    cache = STATE / f"cache{suffix}"
    run_teacher_pass(load_teacher(teacher["checkpoint"]), images, cache, num_workers=1, progress=False)
    return cache


# ------------------------------------------------------------------------------------------- latency
def latency(results: list[dict], size: int, threads: int, rounds: int) -> dict:
    """Batch-1 forward (with post-processing) at ``size``², one round-robin loop over one trained network per row."""
    from anydistill.bench.timing import round_robin
    from anydistill.loading import load_model

    torch.set_num_threads(threads)
    register_peer()
    x = torch.rand(1, 3, size, size)
    calls, params = {}, {}
    for r in results:
        if r["row"] in calls or "+" in r["row"]:
            continue
        model = load_model(r["checkpoint"]).model.eval()
        params[r["row"]] = sum(p.numel() for p in model.parameters()) / 1e6

        def call(model=model):
            with torch.inference_mode():
                return model(x)

        calls[r["row"]] = call
    timings = round_robin(calls, rounds=rounds, warmup=2)
    return {row: {"ms": timings[row].median_ms, "params_m": params[row]} for row in calls}


# ------------------------------------------------------------------------------------------- report
def report(results: list[dict], lat: dict, args: argparse.Namespace) -> str:
    header = ["row", "model", "params (M)", f"ms @ {args.size}², batch 1", "test mAP", "test mAP50",
              "val mAP", "train s", "seeds"]  # fmt: skip
    rows = []
    for row in args.rows:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        t = lat.get(row, {})
        model = {"teacher": "det_small", "frcnn_mnv3": "torchvision Faster R-CNN MobileNetV3-FPN"}.get(
            row, "det_tiny"
        )
        rows.append([f"`{row}`", model, f"{t['params_m']:.2f}" if t else "–", f"{t['ms']:.1f}" if t else "–",
                     common.mean_sd([r["test"]["map"] for r in runs]), common.mean_sd([r["test"]["map_50"] for r in runs]),
                     common.mean_sd([r["val"]["val/map"] for r in runs]),
                     ", ".join(f"{r['train_seconds']:.0f}" for r in runs), ", ".join(str(r["seed"]) for r in runs)])  # fmt: skip
    table = common.markdown_table(header, rows)
    teacher = [r["test"]["map"] for r in results if r["row"] == "teacher"]
    distilled = [r["test"]["map"] for r in results if r["row"] == "distilled"]
    lines = [table, ""]
    if teacher and distilled:
        ratio = statistics.mean(distilled) / max(statistics.mean(teacher), 1e-9)
        speed = lat.get("teacher", {}).get("ms", float("nan")) / lat.get("distilled", {}).get(
            "ms", float("nan")
        )
        lines.append(f"Distilled student: {ratio:.0%} of the teacher's test mAP, {speed:.1f}× its speed.")
    loads = [r["load"] for r in results] or [float("nan")]
    lines.append(f"Toyworld at {args.size}²: {args.labeled} labeled narrow images, {args.unlabeled} unlabeled wide "
                 f"images (teacher's boxes), {args.test} test wide images (seed {TEST_SEED}); students {args.steps} "
                 f"steps, teacher {args.teacher_steps}, batch {args.batch}; mean ± sample SD over seeds. 1-minute "
                 f"load at the end of the runs {min(loads):.1f}–{max(loads):.1f} (quality does not depend on it).")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--labeled", type=int, default=600)
    parser.add_argument("--unlabeled", type=int, default=1200)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--latency-rounds", type=int, default=7)
    parser.add_argument("--report", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny sizes and budgets, no results file"
    )
    parser.add_argument("--name", default="detection")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        args.size, args.labeled, args.unlabeled, args.test, args.steps, args.teacher_steps = (
            64,
            16,
            8,
            8,
            3,
            3,
        )
        args.batch = 4
    base = base_overrides(args)
    spec0 = {"threads": args.threads, "quick": args.quick, "base": base, "test_count": args.test}
    results: list[dict] = []

    def go(row: str, seed: int, **extra: Any) -> dict | None:
        spec = {
            **spec0,
            "row": row,
            "seed": seed,
            "steps": args.teacher_steps if row == "teacher" else args.steps,
            **extra,
        }
        key = STATE / f"{row.replace('+', '_')}-s{seed}{'-quick' if args.quick else ''}.json"
        if args.report and not key.exists():
            return None
        start = time.perf_counter()
        r = run(spec)
        results.append(r)
        print(f"{row} seed {seed}: test mAP {r['test']['map']:.3f} (mAP50 {r['test']['map_50']:.3f}, "
              f"{time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        return r

    teacher = go("teacher", 0) if "teacher" in args.rows or "distilled" in args.rows else None
    for seed in [int(s) for s in args.seeds.split(",")]:
        for row in args.rows:
            if row == "teacher":
                continue
            if row == "distilled":
                if teacher is None:
                    continue
                go(row, seed, cache=str(teacher_cache(teacher, args)))
            else:
                go(row, seed)
    lat_path = STATE / f"latency{'-quick' if args.quick else ''}.json"
    if args.latency and results:
        before = os.getloadavg()[0]
        lat = latency(results, args.size, args.threads, 2 if args.quick else args.latency_rounds)
        lat = {row: {**t, "load": [before, os.getloadavg()[0]]} for row, t in lat.items()}
        lat_path.write_text(json.dumps(lat, indent=1))
    lat = json.loads(lat_path.read_text()) if lat_path.exists() else {}
    table = report(results, lat, args)
    print(table)
    if not args.quick:
        command = (f"python benchmarks/bench_detection.py --rows {' '.join(args.rows)} --seeds {args.seeds} "
                   f"--threads {args.threads} --size {args.size} --steps {args.steps} --teacher-steps {args.teacher_steps}")  # fmt: skip
        common.write_results(args.name, table, {"runs": results, "latency": lat}, command)


if __name__ == "__main__":
    main()
