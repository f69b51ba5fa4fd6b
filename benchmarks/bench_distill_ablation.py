"""The shape of Depth Anything's ablation (V1 Table 9), at small scale on toyworld.

Labeled data: the ``narrow`` domain (rooms only, few object kinds). Unlabeled and test data: the
``wide`` domain (rooms and open scenes, all kinds, wide light/camera ranges). A bigger teacher is
trained on the labeled data, pseudo-labels the unlabeled images once (the cache), and students of
the default size are trained with the same step budget, switching on one piece of the recipe per
row:

    (a) labeled only
    (b) + pseudo-labeled unlabeled images, no perturbation
    (c) + colour jitter and blur on the student's unlabeled input
    (d) + CutMix (p = 0.5, per-region alignment)
    (e) + feature alignment to a frozen encoder (the teacher's encoder), margin α = 0.15
    (f) + feature alignment to an encoder pre-trained self-supervised (``--ssl-method``, MoCo by
        default) on the unlabeled images only, instead of the teacher's encoder (issue 12: the loop
        closes when no semantic encoder fits the domain)

Each row is averaged over ``--seeds`` seeds. AbsRel and δ1 on the held-out ``wide`` test split.
``--rows a,e,f`` runs a subset.

    python benchmarks/bench_distill_ablation.py [--quick] [--seeds 2] [--rows a,b,c,d,e,f]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import markdown_table, write_results

from anydistill.config import load_config
from anydistill.eval.evaluate import evaluate
from anydistill.training import distill, train

OUT = Path(__file__).resolve().parent / "_out" / "ablation"

ROWS = {
    "(a) labeled only": None,
    "(b) + unlabeled, no perturbation": ["distill.perturb=false", "distill.cutmix=false"],
    "(c) + colour jitter, blur": ["distill.perturb=true", "distill.cutmix=false"],
    "(d) + CutMix": ["distill.perturb=true", "distill.cutmix=true"],
    "(e) + feature alignment": ["distill.perturb=true", "distill.cutmix=true", "distill.feature_align=true"],
    "(f) + feature alignment, self-supervised encoder": [
        "distill.perturb=true", "distill.cutmix=true", "distill.feature_align=true"
    ],
}  # fmt: skip
#: The self-supervised encoder of row (f): a timm ResNet-18 pre-trained on the unlabeled images.
SSL_BACKBONE = "resnet18"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--quick", action="store_true", help="tiny budget: checks the pipeline, not the claims"
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--teacher-steps", type=int, default=500)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--rows", default="a,b,c,d,e,f", help="which rows, by letter")
    parser.add_argument("--ssl-method", default="moco", choices=["simclr", "moco", "dino"])
    parser.add_argument("--ssl-steps", type=int, default=300, help="self-supervised pre-training steps")
    parser.add_argument("--ssl-size", type=int, default=64, help="its crop size")
    args = parser.parse_args()
    letters = set(args.rows.split(","))
    rows = {row: extra for row, extra in ROWS.items() if row[1] in letters}
    q = args.quick
    n_labeled, n_unlabeled, n_test = (64, 64, 16) if q else (500, 1500, 128)
    teacher_steps, student_steps = (20, 10) if q else (args.teacher_steps, args.student_steps)
    size = 64 if q else 128
    # A quick run has its own folder: a full run must not resume from its tiny checkpoints or cache.
    out = OUT.with_name(OUT.name + ("_quick" if q else ""))
    out.mkdir(parents=True, exist_ok=True)
    common = [
        f"data.image_size={size}",
        "data.train_domain=narrow",
        "data.val_domain=wide",
        f"data.train_count={n_labeled}",
        f"data.val_count={n_test}",
        "data.batch_size=16",
        "data.num_workers=1",
        "trainer.max_epochs=1000",
        "trainer.progress_bar=false",
        "trainer.val_every_n_epochs=1000",
    ]
    started = time.perf_counter()

    # 1. Unlabeled wide-domain images on disk, as a user's folder would be.
    from anydistill.data.toyworld import write_toyworld

    unlabeled = write_toyworld(
        out / "unlabeled", count=n_unlabeled, size=size, domain="wide", seed=777, progress=False
    )

    # 2. The teacher: a bigger model trained on the narrow labeled data only.
    teacher_cfg = load_config(None, [*common, "model.name=depth_small", f"run_dir={out / 'teacher'}",
                                     f"trainer.max_steps={teacher_steps}"])  # fmt: skip
    teacher = train(teacher_cfg).best_checkpoint

    # 3. The teacher pass, once.
    from anydistill.cache import run_teacher_pass
    from anydistill.teachers import load_teacher

    cache = out / "cache"
    t0 = time.perf_counter()
    run_teacher_pass(load_teacher(teacher), unlabeled / "images", cache, progress=False)
    pass_seconds = time.perf_counter() - t0

    # 4. Row (f)'s encoder: self-supervised pre-training on the same unlabeled images, no labels.
    ssl_spec, ssl_seconds = None, 0.0
    if any(row.startswith("(f)") for row in rows):
        from anydistill.training import pretrain

        t0 = time.perf_counter()
        ssl_run = pretrain(load_config(None, [
            f"method={args.ssl_method}", "data.source=folder", f"data.train_root={unlabeled / 'images'}",
            f"data.image_size={32 if q else args.ssl_size}", "data.batch_size=32", "data.num_workers=1",
            f"pretrain.backbone={SSL_BACKBONE}", f"trainer.max_steps={5 if q else args.ssl_steps}",
            "trainer.max_epochs=1000", "trainer.progress_bar=false", "trainer.val_every_n_epochs=1000",
            "optim.lr=0.001", f"run_dir={out / f'ssl_{args.ssl_method}'}",
        ]))  # fmt: skip
        ssl_seconds = time.perf_counter() - t0
        ssl_spec = f"timm:{SSL_BACKBONE}@{ssl_run.run_dir / 'backbone.pth'}"

    results: dict[str, list[dict[str, float]]] = {}
    teacher_metrics = evaluate(teacher, "toyworld:wide", count=n_test, progress=False)
    for row, extra in rows.items():
        for seed in range(args.seeds):
            run = [*common, "model.name=depth_tiny", f"seed={seed}", f"trainer.max_steps={student_steps}",
                   f"run_dir={out / f'row{row[1]}_seed{seed}'}"]  # fmt: skip
            if extra is None:
                result = train(load_config(None, run))
            else:
                encoder = ssl_spec if row.startswith("(f)") else teacher
                run += [f"distill.cache={cache}", f"distill.frozen_encoder={encoder}", *extra]
                result = distill(load_config(None, run))
            metrics = evaluate(result.best_checkpoint, "toyworld:wide", count=n_test, progress=False)
            results.setdefault(row, []).append(metrics)
            print(row, seed, {k: round(metrics[k], 4) for k in ("abs_rel", "delta1")}, flush=True)

    def mean(row: str, key: str) -> str:
        values = [m[key] for m in results[row]]
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    table_rows = [[row, mean(row, "abs_rel"), mean(row, "delta1")] for row in rows]
    table_rows.append(["teacher (depth_small, narrow labels)", f"{teacher_metrics['abs_rel']:.3f}",
                       f"{teacher_metrics['delta1']:.3f}"])  # fmt: skip
    table = markdown_table(["row", "AbsRel ↓ (wide test)", "δ1 ↑ (wide test)"], table_rows)
    print(table)
    data = {
        "rows": results,
        "teacher": teacher_metrics,
        "teacher_pass_seconds": pass_seconds,
        "ssl": {"method": args.ssl_method, "steps": args.ssl_steps, "size": args.ssl_size, "encoder": ssl_spec,
                "seconds": ssl_seconds} if ssl_spec else None,
        "budget": {"labeled": n_labeled, "unlabeled": n_unlabeled, "test": n_test, "size": size,
                   "teacher_steps": teacher_steps, "student_steps": student_steps, "seeds": args.seeds},
        "total_seconds": time.perf_counter() - started,
    }  # fmt: skip
    command = (
        "python benchmarks/bench_distill_ablation.py" + (" --quick" if q else "") + f" --seeds {args.seeds}"
        + ("" if q else f" --teacher-steps {teacher_steps} --student-steps {student_steps}")
        + (f" --rows {args.rows}" if letters != set("abcdef") else "")
        + (f" --ssl-method {args.ssl_method} --ssl-steps {args.ssl_steps} --ssl-size {args.ssl_size}"
           if ssl_spec and not q else "")
    )  # fmt: skip
    name = "distill_ablation" + ("_ssl" if letters == {"a", "e", "f"} else "") + ("_quick" if q else "")
    write_results(name, table, data, command)
    (out / "results.json").write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
