"""The export folder's contract: ``export.json`` and the same record in every graph's metadata.

An export folder ``DIR`` holds the graphs and ``DIR/export.json``::

    {"format": "anydistill-onnx", "version": 1,
     "task": "depth" | "semantic" | "promptable" | "detect",
     "preprocess": Preprocess.to_dict(),          # how images become the graph's "image" input
     "classes": ClassInfo.to_dict(),              # semantic, detect; {} otherwise
     "graphs": {"model": "model.onnx"}            # depth / semantic / detect
               | {"image_encoder": "image_encoder.onnx", "prompt_decoder": "prompt_decoder.onnx"},
     "opset": 17, "dynamic": false,
     "input_size": [H, W],                        # the static input side the graphs were checked at
     "precision": "fp32" | "fp16" | "int8",
     "mask_threshold": 0.0,                       # promptable only: a pixel is in a mask when logit > it
     "decoder_masks": "multimask" | "single" | "best" | "all",  # promptable only (see below)
     "postprocess": {"score_thresh": 0.05, "detections_per_img": 100, "arch": "retinanet"},  # detect only
     "dynamic_axes": {graph: {input: {axis: name}}},     # which input axes are free
     "source": "best.ckpt",                       # the checkpoint's file name
     "check": {graph: {"max_abs_error": ..., "rel_error": ...,
                       "mask_iou" | "argmax_agreement" | "detection_agreement": ...}}}

``decoder_masks``: the prompt decoder returns the 3 multimask outputs (``"multimask"``, mask tokens 1-3),
mask token 0 alone (``"single"``), segment-anything's ``return_single_mask`` choice (``"best"``), or all
4 tokens, token 0 first (``"all"``, upstream's default).
A graph larger than 2 GB keeps its weights beside it in ``<graph>.onnx.data`` (ONNX external data;
onnxruntime finds it when the graph is opened by path).

Every graph also carries the record without ``"check"`` as its ONNX ``metadata_props`` entry
``"anydistill"`` (JSON text), so a graph copied out of its folder still says how to feed it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anydistill.data.classes import ClassInfo
from anydistill.errors import DataError
from anydistill.preprocess import Preprocess

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_JSON",
    "EXPORT_TASKS",
    "EXPORT_VERSION",
    "GRAPH_FILES",
    "METADATA_KEY",
    "PRECISIONS",
    "build_manifest",
    "graph_metadata",
    "is_export_manifest",
    "read_manifest",
]

EXPORT_FORMAT = "anydistill-onnx"
EXPORT_VERSION = 1
EXPORT_JSON = "export.json"
METADATA_KEY = "anydistill"
EXPORT_TASKS = ("depth", "semantic", "promptable", "detect")
PRECISIONS = ("fp32", "fp16", "int8")
#: Graph name → file name, per task.
GRAPH_FILES: dict[str, dict[str, str]] = {
    "depth": {"model": "model.onnx"},
    "semantic": {"model": "model.onnx"},
    "detect": {"model": "model.onnx"},
    "promptable": {"image_encoder": "image_encoder.onnx", "prompt_decoder": "prompt_decoder.onnx"},
}


def build_manifest(
    task: str,
    preprocess: Preprocess,
    classes: ClassInfo,
    *,
    opset: int,
    dynamic: bool,
    input_size: tuple[int, int],
    precision: str,
    source: str,
    dynamic_axes: dict[str, dict[str, dict[int, str]]],
    decoder_masks: str | None = None,
    postprocess: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``export.json`` record (module docstring), without ``"check"`` (added once checked)."""
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "task": task,
        "preprocess": preprocess.to_dict(),
        "classes": classes.to_dict() if task in ("semantic", "detect") else {},
        "graphs": dict(GRAPH_FILES[task]),
        "opset": int(opset),
        "dynamic": bool(dynamic),
        "input_size": [int(input_size[0]), int(input_size[1])],
        "precision": precision,
    }
    if task == "promptable":
        manifest["mask_threshold"] = 0.0
        manifest["decoder_masks"] = decoder_masks or "all"
    if task == "detect":
        manifest["postprocess"] = dict(postprocess or {})
    manifest["dynamic_axes"] = {
        graph: {name: {str(axis): label for axis, label in axes.items()} for name, axes in inputs.items()}
        for graph, inputs in dynamic_axes.items()
    }
    manifest["source"] = source
    return manifest


def graph_metadata(manifest: dict[str, Any]) -> str:
    """The JSON text every graph stores under :data:`METADATA_KEY`: the record without ``"check"``."""
    return json.dumps({k: v for k, v in manifest.items() if k != "check"})


def is_export_manifest(data: Any) -> bool:
    """Whether ``data`` (parsed JSON) is an export record this version reads."""
    return isinstance(data, dict) and data.get("format") == EXPORT_FORMAT and "graphs" in data


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """``folder/export.json`` as a dict.

    Raises:
        DataError: no ``export.json``, unreadable JSON, or not an anydistill export record.
    """
    path = Path(folder) / EXPORT_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(folder, f"not an anydistill export (no {EXPORT_JSON})") from None
    except (OSError, ValueError) as exc:
        raise DataError(path, f"unreadable export record ({exc})") from None
    if not is_export_manifest(data):
        raise DataError(path, f"not an anydistill export record (format is not {EXPORT_FORMAT!r})")
    return data
