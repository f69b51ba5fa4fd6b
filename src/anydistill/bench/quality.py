"""The quality figure of a benchmarked model on a data set, through :mod:`anydistill.eval`: δ1 for
depth (after per-image scale-and-shift alignment), mIoU for semantic segmentation, 1-click mIoU for a
promptable model (the simulated-click protocol)."""

from __future__ import annotations

from typing import Any

from anydistill.bench.targets import BenchTarget
from anydistill.eval.evaluate import evaluate, evaluate_promptable

__all__ = ["QUALITY_METRIC", "measure_quality"]

#: The figure on the Pareto picture's y axis, per task (a key of the evaluation's result).
QUALITY_METRIC = {"depth": "delta1", "semantic": "miou", "promptable": "miou@1"}


def measure_quality(target: BenchTarget, data: str, count: int, seed: int = 0) -> dict[str, Any]:
    """``{"metric", "quality", "metrics"}`` of ``target`` on ``count`` images of ``data``
    (``toyworld:<domain>`` or a folder with labels); a zoo name at random weights or a teacher folder has
    none (``quality`` is ``None``, ``note`` says why)."""
    metric = QUALITY_METRIC[target.task]
    if target.checkpoint is None:
        return {"metric": metric, "quality": None, "metrics": {}, "note": target.note}
    if target.task == "promptable":
        metrics = evaluate_promptable(target.checkpoint, data, count=count, max_clicks=1, seed=seed,
                                      progress=False)  # fmt: skip
    else:
        metrics = evaluate(
            target.checkpoint, data, count=count, image_size=target.side, seed=seed, progress=False
        )
    return {
        "metric": metric,
        "quality": float(metrics[metric]),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
