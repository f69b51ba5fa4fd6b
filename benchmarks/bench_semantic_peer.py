"""The semantic zoo against segmentation_models_pytorch's U-Net and FPN, same data, budget and evaluation.

Every row is one network trained by the product's own path, ``anydistill.api.train`` with the same
config: the same data module, augmentation (random resized crop + flip), loss (CE + dice as set),
AdamW, warm-up + cosine schedule, step budget, checkpoint choice on the validation split, and the same
``anydistill.api.evaluate`` on a test split nothing looked at before. The peer networks are smp's
(``benchmarks/peer_models.py`` registers them; random initialisation everywhere, since no weights can be
downloaded). Rows:

* ``seg_tiny``, ``seg_small``: the zoo;
* ``smp_unet:resnet18``, ``smp_fpn:resnet18``, ``smp_unet:mobilenet_v2``, ...: smp ``<arch>:<encoder>``;
* any row may end in ``+key=value`` config overrides (``seg_tiny+optim.lr=0.006``, ``seg_tiny+loss.dice_weight=0``,
  ``seg_tiny+model.kwargs.fpn_channels=64``): the ablations run through the same code.

Sets (each split once, fixed, before any training):

* ``em``: ``../shared/data/em-membranes`` (30 ISBI-2012 slices, 512²) imported as the README does
  (``anydistill data import --holdout 6 --test 6``): 18 train, 6 validation, 6 test; trained with
  ``configs/semantic_em_membranes.yaml`` (256² crops, 60 epochs = 135 steps of batch 8), evaluated on
  whole slices at 512²;
* ``toyworld``: rendered toyworld ``wide`` scenes at 128² (9 classes): 1,000 train, 128 validation,
  256 test, three disjoint seeds; batch 16, ``--toyworld-steps`` steps, validated every 2 epochs.

Budgets are steps (same for every row), so the quality figures depend only on the settings and seed, not
on how busy the machine is. ``--minutes M`` instead gives every row the same wall-clock budget (``M``
minutes of training, the warm-up + cosine schedule fitted to the steps the measured step time allows,
validation as the set's config says): quality per CPU-minute, which does depend on the machine's load
(recorded with each run; run it with the other jobs paused). Its runs are stored apart (``-m<M>``). Every (set, row, seed) runs in a fresh process with ``--threads`` torch
threads; its result is stored in ``_out/semantic_peer/<set>/<key>.json`` (atomically) and reused when the
script is run again, so the benchmark can be stopped and continued, or its table rebuilt (``--report``).
Latency (batch 1, the set's evaluation size, ``torch.inference_mode``, channels_last as
``anydistill predict`` runs convolutional students) is measured with ``--latency`` (on a quiet machine,
apart from the training runs) round-robin over the rows in one process with threads pinned, and stored
beside the runs with the load average seen.

    python benchmarks/bench_semantic_peer.py [--sets em,toyworld] [--rows seg_tiny smp_unet:resnet18 ...]
        [--seeds 0,1] [--threads 2] [--toyworld-steps 600] [--latency] [--report] [--quick] [--name semantic_peer]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # first: it sets OMP_WAIT_POLICY before torch loads
import peer_models
import torch

REPO = Path(__file__).resolve().parents[1]
EM = REPO.parent / "shared" / "data" / "em-membranes"
STATE = Path(__file__).resolve().parent / "_out" / "semantic_peer"
DEFAULT_ROWS = ("seg_tiny", "seg_small", "smp_unet:resnet18", "smp_fpn:resnet18", "smp_unet:mobilenet_v2",
                "smp_fpn:mobilenet_v2")  # fmt: skip
TOYWORLD_SPLITS = {"train": (1000, 9100), "val": (128, 9101), "test": (256, 9102)}  # count, render seed


# ------------------------------------------------------------------------------------------- data
def prepare(set_name: str, state: Path, quick: bool) -> dict:
    """Make the set's fixed split once; returns its folders, config and budget."""
    out = state / set_name / ("data_quick" if quick else "data")
    if set_name == "em":
        if not EM.is_dir():
            raise SystemExit(f"{EM} not found: the em set needs the team's ../shared/data")
        if not (out / "done").exists():
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "anydistill.cli", "data", "import", "--images", str(EM / "image"),
                            "--labels", str(EM / "label"), "--out", str(out), "--label-map", "255:0", "0:1",
                            "--classes", "cell,membrane", "--holdout", "6", "--test", "6"],
                           check=True, cwd=REPO, stdout=subprocess.DEVNULL)  # fmt: skip
            (out / "done").write_text("")
        overrides = ["trainer.max_epochs=5", "trainer.val_every_n_epochs=5"] if quick else []
        return {"train": str(out / "train"), "val": str(out / "val"), "test": str(out / "test"),
                "config": str(REPO / "configs" / "semantic_em_membranes.yaml"), "overrides": overrides,
                "eval_size": 512, "budget": "60 epochs × 18 slices / batch 8 (135 steps)" if not quick else "quick"}  # fmt: skip
    if set_name == "toyworld":
        from anydistill.data.toyworld import write_toyworld

        if not (out / "done").exists():
            shutil.rmtree(out, ignore_errors=True)
            for split, (count, seed) in TOYWORLD_SPLITS.items():
                n = count // 8 if quick else count
                write_toyworld(out / split, count=n, size=128, domain="wide", seed=seed, progress=False)
            (out / "done").write_text("")
        return {"train": str(out / "train"), "val": str(out / "val"), "test": str(out / "test"), "config": None,
                "overrides": ["task=semantic", "data.source=folder", "data.image_size=128", "data.batch_size=16",
                              "trainer.max_epochs=-1", "trainer.val_every_n_epochs=2", "trainer.grid_images=0"],
                "eval_size": 128, "budget": None}  # fmt: skip
    raise SystemExit(f"unknown set {set_name!r} (em, toyworld)")


