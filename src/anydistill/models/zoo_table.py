"""What ``anydistill models`` prints: each zoo model's task, backbone, size, compute and input, and the
latency and test quality measured by the committed benchmarks where there are some.

Parameters and GFLOPs are counted on the ``meta`` device (no weights are allocated and nothing is
computed), so even ``sam_vit_h`` (641 M parameters, 6 TFLOPs at 1024²) is listed in a fraction of a
second. Measured figures come from ``measured.json`` beside this module, written from
``benchmarks/results/bench_zoo/bench.json`` (latency) and the semantic peer benchmark's results (test
mIoU on em-membranes and toyworld, mean ± SD over seeds) by ``python benchmarks/update_zoo_figures.py``:
the machine and thread count, the data and the result file travel with them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib.resources import files
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from anydistill.models.detection import DetectionModel
from anydistill.models.task_models import DepthModel, SegmentationModel
from anydistill.models.zoo import build_model, list_models

__all__ = ["ZooEntry", "measured_figures", "zoo_table"]

#: The long side a dense zoo model is listed at (Depth Anything's 518, rounded up to the model's stride).
LISTED_SIZE = 518


@dataclass(frozen=True)
class ZooEntry:
    """One row of the zoo table; ``latency_ms`` / ``fastest_ms`` are ``None`` where nothing was measured;
    ``quality``: the committed benchmarks' test figures, each ``{"metric", "data", "mean", "sd", "seeds",
    "sources"}`` (empty where none)."""

    name: str
    task: str
    backbone: str
    params_m: float
    gflops: float
    input_size: int
    latency_ms: float | None = None
    fastest_ms: float | None = None
    fastest_backend: str | None = None
    quality: tuple[dict[str, Any], ...] = ()


def _task(model: nn.Module) -> str:
    """The task of a registered model, from its type (a model registered by a user has any name)."""
    if isinstance(model, DepthModel):
        return "depth"
    if isinstance(model, SegmentationModel):
        return "semantic"
    if isinstance(model, DetectionModel):
        return "detect"
    return "promptable" if hasattr(model, "image_encoder") else type(model).__name__


def _backbone(model: nn.Module) -> str:
    """The timm architecture behind the model (a SAM ViT encoder's timm name, a student encoder's CNN)."""
    encoder = getattr(model, "backbone", None) or getattr(model, "image_encoder", None)
    for key in ("name", "timm_name", "backbone_name"):
        value = getattr(encoder, key, None)
        if isinstance(value, str):
            return value
    return type(encoder).__name__


def measured_figures() -> dict[str, Any]:
    """``measured.json``'s content: ``{"machine", "threads", "command", "models": {name: {...}}}``
    (empty when the file is absent)."""
    resource = files("anydistill.models").joinpath("measured.json")
    return json.loads(resource.read_text()) if resource.is_file() else {}


def zoo_table() -> list[ZooEntry]:
    """Every registered zoo model, counted on the meta device at its listed input."""
    measured = measured_figures().get("models", {})
    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = build_model(name).eval()
        task = _task(model)
        if task == "promptable":
            side, module = int(model.img_size), model.image_encoder  # the encoder: the per-image cost
        elif task == "detect":
            side, module = int(model.input_size), model  # its own default input (the data resizes to it)
        else:
            multiple = int(model.input_multiple)
            side, module = -(-LISTED_SIZE // multiple) * multiple, model
        counter = FlopCounterMode(display=False)
        run = module.forward_network if isinstance(module, DetectionModel) else module
        with torch.no_grad(), counter:
            run(torch.empty(1, 3, side, side, device="meta"))
        figures = measured.get(name, {})
        rows.append(ZooEntry(
            name=name, task=task, backbone=_backbone(model), params_m=sum(p.numel() for p in model.parameters()) / 1e6,
            gflops=counter.get_total_flops() / 1e9, input_size=side, latency_ms=figures.get("eager_ms"),
            fastest_ms=figures.get("fastest_ms"), fastest_backend=figures.get("fastest_backend"),
            quality=tuple(figures.get("quality", ())),
        ))  # fmt: skip
    return rows


def quality_text(figures: tuple[dict[str, Any], ...]) -> str:
    """``test mIoU 0.754 ± 0.000 em-membranes (2 seeds); 0.242 ± 0.002 toyworld (2 seeds)`` (– for none)."""
    parts, metric = [], None
    for f in figures:
        spread = "" if f["sd"] is None else f" ± {f['sd']:.3f}"
        name = "" if f["metric"] == metric else f"{f['metric']} "
        metric = f["metric"]
        seeds = f"{f['seeds']} seed{'s' if f['seeds'] > 1 else ''}"
        parts.append(f"{name}{f['mean']:.3f}{spread} {f['data']} ({seeds})")
    return "; ".join(parts) or "–"


def markdown_table(rows: list[ZooEntry]) -> str:
    """The table ``anydistill models`` prints, with the measurement's conditions below it."""
    head = ["model", "task", "backbone", "params (M)", "GFLOPs", "input", "ms eager", "ms fastest (backend)",
            "test quality (benchmark)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        eager = "–" if r.latency_ms is None else f"{r.latency_ms:.0f}"
        fastest = "–" if r.fastest_ms is None else f"{r.fastest_ms:.0f} ({r.fastest_backend})"
        lines.append(f"| {r.name} | {r.task} | {r.backbone} | {r.params_m:.2f} | {r.gflops:.1f} | "
                     f"{r.input_size}² | {eager} | {fastest} | {quality_text(r.quality)} |")  # fmt: skip
    info = measured_figures()
    lines.append("")
    lines.append(
        "GFLOPs at the listed input, batch 1 (promptable: the image encoder, which runs once per image; "
        "detect: backbone, FPN and dense head, before the RoI heads and NMS)."
    )
    if info:
        lines.append(f"Latency at batch 1, measured by `{info['command']}` on {info['machine']}, {info['threads']} "
                     "thread(s); – : not measured.")  # fmt: skip
    sources = sorted({s for r in rows for f in r.quality for s in f["sources"]})
    if sources:
        lines.append("Test quality: random initialisation, the same step budget for every model, checkpoint "
                     "chosen on a validation split, mean ± SD over seeds (`benchmarks/bench_semantic_peer.py`; "
                     f"raw: {', '.join(sources)}).")  # fmt: skip
    return "\n".join(lines)


def as_json(rows: list[ZooEntry]) -> str:
    """The table as JSON (``anydistill models --json``)."""
    return json.dumps({"models": [asdict(r) for r in rows], "measured": {k: v for k, v in measured_figures().items()
                                                                         if k != "models"}}, indent=2)  # fmt: skip
