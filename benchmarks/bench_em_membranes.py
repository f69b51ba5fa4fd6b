"""Real data: a semantic student on 30 ISBI-2012 EM slices (24 train, 6 held out), through the CLI.

Runs exactly the commands a user would (``anydistill data import``, ``train``, ``evaluate``) and
records the held-out mIoU and the wall-clock time of each step.

    python benchmarks/bench_em_membranes.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import shlex
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5 epochs instead of the config's")
    args = parser.parse_args()
    if not EM.is_dir():
        sys.exit(f"{EM} not found: this benchmark needs the team's ../shared/data")
    cli = [sys.executable, "-m", "anydistill.cli"]
    data, run_dir = OUT / "data", OUT / "run"
    t_import = run(cli + ["data", "import", "--images", str(EM / "image"), "--labels", str(EM / "label"),
                          "--out", str(data), "--label-map", "255:0", "0:1", "--classes", "cell,membrane",
                          "--holdout", "6"])  # fmt: skip
    overrides = [f"data.train_root={data / 'train'}", f"data.val_root={data / 'val'}", f"run_dir={run_dir}"]
    if args.quick:
        overrides += ["trainer.max_epochs=5", "trainer.val_every_n_epochs=5"]
    t_train = run(cli + ["train", "--config", "configs/semantic_em_membranes.yaml", *overrides])
    metrics_json = OUT / "metrics.json"
    t_eval = run(cli + ["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "best.ckpt"),
                        "--data", str(data / "val"), "--json", str(metrics_json)])  # fmt: skip
    metrics = json.loads(metrics_json.read_text())["metrics"]
    rows = [
        ["held-out mIoU (6 slices, 512²)", f"{metrics['miou']:.3f}"],
        ["IoU membrane", f"{metrics.get('iou/membrane', float('nan')):.3f}"],
        ["IoU cell", f"{metrics.get('iou/cell', float('nan')):.3f}"],
        ["pixel accuracy", f"{metrics['pixel_acc']:.3f}"],
        ["import time (s)", f"{t_import:.1f}"],
        ["train time (s)", f"{t_train:.1f}"],
        ["evaluate time (s)", f"{t_eval:.1f}"],
    ]
    table = markdown_table(["em-membranes, seg_tiny", "value"], rows)
    print(table)
    command = "python benchmarks/bench_em_membranes.py" + (" --quick" if args.quick else "")
    write_results(
        "em_membranes",
        table,
        {"metrics": metrics, "seconds": {"import": t_import, "train": t_train, "evaluate": t_eval}},
        command,
    )


if __name__ == "__main__":
    main()
