"""The speed/quality picture: quality against latency, one panel per quality metric, the Pareto front
(no other model both faster and better) joined by a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from anydistill.atomic import atomic_path

matplotlib.use("Agg")  # files only: no display here or on a server
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["pareto_front", "save_pareto_png"]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower x and higher-or-equal y, or equal x and
    higher y), sorted by x: the models worth choosing when x is latency and y is quality."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def save_pareto_png(
    rows: list[dict[str, Any]],
    path: str | Path,
    title: str = "",
    xlabel: str = "latency at batch 1, ms (log scale, fastest backend)",
) -> Path | None:
    """One panel per metric: each row with ``latency_ms``, ``quality`` and ``metric`` is a labelled point;
    returns the PNG's path, or ``None`` (nothing written) when no row has a quality figure."""
    rows = [r for r in rows if r.get("quality") is not None and r.get("latency_ms") is not None]
    if not rows:
        return None
    metrics = sorted({r["metric"] for r in rows})
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        group = [r for r in rows if r["metric"] == metric]
        points = [(float(r["latency_ms"]), float(r["quality"])) for r in group]
        front = pareto_front(points)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#4477aa", zorder=3)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#ee6677", zorder=2,
                marker="o", markersize=11, markerfacecolor="none", label="Pareto front")  # fmt: skip
        for r, (x, y) in zip(group, points, strict=True):
            ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.35, y=0.12)  # room for the labels right of the points
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
