"""kNN quality of anydistill's self-supervised methods against lightly's on real CIFAR-10, same budget.

For each method (SimCLR, MoCo v2, DINO, MAE) and seed, three things are trained on the same unlabeled
images (``../shared/data/cifar10/train``, 10 × 1,000 real photos, labels unused) for the same number of
epochs at the same batch, and evaluated the same way:

- **ours**: the product's own path, ``anydistill pretrain --method M --images cifar10/train`` in a
  subprocess (Lightning, our views, our loss, our checkpoint choice by the kNN monitor on the
  validation split), then ``best.ckpt`` loaded by :func:`anydistill.eval.protocols.load_embedding`;
- **lightly**: lightly 1.6's same method as its examples build it
  (``bench_ssl_speed.build_lightly``: heads, losses, momentum updates, batch shuffle and split BN for MoCo),
  trained by a plain loop on **our** data module's loader (the same view augmentations, batch, shuffling
  and drop-last), with the same optimizer kind, peak lr, warm-up + cosine schedule (our
  :func:`anydistill.optim.build_scheduler`), momentum (MoCo: fixed; DINO: lightly's ``cosine_schedule``
  from 0.996 to 1) and the same checkpoint choice (kNN on the validation split after every epoch);
- **the floor**: the same backbone at random initialisation (seeded), and **the ceiling**: the same
  backbone trained with labels (cross-entropy, pad-4 crop + flip, same optimizer and epochs).

The same backbone on every side (``bench_ssl_speed``: timm ``resnet18_cifar`` for SimCLR / MoCo / DINO,
``vit_tiny_patch16_224`` at 32² with 4-px patches for MAE) and the same head sizes. Short-run settings,
the same on both sides: MoCo momentum 0.99 (lightly's CIFAR benchmark; 0.999 barely moves the key
encoder in a few hundred steps), DINO ``freeze_last_layer=0`` and teacher temperature 0.04 throughout,
MAE with AdamW (lr 1e-3 at batch 128, weight decay 0.05) instead of SGD.

Splits (class folders of symlinks under the state folder): the kNN memory bank is the first
``--bank`` training images of each class, the validation queries (checkpoint choice) the last
``--val`` of each class, the reported **test** figure the first ``--test`` images per class of the
CIFAR-10 test set. kNN is DINO's weighted protocol (k = 20, T = 0.07, L2-normalised features, votes
exp(sim / T)) on centre crops at 32² (:func:`anydistill.eval.features.knn_accuracy`).

Every run is a fresh process with ``--threads`` torch threads and a fixed seed; its result is written
to ``<state>/<key>.json`` (atomically) and reused when the script is run again with the same settings,
so a long benchmark can be stopped and continued, and its table rebuilt from the finished runs
(``--report``). Quality figures depend only on the settings and seed, not on how busy the machine is
(wall times are only shown).

    python benchmarks/bench_ssl_cifar.py [--methods simclr,moco,dino,mae] [--seeds 0,1] [--epochs 1]
        [--batch 128] [--threads 2] [--rows ours,lightly,floor,ceiling] [--quick] [--report]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import bench_ssl_speed as speed
import common  # first: it sets OMP_WAIT_POLICY before torch loads
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10"
STATE = Path(__file__).resolve().parent / "_out" / "ssl_cifar"
METHODS = ("simclr", "moco", "dino", "mae")
LABELS = {"simclr": "SimCLR", "moco": "MoCo v2 (split BN 8)", "dino": "DINO (2×32² + 6×16²)",
          "mae": "MAE (ViT-Ti/4)"}  # fmt: skip
SPEED_NAME = {"simclr": "simclr", "moco": "moco_split8", "dino": "dino", "mae": "mae"}
MOCO_MOMENTUM = 0.99
MAE_LR_AT_128, MAE_WEIGHT_DECAY = 1e-3, 0.05
KNN_K, KNN_T = 20, 0.07


# ------------------------------------------------------------------------------------------- splits
def make_splits(state: Path, bank: int, val: int, test: int) -> dict[str, str]:
    """Class folders of symlinks: ``bank`` / ``val`` from CIFAR train, ``test`` from CIFAR test."""
    out = state / f"splits_b{bank}_v{val}_t{test}"
    if (out / "done").exists():
        return {name: str(out / name) for name in ("bank", "val", "test")}
    for cls_dir in sorted((CIFAR / "train").iterdir()):
        files = sorted(cls_dir.iterdir())
        if bank + val > len(files):
            raise SystemExit(f"--bank {bank} + --val {val} > {len(files)} images in {cls_dir}")
        test_files = sorted((CIFAR / "test" / cls_dir.name).iterdir())[:test]
        for name, chosen in (
            ("bank", files[:bank]),
            ("val", files[len(files) - val :]),
            ("test", test_files),
        ):
            d = out / name / cls_dir.name
            d.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                link = d / f.name
                if not link.exists():
                    link.symlink_to(f)
    (out / "done").write_text("")
    return {name: str(out / name) for name in ("bank", "val", "test")}


# --------------------------------------------------------------------------------------- evaluation
def knn_eval(encoder: torch.nn.Module, mean, std, bank_dir: str, query_dir: str) -> dict[str, float]:
    """DINO's weighted kNN (k 20, T 0.07) of ``encoder`` on 32² centre crops: ``bank_dir`` → ``query_dir``."""
    from torch.utils.data import DataLoader

    from anydistill.data.classify import ClassFolderDataset
    from anydistill.eval.features import extract_features, knn_accuracy
    from anydistill.eval.protocols import EvalCrops

    bank = ClassFolderDataset(bank_dir)
    query = ClassFolderDataset(query_dir, classes=bank.classes)

    def feats(ds):
        return extract_features(encoder, DataLoader(EvalCrops(ds, 32, mean, std), batch_size=256))

    bf, by = feats(bank)
    qf, qy = feats(query)
    return knn_accuracy(bf, by, qf, qy, len(bank.classes), k=KNN_K, temperature=KNN_T)


