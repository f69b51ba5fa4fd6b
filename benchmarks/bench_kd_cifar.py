"""Knowledge distillation against hard labels for a small student on real CIFAR-10, same step budget.

The user's situation: a few labeled images, many unlabeled ones, a bigger model that knows the task.
On ``../shared/data/cifar10`` (real 32² photos):

- **labeled**: the first ``--labeled`` training images of each class; **unlabeled**: the next ones up to
  900 per class (labels unused by the students); **validation** (checkpoint choice of every run): the
  last 100 training images of each class; **test** (the reported figure): the full 10,000-image test set;
- **teacher**: ``resnet18_cifar`` at half width (channels 32-256, 2.8 M parameters) trained with labels on
  all 900 training images per class (``anydistill train --task classify``);
- **student**: ``resnet8_cifar`` (0.32 M parameters), each row the same number of optimiser steps at the
  same labeled batch, the same seed, the same optimiser and schedule:

  (a) hard labels, labeled images only (``anydistill train``);
  (b) knowledge distillation, labeled + unlabeled images (``anydistill distill --teacher``: the teacher's
      logits cached once; labeled images ``α·T²·KL + (1−α)·CE``, unlabeled ones ``T²·KL``; T = 4,
      α = 0.9; unlabeled batches 2× the labeled one, so a step sees 3× the images: the budget is steps);
  (c) hard labels on all 900 labeled images per class (what labels for everything would give);
  (d) knowledge distillation on the same 900 labeled images per class (Hinton's comparison with (c)).

Every run is ``anydistill`` in a subprocess with ``--threads`` torch threads (``OMP_NUM_THREADS``), its
result stored in ``<state>/<key>.json`` and reused when the script runs again with the same settings
(``--report`` rebuilds the table from finished runs). Figures depend only on the settings and seeds.

    python benchmarks/bench_kd_cifar.py [--seeds 0,1] [--steps 300] [--teacher-steps 600] [--labeled 100]
        [--batch 128] [--rows a,b,c,d] [--quick] [--report]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common  # first: it sets OMP_WAIT_POLICY before torch loads

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10"
STATE = Path(__file__).resolve().parent / "_out" / "kd_cifar"
TEACHER = ("resnet18_cifar", "[32,64,128,256]")
STUDENT = "resnet8_cifar"
ROWS = {
    "a": "student, hard labels, labeled images only",
    "b": "student, KD: labeled + unlabeled images",
    "c": "student, hard labels on all 900/class",
    "d": "student, KD + hard labels on all 900/class",
}
PER_CLASS_TRAIN, VAL = 900, 100


def make_splits(state: Path, labeled: int, test: int | None) -> dict[str, str]:
    """Class folders of symlinks: ``labeled``, ``unlabeled``, ``all`` (= both), ``val``, ``test``."""
    out = state / f"splits_l{labeled}_t{test or 'all'}"
    names = ("labeled", "unlabeled", "all", "val", "test")
    if (out / "done").exists():
        return {n: str(out / n) for n in names}
    for cls_dir in sorted((CIFAR / "train").iterdir()):
        files = sorted(cls_dir.iterdir())
        tests = sorted((CIFAR / "test" / cls_dir.name).iterdir())
        chosen = {
            "labeled": files[:labeled], "unlabeled": files[labeled:PER_CLASS_TRAIN],
            "all": files[:PER_CLASS_TRAIN], "val": files[PER_CLASS_TRAIN:PER_CLASS_TRAIN + VAL],
            "test": tests[:test] if test else tests,
        }  # fmt: skip
        for name, paths in chosen.items():
            d = out / name / cls_dir.name
            d.mkdir(parents=True, exist_ok=True)
            for f in paths:
                if not (d / f.name).exists():
                    (d / f.name).symlink_to(f)
    (out / "done").write_text("")
    return {n: str(out / n) for n in names}


def _anydistill(args: list[str], threads: int) -> None:
    exe = Path(sys.executable).with_name("anydistill")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"anydistill {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _evaluate(checkpoint: str, data: str, threads: int, out: Path) -> dict:
    _anydistill(["evaluate", "--checkpoint", checkpoint, "--data", data, "--json", str(out)], threads)
    return json.loads(out.read_text())["metrics"]


def common_overrides(spec: dict) -> list[str]:
    return [
        "task=classify", "data.source=folder", f"data.val_root={spec['splits']['val']}", "data.image_size=32",
        f"data.batch_size={spec['batch']}", f"data.num_workers={spec['workers']}", "trainer.max_epochs=-1",
        "trainer.progress_bar=false", "trainer.val_every_n_epochs=1", "trainer.checkpoint_every_n_steps=100",
        "optim.optimizer=sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.0005",
        "optim.warmup_steps=50", f"seed={spec['seed']}", f"data.seed={spec['seed']}",
    ]  # fmt: skip


def run_teacher(spec: dict, state: Path) -> dict:
    run_dir = state / "runs" / f"teacher-s{spec['seed']}-n{spec['teacher_steps']}"
    name, channels = TEACHER
    _anydistill(["train", f"run_dir={run_dir}", *common_overrides(spec), f"model.name={name}",
                 f"model.kwargs.channels={channels}", f"data.train_root={spec['splits']['all']}",
                 f"trainer.max_steps={spec['teacher_steps']}"], spec["threads"])  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ckpt = metrics["best_checkpoint"]
    test = _evaluate(ckpt, spec["splits"]["test"], spec["threads"], run_dir / "test.json")
    return {"checkpoint": ckpt, "test": test, "val": metrics["val"], "steps": metrics["global_step"]}


def run_student(spec: dict, state: Path, teacher: str | None) -> dict:
    row = spec["row"]
    run_dir = state / "runs" / key_of(spec)
    train_root = spec["splits"]["labeled" if row in "ab" else "all"]
    args = [f"run_dir={run_dir}", *common_overrides(spec), f"model.name={STUDENT}",
            f"data.train_root={train_root}", f"trainer.max_steps={spec['steps']}"]  # fmt: skip
    if row in "bd":
        args = ["distill", "--task", "classify", "--teacher", str(teacher), *args]
        if row == "b":
            args.append(f"classify.unlabeled_root={spec['splits']['unlabeled']}")
    else:
        args = ["train", *args]
    _anydistill(args, spec["threads"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ckpt = metrics["best_checkpoint"]
    test = _evaluate(ckpt, spec["splits"]["test"], spec["threads"], run_dir / "test.json")
    return {"checkpoint": ckpt, "test": test, "val": metrics["val"], "steps": metrics["global_step"]}


def key_of(spec: dict) -> str:
    if spec["row"] == "teacher":
        return f"teacher-s{spec['seed']}-n{spec['teacher_steps']}-l{spec['labeled']}"
    return f"{spec['row']}-s{spec['seed']}-n{spec['steps']}-l{spec['labeled']}-t{spec['teacher_steps']}"


SETTINGS = ("steps", "teacher_steps", "batch", "splits", "labeled")


def run(spec: dict, state: Path, teacher: str | None = None) -> dict:
    """The finished result of ``spec`` from ``state``, or the run itself, stored there."""

    def compute() -> dict:
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        out = run_teacher(spec, state) if spec["row"] == "teacher" else run_student(spec, state, teacher)
        return {**spec, **out, "wall_s": time.perf_counter() - t0, "load": [load0, os.getloadavg()[0]]}

    return common.cached_result(state / f"{key_of(spec)}.json", spec, SETTINGS, compute)


def report(results: list[dict], args: argparse.Namespace, seeds: list[int]) -> str:
    def top(row: str, k: str) -> list[float]:
        return [r["test"][k] for s in seeds for r in results if r["row"] == row and r["seed"] == s]

    header = ["model", "test top-1", "test top-5", "per seed top-1", "labeled images", "steps"]
    lines_rows = []
    labeled = f"{args.labeled}/class"
    for row, label in [("teacher", f"teacher {TEACHER[0]} ×0.5 width (2.8 M)"), *ROWS.items()]:
        t1 = top(row, "top1")
        if not t1:
            continue
        n = "900/class" if row in ("teacher", "c", "d") else labeled
        steps = args.teacher_steps if row == "teacher" else args.steps
        lines_rows.append([label, common.mean_sd(t1), common.mean_sd(top(row, "top5")), ", ".join(f"{v:.3f}" for v in t1), n,
                           str(steps)])  # fmt: skip
    diffs = []
    for a, b in (("a", "b"), ("c", "d")):
        per_seed = [
            rb["test"]["top1"] - ra["test"]["top1"]
            for s in seeds
            for ra in results if ra["row"] == a and ra["seed"] == s
            for rb in results if rb["row"] == b and rb["seed"] == s
        ]  # fmt: skip
        if per_seed:
            diffs.append(f"({b}) − ({a}): " + ", ".join(f"{d:+.3f}" for d in per_seed))
    loads = [x for r in results for x in r.get("load", [])]
    walls = ", ".join(f"{key_of(r)} {r['wall_s']:.0f}" for r in results)
    text = [
        common.markdown_table(header, lines_rows),
        "",
        "Gain of distillation per seed, test top-1: " + "; ".join(diffs) if diffs else "",
        "",
        f"Student {STUDENT} (0.32 M parameters). CIFAR-10 test set {(args.test or 1000) * 10} images; checkpoints "
        f"chosen on the last {VAL} training images per class (never trained on). Students: {args.steps} SGD "
        f"steps (lr 0.1 × cosine, 50 warm-up, momentum 0.9, wd 5e-4) at a labeled batch of {args.batch}; "
        f"KD rows add unlabeled batches of {2 * args.batch} in (b); teacher {args.teacher_steps} steps. "
        f"T = 4, α = 0.9. Mean ± sample standard deviation over seeds {', '.join(map(str, seeds))}.",
        "",
        f"Wall seconds per run (information only): {walls}.",
        f"1-minute load average seen by the runs: {min(loads):.1f}–{max(loads):.1f} on 2 cores."
        if loads
        else "",
    ]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rows", default="a,b,c,d")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--labeled", type=int, default=100, help="labeled training images per class")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--test", type=int, default=None, help="test images per class (default: all 1,000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--state", type=Path, default=STATE)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps, tiny test set, no file")
    args = parser.parse_args(argv)
    if not CIFAR.is_dir():
        raise SystemExit(f"{CIFAR} not found: this benchmark needs the shared CIFAR-10 set")
    if args.quick:
        args.steps, args.teacher_steps, args.test, args.batch = 6, 6, 5, 16
        args.state = args.state / "quick"
    args.state.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = make_splits(args.state, args.labeled, args.test)
    base = {"steps": args.steps, "teacher_steps": args.teacher_steps, "batch": args.batch, "splits": splits,
            "labeled": args.labeled, "threads": args.threads, "workers": args.workers}  # fmt: skip
    # One teacher (seed 0) for every student: the students' seeds are what varies.
    specs = [{**base, "row": "teacher", "seed": 0}]
    specs += [{**base, "row": r, "seed": s} for s in seeds for r in args.rows.split(",")]
    results, teacher = [], None
    for i, spec in enumerate(specs, 1):
        if args.report and not (args.state / f"{key_of(spec)}.json").exists():
            continue
        t0 = time.perf_counter()
        r = run(spec, args.state, teacher)
        if spec["row"] == "teacher":
            teacher = r["checkpoint"]
        results.append(r)
        print(f"[{i}/{len(specs)}] {key_of(spec)}: test top-1 {r['test']['top1']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    table = report(results, args, seeds)
    print(table)
    if args.quick:
        return
    command = "python benchmarks/bench_kd_cifar.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = common.write_results("kd_cifar", table, {"results": results}, command.strip())
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
