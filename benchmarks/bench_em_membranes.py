"""Real data: a semantic student on 30 ISBI-2012 EM slices, through the CLI.

Runs exactly the commands a user would (``anydistill data import --holdout 6 --test 6``, ``train``,
``evaluate``): 18 slices train, 6 validate (the best checkpoint is chosen on them) and 6 are the test
split the figures are reported on, which nothing looked at before. Each training seed is a separate run
on the same split; the table gives the mean, the spread and every seed's figure.

    python benchmarks/bench_em_membranes.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import markdown_table, write_results

REPO = Path(__file__).resolve().parents[1]
EM = REPO.parent / "shared" / "data" / "em-membranes"
OUT = REPO / "benchmarks" / "_out" / "em"


def run(cmd: list[str]) -> float:
    print("$", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - start


def evaluate(cli: list[str], checkpoint: Path, data: Path, out: Path) -> tuple[dict, float]:
    seconds = run(
        cli + ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--json", str(out)]
    )
    return json.loads(out.read_text())["metrics"], seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5 epochs instead of the config's")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (the split is fixed)"
    )
    args = parser.parse_args()
    if not EM.is_dir():
        sys.exit(f"{EM} not found: this benchmark needs the team's ../shared/data")
    cli = [sys.executable, "-m", "anydistill.cli"]
    data = OUT / "data"
    if data.exists():
        shutil.rmtree(data)
    # 18 slices train, 6 validate (they choose best.ckpt), 6 test (only reported, never looked at before).
    t_import = run(cli + ["data", "import", "--images", str(EM / "image"), "--labels", str(EM / "label"),
                          "--out", str(data), "--label-map", "255:0", "0:1", "--classes", "cell,membrane",
                          "--holdout", "6", "--test", "6"])  # fmt: skip
    per_seed = {}
    for seed in args.seeds:
        run_dir = OUT / f"run_seed{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        overrides = [f"data.train_root={data / 'train'}", f"data.val_root={data / 'val'}", f"run_dir={run_dir}",
                     f"seed={seed}"]  # fmt: skip
        if args.quick:
            overrides += ["trainer.max_epochs=5", "trainer.val_every_n_epochs=5"]
        t_train = run(cli + ["train", "--config", "configs/semantic_em_membranes.yaml", *overrides])
        best = run_dir / "checkpoints" / "best.ckpt"
        val, _ = evaluate(cli, best, data / "val", OUT / f"val_seed{seed}.json")
        test, t_eval = evaluate(cli, best, data / "test", OUT / f"test_seed{seed}.json")
        per_seed[seed] = {"val": val, "test": test, "train_seconds": t_train, "evaluate_seconds": t_eval}

    def stat(split: str, key: str) -> str:
        values = [per_seed[s][split][key] for s in args.seeds]
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"

    rows = [
        ["test mIoU (6 slices, 512²)", stat("test", "miou")],
        ["test IoU membrane", stat("test", "iou/membrane")],
        ["test IoU cell", stat("test", "iou/cell")],
        ["test pixel accuracy", stat("test", "pixel_acc")],
        ["val mIoU (6 slices that chose best.ckpt)", stat("val", "miou")],
        ["import time (s)", f"{t_import:.1f}"],
        ["train time per seed (s)", ", ".join(f"{per_seed[s]['train_seconds']:.0f}" for s in args.seeds)],
        ["evaluate time, test (s)", ", ".join(f"{per_seed[s]['evaluate_seconds']:.1f}" for s in args.seeds)],
    ]
    header = [
        f"em-membranes, seg_tiny, 18 train / 6 val / 6 test, seeds {', '.join(map(str, args.seeds))}",
        "mean ± std (per seed)",
    ]
    table = markdown_table(header, rows)
    print(table)
    command = "python benchmarks/bench_em_membranes.py" + (" --quick" if args.quick else "")
    command += "" if args.seeds == [0, 1] else " --seeds " + " ".join(map(str, args.seeds))
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    write_results(
        "em_membranes",
        table + f"\n\nLoad average at the end: {load}.",
        {"per_seed": per_seed, "import_seconds": t_import, "split": {"train": 18, "val": 6, "test": 6}},
        command,
    )


if __name__ == "__main__":
    main()