# ------------------------------------------------------------------------------------------- rows
def parse_row(row: str) -> tuple[str, dict, list[str]]:
    """``name[:encoder][+key=value...]`` → (model name, model kwargs, config overrides)."""
    head, *extra = row.split("+")
    name, _, encoder = head.partition(":")
    kwargs = {"encoder": encoder} if encoder else {}
    if name.startswith("smp_") and not encoder:
        raise SystemExit(f"row {row!r}: an smp row names its encoder, e.g. {name}:resnet18")
    return name, kwargs, extra


def row_key(row: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", row)


def build_row(row: str, num_classes: int) -> torch.nn.Module:
    from anydistill.models.zoo import build_model

    name, kwargs, extra = parse_row(row)
    model_kwargs = {k.removeprefix("model.kwargs."): yaml_value(v) for k, v in
                    (e.split("=", 1) for e in extra) if k.startswith("model.kwargs.")}  # fmt: skip
    return build_model(name, num_classes=num_classes, **kwargs, **model_kwargs)


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


# ------------------------------------------------------------------------------------------- child
def child(spec: dict) -> dict:
    """One training run + test evaluation, in this (fresh) process."""
    torch.set_num_threads(spec["threads"])
    peer_models.register()
    from anydistill import api

    name, kwargs, extra = parse_row(spec["row"])
    overrides = [*spec["overrides"], f"data.train_root={spec['train']}", f"data.val_root={spec['val']}",
                 f"run_dir={spec['run_dir']}", f"seed={spec['seed']}", f"model.name={name}",
                 "trainer.progress_bar=false", "data.num_workers=1"]  # fmt: skip
    overrides += [f"model.kwargs.{k}={v}" for k, v in kwargs.items()]
    if spec.get("minutes"):  # the wall clock is the budget: no step or epoch limit
        overrides += [
            f"trainer.max_time_minutes={spec['minutes']}",
            "trainer.max_steps=-1",
            "trainer.max_epochs=-1",
        ]
    elif spec.get("steps"):
        overrides.append(f"trainer.max_steps={spec['steps']}")
    overrides += extra
    start = time.perf_counter()
    result = api.train(spec["config"], overrides)
    train_s = time.perf_counter() - start
    test = api.evaluate(result.best_checkpoint, data=spec["test"], count=100_000, progress=False)
    val = api.evaluate(result.best_checkpoint, data=spec["val"], count=100_000, progress=False)
    model = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    steps = int(model.get("global_step", -1))
    last = Path(result.best_checkpoint).with_name("last.ckpt")
    made = (
        int(torch.load(last, map_location="cpu", weights_only=False).get("global_step", -1))
        if last.is_file()
        else steps
    )
    return {**spec, "test": test, "val": val, "train_seconds": train_s, "best_step": steps, "steps_made": made,
            "load": os.getloadavg()[0]}  # fmt: skip


def result_path(spec: dict, state: Path) -> Path:
    return (
        state / spec["set"] / f"{row_key(spec['row'])}-s{spec['seed']}{'-quick' if spec['quick'] else ''}"
        f"{'-m' + str(spec['minutes']) if spec.get('minutes') else ''}.json"
    )


def run(spec: dict, state: Path) -> dict:
    path = result_path(spec, state)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = ("row", "seed", "steps", "minutes", "overrides", "threads", "set")

    def compute() -> dict:
        run_dir = path.with_suffix("")
        shutil.rmtree(run_dir, ignore_errors=True)
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "run_dir": str(run_dir)})],
                              cwd=REPO, capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(
                f"{spec['set']} {spec['row']} seed {spec['seed']} failed:\n{done.stderr[-3000:]}"
            )
        return json.loads(done.stdout.strip().splitlines()[-1])

    return common.cached_result(path, spec, settings, compute)


