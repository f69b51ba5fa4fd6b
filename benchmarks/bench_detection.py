"""Detection on toyworld: a teacher, the student from labels only, the student distilled from the teacher's
boxes, the focal-loss ablation and torchvision's Faster R-CNN MobileNetV3 peer, same data, size and steps.

Issue 14's protocol. Labeled images: toyworld ``narrow`` (rendered on the fly, ``--labeled`` images); the
teacher's unlabeled images: ``--unlabeled`` toyworld ``wide`` images written once to a folder; validation
(checkpoint choice): 128 ``wide`` images of the held-out seed; test: ``--test`` ``wide`` images of another
seed (``anydistill evaluate --data toyworld:wide --seed 1000``), COCO box mAP. Every row is one process
with ``--threads`` torch threads, through the product's own path (``api.train`` / ``api.distill`` /
``api.evaluate``); results are stored in ``_out/detection/<row>-s<seed>.json`` (resumable; ``--report``
rebuilds the table). Rows:

* ``teacher``: ``det_small`` on its own ``--teacher-labeled`` ``wide`` images, ``--teacher-steps`` (seed 0
  only: one teacher). As in the depth demo, the teacher stands for a big model trained on much more, and
  wider, labeled data than the user has; a teacher trained on the user's ``narrow`` labels could not teach
  the kinds those labels never show (``narrow`` has 3 of the 5 object kinds);
* ``labels``: ``det_tiny`` on the labeled images, ``--steps``;
* ``distilled``: ``det_tiny`` on the labeled images plus the teacher's cached boxes on the unlabeled ones
  (``anydistill pseudo-label --task detect``; ``detect.pseudo_score`` 0.3, class-wise NMS 0.5), ``--steps``;
* ``labels+ce``, ``labels+ce_hard_negatives``: ``labels`` with plain / hard-negative-mined cross-entropy
  instead of the focal loss (the seeds' claim);
* ``frcnn_mnv3``: torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` without weights, on the labeled
  images (registered in this process as a zoo model, so it trains through the same path);
* ``yolov8n``: ultralytics' YOLOv8n from ``yolov8n.yaml`` (random initialisation), trained by ultralytics'
  own trainer and recipe (its augmentation, optimiser choice and schedule: a peer is run the way its users
  run it) on the same labeled images written once in YOLO format, for the same number of optimiser steps
  (epochs = ⌈steps × batch / labeled⌉), the checkpoint chosen on the same validation images, scored by the
  same COCO mAP code on the same test images. A benchmark peer only: ``pip install ultralytics`` to run
  the row (AGPL; never a dependency of anydistill); without it the row is skipped with a message.

A run killed part-way resumes from its own ``last.ckpt`` when started again with the same settings.

Latency (``--latency``): batch-1 forward + post-processing at the input size, round-robin over the rows'
networks in one process, threads pinned (on a quiet machine).

    python benchmarks/bench_detection.py [--rows teacher labels distilled ...] [--seeds 0,1] [--threads 2]
        [--size 256] [--steps 600] [--teacher-steps 1500] [--latency] [--report] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
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
ROWS = ("teacher", "labels", "distilled", "labels+ce", "labels+ce_hard_negatives", "frcnn_mnv3", "yolov8n")
TEST_SEED = 1000  # evaluate(seed=1000): renders seeds disjoint from training (0) and validation (offset)
TEACHER_DATA_SEED = 7000  # the teacher's own wide labeled images (the students' labeled images: seed 0, 1)


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
#: what makes a stored run the same run (``cache``: a distilled row's teacher cache, named by its teacher)
RUN_SETTINGS = ("row", "seed", "steps", "base", "threads", "teacher_labeled", "cache")


def base_overrides(args: argparse.Namespace) -> list[str]:
    return ["task=detect", "data.source=toyworld", "data.train_domain=narrow", "data.val_domain=wide",
            f"data.train_count={args.labeled}", f"data.val_count={16 if args.quick else 128}",
            f"data.image_size={args.size}", f"data.batch_size={args.batch}", "data.num_workers=1",
            "trainer.max_epochs=-1", "trainer.val_every_n_epochs=1", "trainer.progress_bar=false",
            f"trainer.log_every_n_steps={max(1, min(10, args.steps // 4))}"]  # fmt: skip


def child(spec: dict) -> dict:
    """One row and seed: train (or distill), then the test evaluation, in this fresh process."""
    torch.set_num_threads(spec["threads"])
    if spec["row"] == "yolov8n":
        return yolo_child(spec)
    register_peer()
    from anydistill import api

    row, seed = spec["row"], spec["seed"]
    model = {"teacher": "det_small", "frcnn_mnv3": "frcnn_mnv3"}.get(row, "det_tiny")
    overrides = [*spec["base"], f"run_dir={spec['run_dir']}", f"seed={seed}", f"model.name={model}",
                 f"trainer.max_steps={spec['steps']}"]  # fmt: skip
    if "+" in row:
        overrides.append(f"detect.classification_loss={row.split('+', 1)[1]}")
    if row == "teacher":
        # its own wide labeled images; the run seed fixes the scenes, so the teacher's seed is its data's
        overrides += ["data.train_domain=wide", f"data.train_count={spec['teacher_labeled']}",
                      f"seed={TEACHER_DATA_SEED}"]  # fmt: skip
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
        settings = run_dir / "settings.json"
        same = {k: spec.get(k) for k in RUN_SETTINGS}
        if not settings.exists() or json.loads(settings.read_text()) != same:
            shutil.rmtree(run_dir, ignore_errors=True)  # another setting: start again
            run_dir.mkdir(parents=True)
            settings.write_text(json.dumps(same))
        # else: the same run killed part-way resumes from its last.ckpt (api.train / ultralytics' resume)
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "run_dir": str(run_dir)})],
                              cwd=REPO, capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{spec['row']} seed {spec['seed']} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    return common.cached_result(path, spec, RUN_SETTINGS, compute)


def ultralytics_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ultralytics") is not None


def yolo_dataset(spec: dict, root: Path) -> Path:
    """The row's labeled (``narrow``, run seed) and validation (``wide``, held-out seed) images in YOLO's
    folder format (``images/<split>/*.png``, ``labels/<split>/*.txt`` of ``class cx cy w h`` in [0, 1]),
    the same scenes and boxes (``detect.min_area``'s default, 16 px) as the product's data module renders;
    written once."""
    from PIL import Image

    from anydistill.data.detection import ToyWorldDetection
    from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET

    values = dict(o.split("=", 1) for o in spec["base"])
    size, count, val_count = (
        int(values["data.image_size"]),
        int(values["data.train_count"]),
        int(values["data.val_count"]),
    )
    seed = spec["seed"]
    done = root / "done"
    if done.exists():
        return root / "data.yaml"
    shutil.rmtree(root, ignore_errors=True)
    splits = {"train": ToyWorldDetection("narrow", size, count, seed=seed),
              "val": ToyWorldDetection("wide", size, val_count, seed=seed + TOYWORLD_HELDOUT_SEED_OFFSET)}  # fmt: skip
    for split, source in splits.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(len(source)):
            record = source[i]
            h, w = record.image.shape[:2]
            Image.fromarray(record.image).save(root / "images" / split / f"{i:06d}.png")
            lines = [f"{label} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                     f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
                     for b, label in zip(record.boxes, record.labels, strict=True)]  # fmt: skip
            (root / "labels" / split / f"{i:06d}.txt").write_text("\n".join(lines))
    names = list(ToyWorldDetection.classes)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {names}\n")
    done.write_text("")
    return root / "data.yaml"


def yolo_predict(model: Any, image: Any, size: int) -> dict:
    """One image's detections from an ultralytics model, as torchmetrics takes them (COCO protocol:
    every detection down to score 0.001, at most 100, NMS IoU 0.7: ultralytics' own validation settings)."""
    from PIL import Image

    result = model.predict(Image.fromarray(image), imgsz=size, conf=0.001, iou=0.7, max_det=100,
                           device="cpu", verbose=False)[0].boxes  # fmt: skip
    return {"boxes": result.xyxy.float().cpu(), "scores": result.conf.float().cpu(),
            "labels": result.cls.long().cpu()}  # fmt: skip


def yolo_child(spec: dict) -> dict:
    """The ``yolov8n`` row: ultralytics' trainer on the row's data, then the same test as the other rows."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update or hub checks (nothing outside is reachable)
    try:
        from ultralytics import YOLO
    except ImportError:
        raise SystemExit("the yolov8n row needs ultralytics: pip install ultralytics") from None
    from anydistill.eval.detection import DetectionMetrics, detection_eval_source, source_target

    values = dict(o.split("=", 1) for o in spec["base"])
    size, batch, count = (
        int(values["data.image_size"]),
        int(values["data.batch_size"]),
        int(values["data.train_count"]),
    )
    run_dir = Path(spec["run_dir"])
    data = yolo_dataset(spec, STATE / f"yolo-data-s{spec['seed']}{'-quick' if spec['quick'] else ''}")
    epochs = max(1, -(-spec["steps"] * batch // count))
    last = run_dir / "train" / "weights" / "last.pt"
    start = time.perf_counter()
    if last.exists():  # killed part-way: ultralytics resumes its own run
        try:
            YOLO(str(last)).train(resume=True)
        except AssertionError as e:  # killed after its last epoch (in the test): nothing left to train
            if "nothing to resume" not in str(e):
                raise
    else:
        YOLO("yolov8n.yaml").train(
            data=str(data), epochs=epochs, imgsz=size, batch=batch, workers=1, device="cpu", seed=spec["seed"],
            deterministic=True, pretrained=False, amp=False, plots=False, verbose=False,
            project=str(run_dir), name="train", exist_ok=True,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    best = run_dir / "train" / "weights" / "best.pt"
    model = YOLO(str(best))
    source = detection_eval_source("toyworld:wide", size, spec["test_count"], TEST_SEED)
    metrics = DetectionMetrics(class_metrics=True, class_names=list(source.classes))
    for k in range(len(source)):
        record = source[k]
        metrics.metric.update([yolo_predict(model, record.image, size)], [source_target(record)])
    csv = (run_dir / "train" / "results.csv").read_text().splitlines()
    header = [h.strip() for h in csv[0].split(",")]
    maps = [float(line.split(",")[header.index("metrics/mAP50-95(B)")]) for line in csv[1:]]
    return {**spec, "test": metrics.compute(), "val": {"val/map": max(maps), "epochs": epochs},
            "train_seconds": seconds, "checkpoint": str(best), "load": os.getloadavg()[0]}  # fmt: skip


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
    # one cache per teacher (its settings name the folder): a retrained teacher never meets an old cache
    key = hashlib.sha256(json.dumps({k: teacher.get(k) for k in RUN_SETTINGS}, sort_keys=True).encode())
    cache = STATE / f"cache-{key.hexdigest()[:10]}{suffix}"
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
        if r["row"] == "yolov8n":
            from ultralytics import YOLO

            yolo = YOLO(r["checkpoint"])
            params[r["row"]] = sum(p.numel() for p in yolo.model.parameters()) / 1e6
            image = (x[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy()
            calls[r["row"]] = lambda yolo=yolo, image=image: yolo_predict(yolo, image, size)
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
        model = {
            "teacher": "det_small",
            "frcnn_mnv3": "torchvision Faster R-CNN MobileNetV3-FPN",
            "yolov8n": "ultralytics YOLOv8n (its trainer)",
        }.get(row, "det_tiny")
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
                 f"images (teacher's boxes), {args.test} test wide images (seed {TEST_SEED}); the teacher learned from "
                 f"{args.teacher_labeled} labeled wide images of its own; students {args.steps} "
                 f"steps, teacher {args.teacher_steps}, batch {args.batch}; mean ± sample SD over seeds; YOLOv8n's "
                 f"val mAP is ultralytics' own (its trainer chose its checkpoint), its test mAP the same code as the others'. 1-minute "
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
    parser.add_argument(
        "--teacher-labeled", type=int, default=2000, help="the teacher's own wide labeled images"
    )
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
        args.teacher_labeled = 16
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
            **({"teacher_labeled": args.teacher_labeled} if row == "teacher" else {}),
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
            elif row == "yolov8n" and not ultralytics_available():
                print("yolov8n: skipped (pip install ultralytics to run this peer row)", flush=True)
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
                   f"--threads {args.threads} --size {args.size} --steps {args.steps} --teacher-steps {args.teacher_steps} "
                   f"--teacher-labeled {args.teacher_labeled}")  # fmt: skip
        common.write_results(args.name, table, {"runs": results, "latency": lat}, command)


if __name__ == "__main__":
    main()