def base_overrides(spec: dict) -> list[str]:
    """Our config for ``spec`` (both sides build their data and schedule from it)."""
    method = spec["method"]
    ov = [f"method={method}", "task=embed", "data.source=folder", f"data.train_root={spec['images']}",
          "data.image_size=32", f"data.batch_size={spec['batch']}", "data.num_workers=0",
          f"trainer.max_epochs={spec['epochs']}", f"seed={spec['seed']}", f"data.seed={spec['seed']}",
          f"pretrain.knn_train={spec['splits']['bank']}", f"pretrain.knn_val={spec['splits']['val']}",
          *speed.ours_overrides(SPEED_NAME[method])]  # fmt: skip
    if method == "moco":
        ov.append(f"pretrain.momentum={MOCO_MOMENTUM}")
    if method == "mae":
        lr = MAE_LR_AT_128 * spec["batch"] / 128
        ov += ["optim.optimizer=adamw", f"optim.lr={lr}", f"optim.weight_decay={MAE_WEIGHT_DECAY}"]
    return ov


# -------------------------------------------------------------------------------------------- child
def run_ours(spec: dict, run_dir: Path) -> dict:
    """``anydistill pretrain`` in a subprocess (resumes a killed run), then kNN of ``best.ckpt``."""
    from anydistill.eval.protocols import load_embedding

    exe = Path(sys.executable).with_name("anydistill")
    ov = [
        o for o in base_overrides(spec) if not o.startswith(("method=", "data.source=", "data.train_root="))
    ]
    cmd = [str(exe), "pretrain", "--method", spec["method"], "--images", spec["images"],
           f"run_dir={run_dir}", "trainer.progress_bar=false", *ov]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    frozen = load_embedding(metrics["best_checkpoint"])
    result = knn_eval(frozen.encoder, frozen.mean, frozen.std, spec["splits"]["bank"], spec["splits"]["test"])
    return {
        "test": result,
        "val_best": metrics["val"].get("val/knn_top1"),
        "steps": metrics["global_step"],
        "run_dir": str(run_dir),
    }


def _lightly_encoder(method: str, model: torch.nn.Module) -> torch.nn.Module:
    if method == "dino":
        return model.teacher_backbone
    if method == "mae":
        return model.backbone.vit
    return model.backbone