# ------------------------------------------------------------------------------------------- latency
def latency(rows: list[str], size: int, num_classes: int, threads: int, rounds: int) -> dict:
    """Batch-1 forward at ``size``², one round-robin loop over the rows (channels_last, inference_mode)."""
    from anydistill.bench.timing import round_robin

    torch.set_num_threads(threads)
    peer_models.register()
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    calls, params = {}, {}
    for row in rows:
        model = build_row(row, num_classes).eval().to(memory_format=torch.channels_last)
        params[row] = sum(p.numel() for p in model.parameters()) / 1e6

        def call(model=model):
            with torch.inference_mode():
                return model(x)

        calls[row] = call
    timings = round_robin(calls, rounds=rounds, warmup=2)
    return {row: {"ms": timings[row].median_ms, "params_m": params[row]} for row in rows}


# ------------------------------------------------------------------------------------------- report
def report(results: list[dict], lat: dict, sets: dict, args) -> str:
    parts = []
    for set_name, info in sets.items():
        rows = args.rows
        mine = [r for r in results if r["set"] == set_name]
        if not mine:
            continue
        classes = sorted({k.removeprefix("iou/") for r in mine for k in r["test"] if k.startswith("iou/")})
        header = ["model", "params (M)", f"ms @ {info['eval_size']}², batch 1", "test mIoU", "val mIoU",
                  *[f"IoU {c}" for c in classes], "train s", "seeds"]  # fmt: skip
        table_rows = []
        for row in rows:
            runs = [r for r in mine if r["row"] == row]
            if not runs:
                continue
            t = lat.get(set_name, {}).get(row, {})
            table_rows.append([
                f"`{row}`", f"{t['params_m']:.2f}" if t else "–", f"{t['ms']:.1f}" if t else "–",
                common.mean_sd([r["test"]["miou"] for r in runs]), common.mean_sd([r["val"]["miou"] for r in runs]),
                *[f"{statistics.mean(r['test'].get('iou/' + c, float('nan')) for r in runs):.3f}" for c in classes],
                ", ".join(f"{r['train_seconds']:.0f}" for r in runs), ", ".join(str(r["seed"]) for r in runs),
            ])  # fmt: skip
        budget = info["budget"] or f"{8 if args.quick else args.toyworld_steps} steps of batch 16"
        if args.minutes:
            budget = f"{args.minutes:g} minutes of training per row (wall clock), steps made: " + ", ".join(
                f"{r['row']} {r.get('steps_made', '?')}" for r in mine
            )
        parts.append(f"### {set_name}: {budget}\n\n" + common.markdown_table(header, table_rows))
    loads = [r["load"] for r in results] or [float("nan")]
    lat_loads = [x for per_set in lat.values() for t in per_set.values() for x in t.get("load", [])]
    parts.append(
        "Test mIoU: mean ± sample standard deviation over seeds, on the test split (never used to choose); "
        "per-class IoU: mean over seeds. Latency: median of round-robin batch-1 forwards, channels_last, "
        f"{args.threads} thread(s). 1-minute load average at the end of the runs: "
        f"{min(loads):.1f}–{max(loads):.1f}"
        + (
            " (with a wall-clock budget quality depends on it)"
            if args.minutes
            else " (quality does not depend on it: step budgets, fixed seeds)"
        )
        + (f"; during the latency loops: {min(lat_loads):.1f}–{max(lat_loads):.1f}." if lat_loads else ".")
    )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sets", default="em,toyworld")
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="rows, space-separated")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--toyworld-steps", type=int, default=600)
    parser.add_argument(
        "--minutes", type=float, default=None, help="a wall-clock budget per row instead of steps"
    )
    parser.add_argument("--latency-rounds", type=int, default=7)
    parser.add_argument("--state", type=Path, default=STATE)
    parser.add_argument("--name", default="semantic_peer", help="results/<name>.md and .json")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="(re)measure the rows' latency (do it on a quiet machine); else the stored figures",
    )
    parser.add_argument("--report", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, no results file")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    torch.set_num_threads(args.threads)
    sets = {s: prepare(s, args.state, args.quick) for s in args.sets.split(",")}
    results = []
    specs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for set_name, info in sets.items():
            for row in args.rows:
                parse_row(row)
                steps = (8 if args.quick else args.toyworld_steps) if set_name == "toyworld" else None
                specs.append({"set": set_name, "row": row, "seed": seed, "threads": args.threads,
                              "quick": args.quick, "steps": None if args.minutes else steps,
                              "minutes": args.minutes, "config": info["config"],
                              "overrides": info["overrides"], "train": info["train"], "val": info["val"],
                              "test": info["test"]})  # fmt: skip
    for i, spec in enumerate(specs, 1):
        if args.report and not result_path(spec, args.state).exists():
            continue
        start = time.perf_counter()
        r = run(spec, args.state)
        results.append(r)
        print(f"[{i}/{len(specs)}] {spec['set']} {spec['row']} seed {spec['seed']}: test mIoU "
              f"{r['test']['miou']:.3f} (val {r['val']['miou']:.3f}, {time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    lat = {}
    for set_name, info in sets.items():
        path = args.state / set_name / f"latency-t{args.threads}{'-quick' if args.quick else ''}.json"
        if args.latency:
            classes = Path(info["train"]) / "classes.json"
            num_classes = len(json.loads(classes.read_text())["classes"])
            before = os.getloadavg()[0]
            timed = latency(args.rows, info["eval_size"], num_classes, args.threads,
                            2 if args.quick else args.latency_rounds)  # fmt: skip
            old = json.loads(path.read_text()) if path.exists() else {}
            old.update({row: {**t, "load": [before, os.getloadavg()[0]]} for row, t in timed.items()})
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(old, indent=1))
            tmp.replace(path)
        lat[set_name] = json.loads(path.read_text()) if path.exists() else {}
    table = report(results, lat, sets, args)
    print(table)
    if args.quick:
        return
    command = f"python benchmarks/bench_semantic_peer.py --sets {args.sets} --rows {' '.join(args.rows)} --seeds {args.seeds}" + (
        f" --toyworld-steps {args.toyworld_steps}" if "toyworld" in args.sets and not args.minutes else "") + (
        f" --minutes {args.minutes:g}" if args.minutes else "")  # fmt: skip
    common.write_results(args.name, table, {"runs": results, "latency": lat}, command)


if __name__ == "__main__":
    main()
