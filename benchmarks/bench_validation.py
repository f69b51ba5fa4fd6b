"""Where the time of a semantic validation goes (issue 11, item 3).

The demo's semantic run validates ``seg_tiny`` on 128 toyworld ``wide`` images at 128² (batch 16, the
demo's loader workers). This script builds that run exactly as ``anydistill train`` does (the method's
module, data module and callbacks, including the ``val_grid.png`` picture) and measures:

* **validate**: ``Trainer.validate`` as a run calls it (Lightning's loop, loader workers, logging, the
  picture), first call (worker start-up included) and the median of the next ``--repeats`` calls;
* the parts, each alone on the same 128 images: **data** (one pass over the validation loader),
  **forward** (the model on the batches, in inference mode as Lightning's loop), **loss** (``compute_loss``), **metric** (the
  confusion-matrix update and ``compute``), **picture** (the ``val_grid.png`` callback);

and the ratio validate / (forward + metric), the issue's goal being ≤ 2. Wall times; the load average
is printed beside them.

    python benchmarks/bench_validation.py [--count 128] [--size 128] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import common  # first: it sets OMP_WAIT_POLICY before torch loads
import lightning as L
import torch

from anydistill.config import DataConfig
from anydistill.data.toyworld import write_toyworld
from anydistill.demos.common import step_config
from anydistill.methods.base import get_method
from anydistill.training import quiet_lightning


def timed(fn, repeats: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_validation_"))
    try:
        for split, count, seed in (("labeled", 32, 0), ("test", args.count, 1)):
            write_toyworld(tmp / split, count=count, size=args.size, domain="wide", seed=seed, progress=False)
        data = DataConfig(source="folder", train_root=str(tmp / "labeled"), val_root=str(tmp / "test"),
                          image_size=args.size, batch_size=16, num_workers=args.workers)  # fmt: skip
        cfg = step_config(
            "semantic", "seg_tiny", tmp / "run", data, steps=1, cap_minutes=None, log_every_n_steps=10
        )
        L.seed_everything(0, verbose=False)
        method_run = get_method("supervised")(cfg)
        module, dm = method_run.module, method_run.datamodule
        module.eval()
        with quiet_lightning():
            trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=method_run.callbacks,
                                default_root_dir=tmp / "run")  # fmt: skip
            first = timed(lambda: trainer.validate(module, datamodule=dm, verbose=False))
            again = timed(lambda: trainer.validate(module, datamodule=dm, verbose=False), args.repeats)
            loader = dm.val_dataloader()
            data_s = timed(lambda: list(loader), args.repeats)
            batches = list(loader)
            with torch.inference_mode():  # as Lightning's validation loop runs
                preds = [module(b["image"]) for b in batches]
                forward_s = timed(lambda: [module(b["image"]) for b in batches], args.repeats)
                loss_s = timed(lambda: [module.compute_loss(p, b) for p, b in zip(preds, batches, strict=True)],
                               args.repeats)  # fmt: skip

                def metric() -> None:
                    module.val_metrics.reset()
                    for p, b in zip(preds, batches, strict=True):
                        module.update_metrics(p, b)
                    module.val_metrics.compute()

                metric_s = timed(metric, args.repeats)
                callbacks = method_run.callbacks  # the supervised method's: the val_grid.png picture
                picture_s = timed(
                    lambda: [cb.on_validation_epoch_end(trainer, module) for cb in callbacks], args.repeats
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.count
    rows = [
        ["validate, first call (workers start)", f"{first:.2f}", f"{first / n * 1e3:.1f}"],
        ["validate, next calls (median)", f"{again:.2f}", f"{again / n * 1e3:.1f}"],
        ["  data: one pass over the loader", f"{data_s:.2f}", f"{data_s / n * 1e3:.1f}"],
        ["  forward", f"{forward_s:.2f}", f"{forward_s / n * 1e3:.1f}"],
        ["  loss", f"{loss_s:.2f}", f"{loss_s / n * 1e3:.1f}"],
        ["  metric (update + compute)", f"{metric_s:.2f}", f"{metric_s / n * 1e3:.1f}"],
        ["  picture (val_grid.png)", f"{picture_s:.2f}", f"{picture_s / n * 1e3:.1f}"],
    ]
    ratio = again / (forward_s + metric_s)
    table = common.markdown_table(["part", "seconds", "ms / image"], rows)
    text = (
        f"{table}\n\nvalidate / (forward + metric) = **{ratio:.2f}×** (next calls), {first / (forward_s + metric_s):.2f}× "
        f"(first call). `seg_tiny`, {n} toyworld wide images at {args.size}², batch 16, {args.workers} loader "
        f"worker(s), {args.threads} torch thread(s); 1-minute load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after."
    )
    print(text)
    command = "python benchmarks/bench_validation.py" + (
        "" if (args.count, args.size, args.workers, args.repeats) == (128, 128, 2, 3) else
        f" --count {args.count} --size {args.size} --workers {args.workers} --repeats {args.repeats}"
    )  # fmt: skip
    common.write_results("validation", text, {"seconds": dict(first=first, again=again, data=data_s,
                         forward=forward_s, loss=loss_s, metric=metric_s, picture=picture_s), "ratio": ratio},
                         command)  # fmt: skip


if __name__ == "__main__":
    main()