def run_lightly(spec: dict) -> dict:
    """lightly's method trained by a plain loop on our loader; the epoch with the best validation kNN."""
    import lightning as L
    from lightly.utils.scheduler import cosine_schedule

    from anydistill.config import load_config
    from anydistill.methods.base import get_method
    from anydistill.optim import build_scheduler

    method = spec["method"]
    cfg = load_config(overrides=base_overrides(spec))
    L.seed_everything(spec["seed"], workers=True, verbose=False)
    datamodule = get_method(method)(cfg).datamodule  # our data: the same views, batch, shuffling
    mean, std = datamodule.mean, datamodule.std
    knobs: dict = {"epoch": 0}
    if method == "moco":
        knobs["momentum"] = MOCO_MOMENTUM
    make_opt = None
    if method == "mae":
        lr = MAE_LR_AT_128 * spec["batch"] / 128

        def make_opt(params):
            return torch.optim.AdamW(params, lr=lr, weight_decay=MAE_WEIGHT_DECAY)

    L.seed_everything(spec["seed"], workers=True, verbose=False)
    step, model = speed.build_lightly(SPEED_NAME[method], knobs=knobs, make_optimizer=make_opt)
    loader = datamodule.train_dataloader()
    total = spec["epochs"] * len(loader)
    scheduler, _ = build_scheduler(step.optimizer, cfg.optim, total)
    encoder = _lightly_encoder(method, model)
    best, best_state, losses, global_step = -1.0, None, [], 0
    for epoch in range(spec["epochs"]):
        knobs["epoch"] = epoch
        model.train()
        for batch in loader:
            if method == "dino":
                knobs["momentum"] = cosine_schedule(global_step, total, 0.996, 1.0)
            losses.append(float(step(batch["views"])))
            scheduler.step()
            global_step += 1
        val = knn_eval(encoder, mean, std, spec["splits"]["bank"], spec["splits"]["val"])["top1"]
        if val > best:
            best, best_state = val, copy.deepcopy(encoder.state_dict())
    encoder.load_state_dict(best_state)
    result = knn_eval(encoder, mean, std, spec["splits"]["bank"], spec["splits"]["test"])
    finite = all(math.isfinite(x) for x in losses)
    return {"test": result, "val_best": best, "steps": global_step, "losses_finite": finite,
            "first_loss": losses[0], "last_loss": losses[-1]}  # fmt: skip


def run_floor(spec: dict) -> dict:
    """The backbone at random initialisation (seeded)."""
    from anydistill.models.ssl_heads import EmbeddingEncoder

    torch.manual_seed(spec["seed"])
    if spec["backbone"] == "vit":
        encoder = EmbeddingEncoder(speed.VIT, **speed.VIT_KWARGS)
    else:
        encoder = EmbeddingEncoder(speed.CNN)
    encoder.eval()
    return {"test": knn_eval(encoder, encoder.pixel_mean, encoder.pixel_std, spec["splits"]["bank"],
                             spec["splits"]["test"])}  # fmt: skip


def run_ceiling(spec: dict) -> dict:
    """The CNN backbone trained with the labels (cross-entropy), same optimizer, schedule and epochs."""
    import lightning as L
    import timm
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    import anydistill.models  # noqa: F401  (registers resnet18_cifar)
    from anydistill.config import load_config
    from anydistill.data.classify import ClassFolderDataset
    from anydistill.optim import build_scheduler

    cfg = load_config(overrides=base_overrides({**spec, "method": "simclr"}))
    mean, std = timm.models.get_pretrained_cfg(speed.CNN).mean, timm.models.get_pretrained_cfg(speed.CNN).std
    L.seed_everything(spec["seed"], workers=True, verbose=False)
    tf = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])  # fmt: skip
    train = ClassFolderDataset(spec["images"], transform=tf)
    loader = DataLoader(train, batch_size=spec["batch"], shuffle=True, drop_last=True)
    model = timm.create_model(speed.CNN, num_classes=len(train.classes))
    opt = torch.optim.SGD(model.parameters(), lr=speed.LR, momentum=speed.MOMENTUM,
                          weight_decay=speed.WEIGHT_DECAY)  # fmt: skip
    scheduler, _ = build_scheduler(opt, cfg.optim, spec["epochs"] * len(loader))
    for _ in range(spec["epochs"]):
        model.train()
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            opt.zero_grad()
            scheduler.step()
    model.reset_classifier(0)  # the pooled 512-d features
    return {"test": knn_eval(model, mean, std, spec["splits"]["bank"], spec["splits"]["test"])}


def child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    import warnings

    warnings.filterwarnings("ignore")
    t0, c0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()[0]
    kind = spec["row"]
    if kind == "ours":
        out = run_ours(spec, Path(spec["state"]) / "runs" / key_of(spec))
    elif kind == "lightly":
        out = run_lightly(spec)
    elif kind == "floor":
        out = run_floor(spec)
    else:
        out = run_ceiling(spec)
    return {**spec, **out, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "load": [load0, os.getloadavg()[0]]}  # fmt: skip


# ------------------------------------------------------------------------------------------- parent
SETTINGS = ("epochs", "batch", "splits", "images")


def key_of(spec: dict) -> str:
    what = spec.get("method") or spec.get("backbone")
    return f"{spec['row']}-{what}-s{spec['seed']}-e{spec['epochs']}-b{spec['batch']}"


def run(spec: dict, state: Path) -> dict:
    """The finished result of ``spec`` from ``state``, or run it in a fresh process and store it."""

    def compute() -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{key_of(spec)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return common.cached_result(state / f"{key_of(spec)}.json", spec, SETTINGS, compute)


def report(results: list[dict], args: argparse.Namespace, seeds: list[int]) -> str:
    def top1(row: str, what: str, seed: int) -> float | None:
        for r in results:
            if r["row"] == row and (r.get("method") or r.get("backbone")) == what and r["seed"] == seed:
                return r["test"]["top1"]
        return None

    header = ["method", "ours kNN top-1", "lightly kNN top-1", "ours − lightly (per seed)",
              "floor: random init", "ceiling: supervised", "seeds"]  # fmt: skip
    rows = []
    for m in args.methods:
        ours = [v for s in seeds if (v := top1("ours", m, s)) is not None]
        lig = [v for s in seeds if (v := top1("lightly", m, s)) is not None]
        diffs = [a - b for s in seeds if (a := top1("ours", m, s)) is not None
                 and (b := top1("lightly", m, s)) is not None]  # fmt: skip
        bb = "vit" if m == "mae" else "cnn"
        floor = [v for s in seeds if (v := top1("floor", bb, s)) is not None]
        ceil = [v for s in seeds if (v := top1("ceiling", "cnn", s)) is not None] if bb == "cnn" else []
        rows.append([LABELS[m], common.mean_sd(ours), common.mean_sd(lig), ", ".join(f"{d:+.3f}" for d in diffs) or "–",
                     common.mean_sd(floor), common.mean_sd(ceil) if ceil else "– (CNN only)",
                     ", ".join(str(s) for s in seeds)])  # fmt: skip
    loads = [x for r in results for x in r.get("load", [])]
    walls = {key_of(r): r["wall_s"] for r in results}
    b, v, t = args.bank, args.val, args.test
    lines = [
        common.markdown_table(header, rows),
        "",
        f"kNN top-1 on the CIFAR-10 test set ({t} per class, {10 * t} images), memory bank the first {b} "
        f"training images per class, checkpoint chosen by kNN on the last {v} training images per class. "
        f"Pre-training on {args.images_label} (labels unused) for {args.epochs} epoch(s) at batch "
        f"{args.batch}, the same for every row; mean ± sample standard deviation over seeds.",
        "",
        "Wall seconds per run (information only; figures above do not depend on them): "
        + ", ".join(f"{k} {w:.0f}" for k, w in sorted(walls.items())),
        f"1-minute load average seen by the runs: {min(loads):.1f}–{max(loads):.1f} on 2 cores."
        if loads
        else "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rows", default="ours,lightly,floor,ceiling")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bank", type=int, default=500, help="kNN memory bank: training images per class")
    parser.add_argument("--val", type=int, default=100, help="validation queries: training images per class")
    parser.add_argument("--test", type=int, default=200, help="test queries: test images per class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--state", type=Path, default=STATE)
    parser.add_argument("--report", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch on tiny splits, no file")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if not CIFAR.is_dir():
        raise SystemExit(f"{CIFAR} not found: this benchmark needs the shared CIFAR-10 set")
    args.methods = [m for m in args.methods.split(",") if m]
    for m in args.methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown {m!r}; one of {', '.join(METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = args.rows.split(",")
    if args.quick:
        args.bank, args.val, args.test, args.state = 20, 5, 10, args.state / "quick"
    args.state.mkdir(parents=True, exist_ok=True)
    splits = make_splits(args.state, args.bank, args.val, args.test)
    images = splits["bank"] if args.quick else str(CIFAR / "train")
    args.images_label = "the memory bank's images (--quick)" if args.quick else "all 10,000 training images"
    base = {"images": images, "epochs": args.epochs, "batch": args.batch, "splits": splits, "threads": args.threads,
            "state": str(args.state)}  # fmt: skip
    specs = []
    for seed in seeds:
        for row in ("floor", "ceiling"):
            if row in rows:
                backbones = {"vit" if m == "mae" else "cnn" for m in args.methods}
                if row == "ceiling":
                    backbones &= {"cnn"}
                specs += [{**base, "row": row, "backbone": b, "seed": seed} for b in sorted(backbones)]
        for m in args.methods:
            specs += [{**base, "row": r, "method": m, "seed": seed} for r in ("ours", "lightly") if r in rows]
    results = []
    for i, spec in enumerate(specs, 1):
        path = args.state / f"{key_of(spec)}.json"
        if args.report and not path.exists():
            continue
        t0 = time.perf_counter()
        r = run(spec, args.state)
        results.append(r)
        print(f"[{i}/{len(specs)}] {key_of(spec)}: test kNN top-1 {r['test']['top1']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    table = report(results, args, seeds)
    print(table)
    if args.quick:
        return
    command = "python benchmarks/bench_ssl_cifar.py " + " ".join(a for a in (argv or sys.argv[1:]))
    md = common.write_results("ssl_cifar", table, {"results": results}, command.strip())
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
