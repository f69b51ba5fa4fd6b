"""``anydistill export``: a checkpoint → checked ONNX graphs in a folder (:func:`export_model`).

Steps: refuse bad arguments and a foreign output folder (before loading anything); load the model
(:func:`anydistill.loading.load_model`: anydistill checkpoints of depth / semantic / promptable
students, official segment-anything ``.pth`` files); trace each graph (:mod:`.graphs`) into a staging
folder inside ``DIR``; convert precision and store the metadata (:mod:`.onnx_file`); run each graph with
onnxruntime against PyTorch (:mod:`.check`); only then move the files in and write ``export.json``
(:mod:`.files`, :mod:`.manifest`). A graph that disagrees is refused and nothing of it is kept.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from anydistill.errors import ConfigError, DataError
from anydistill.export.check import (
    ExportCheckError,
    check_all,
    check_dense,
    check_detector,
    check_sam,
    open_session,
    verdict,
)
from anydistill.export.deps import require_onnx
from anydistill.export.files import Staging, check_output_folder, commit
from anydistill.export.graphs import (
    MAX_OPSET,
    MIN_OPSET,
    GraphSpec,
    dense_graph,
    detector_graph,
    export_graph,
    sam_decoder_graph,
    sam_encoder_graph,
)
from anydistill.export.manifest import EXPORT_TASKS, GRAPH_FILES, PRECISIONS, build_manifest, graph_metadata
from anydistill.export.onnx_file import EXTERNAL_DATA_THRESHOLD, finish_graph
from anydistill.export.sam_decoder import DECODER_MASKS
from anydistill.inference import Predictor
from anydistill.loading import LoadedModel, load_model

__all__ = ["FORMATS", "ExportResult", "export_model"]

FORMATS = ("onnx",)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the folder, its ``export.json`` record, the file names."""

    out: Path
    manifest: dict[str, Any]
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.manifest
        h, w = m["input_size"]
        kind = "dynamic" if m["dynamic"] else "static"
        lines = [
            f"exported a {m['task']} model ({m['precision']}, opset {m['opset']}, {kind}, input {h}x{w}) "
            f"to {self.out} in {self.seconds:.1f} s:"
        ]
        for name in self.files:
            lines.append(f"  {name} ({(self.out / name).stat().st_size / 1e6:.1f} MB)")
        for graph, metrics in m["check"].items():
            parts = [f"max abs error {metrics['max_abs_error']:.3g} ({metrics['rel_error']:.2g} of scale)"]
            parts += [
                f"{k.replace('_', ' ')} {v:.4f}"
                for k, v in metrics.items()
                if k.endswith(("iou", "agreement"))
            ]
            lines.append(f"  check {graph} vs PyTorch: {', '.join(parts)}")
        return "\n".join(lines)


def _check_args(format: str, opset: int, precision: str, size: int | None, decoder_masks: str) -> None:
    if format not in FORMATS:
        raise ConfigError(f"--format: must be one of {list(FORMATS)}, got {format!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset: must be {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: must be one of {list(PRECISIONS)}, got {precision!r}")
    if size is not None and size < 1:
        raise ConfigError(f"--size: must be at least 1, got {size}")
    if decoder_masks not in DECODER_MASKS:
        raise ConfigError(f"--decoder-masks: must be one of {list(DECODER_MASKS)}, got {decoder_masks!r}")


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    format: str = "onnx",
    dynamic: bool = False,
    opset: int = 17,
    precision: str = "fp32",
    size: int | None = None,
    decoder_masks: str = "all",
    min_score: float | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> ExportResult:
    """Export ``checkpoint`` to ONNX graphs in the folder ``out`` and check them against PyTorch.

    Args:
        checkpoint: an anydistill checkpoint of a depth / semantic / promptable / detect model, or an official
            segment-anything ``.pth``.
        out: a new or empty folder, or an earlier export (replaced).
        format: ``"onnx"``.
        dynamic: depth / semantic: free batch (and height / width where the model allows); static
            ``(1, 3, S, S)`` otherwise. Not for promptable models (their decoder's point count is
            always free, their encoder static).
        opset: ONNX opset, 14..20.
        precision: ``"fp32"``, ``"fp16"`` (float16 weights and compute) or ``"int8"`` (dynamically
            quantised weights); inputs and outputs stay float32.
        size: the input side ``S`` of dense students (default: the checkpoint's pre-processing size;
            a multiple of the model's ``preprocess.multiple``); promptable models export at their own
            ``img_size``.
        decoder_masks: the masks the prompt decoder returns: ``"all"`` (4, token 0 first: segment-anything's
            default export, from which :class:`~anydistill.runtime.sam.OnnxSamPredictor` takes the 3 masks of
            an ambiguous prompt or the single one), ``"multimask"`` (3), ``"single"`` (mask token 0) or
            ``"best"`` (segment-anything's ``return_single_mask``) (:mod:`~anydistill.export.sam_decoder`).
        min_score: detectors: the lowest score the graph keeps (default: the model's own, 0.05); the
            threshold, NMS and top-k are inside the graph.
        external_data_threshold: tensor bytes above which a graph keeps its weights in ``<graph>.data``.

    Returns:
        the folder, its record (``export.json``, with the check's numbers) and the files written.

    Raises:
        ConfigError: a bad argument, or onnx / onnxruntime missing.
        DataError: a missing or unreadable checkpoint, a classifier, an output folder that is a file or a
            non-empty folder that is not an anydistill export.
        ExportCheckError: a graph disagrees with PyTorch beyond the tolerance (nothing written).
    """
    _check_args(format, opset, precision, size, decoder_masks)
    require_onnx()
    path, out = Path(checkpoint), Path(out)
    if path.is_dir():
        raise DataError(path, "is a folder; give a checkpoint file (.ckpt or segment-anything .pth)")
    if not path.is_file():
        raise DataError(path, "no such checkpoint file")
    check_output_folder(out)
    loaded = load_model(path)
    if loaded.task not in EXPORT_TASKS:
        raise DataError(
            path, f"is a {loaded.task!r} model; export supports depth, semantic, promptable and detect models"
        )
    if loaded.task == "detect" and dynamic:
        raise ConfigError(
            "--dynamic: a detector exports for one (1, 3, S, S) image at a time; its detections are always free"
        )
    if min_score is not None and (loaded.task != "detect" or not 0 <= min_score <= 1):
        raise ConfigError(f"--min-score {min_score}: a detector's lowest kept score, in [0, 1]")
    if loaded.task == "promptable" and dynamic:
        raise ConfigError(
            "--dynamic: a promptable model's image encoder is static at its input size; its prompt "
            "decoder always takes any number of points"
        )
    start = time.perf_counter()
    options = dict(opset=opset, precision=precision, threshold=external_data_threshold)
    with Staging(out) as stage:
        if loaded.task == "promptable":
            files, manifest = _export_sam(loaded, stage, size, decoder_masks, **options)
        elif loaded.task == "detect":
            files, manifest = _export_detector(loaded, stage, size, min_score, **options)
        else:
            files, manifest = _export_dense(loaded, stage, size, dynamic, **options)
        commit(stage, out, files, manifest)
    return ExportResult(out, manifest, files, time.perf_counter() - start)


def _write(spec: GraphSpec, task: str, stage: Path, manifest: dict[str, Any], **options: Any) -> list[str]:
    """Trace ``spec`` and write its finished graph into ``stage``; returns the file names."""
    traced_dir = stage / f"traced-{spec.name}"  # torch writes > 2 GB graphs as one file per tensor
    traced_dir.mkdir()
    traced = traced_dir / "traced.onnx"
    export_graph(spec, traced, options["opset"])
    target = stage / GRAPH_FILES[task][spec.name]
    files = finish_graph(traced, target, options["precision"], graph_metadata(manifest), options["threshold"])
    shutil.rmtree(traced_dir)
    return files


def _manifest(loaded: LoadedModel, specs: list[GraphSpec], size: int, dynamic: bool, **extra: Any) -> dict:
    """The record of ``specs`` (``extra``: opset, precision, and the task's own fields)."""
    return build_manifest(
        loaded.task,
        extra.get("preprocess") or loaded.preprocess.with_size(size),
        loaded.classes,
        opset=extra["opset"],
        dynamic=dynamic,
        input_size=(size, size),
        precision=extra["precision"],
        source=loaded.path.name if loaded.path else "",
        dynamic_axes={spec.name: spec.input_axes() for spec in specs},
        decoder_masks=extra.get("decoder_masks"),
        postprocess=extra.get("postprocess"),
    )


def _worst(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Per metric the worse of two checks (larger errors, smaller agreements)."""
    return {k: (max if "error" in k else min)(v, b[k]) if k in b else v for k, v in a.items()}


def _export_dense(
    loaded: LoadedModel, stage: Path, size: int | None, dynamic: bool, **options: Any
) -> tuple[list[str], dict[str, Any]]:
    """The ``model`` graph; with ``dynamic``, free height / width unless the check at a second size
    shows the trace froze them (then free batch only)."""
    s = int(size or loaded.preprocess.size)
    Predictor(loaded, image_size=s)  # refuses a size the model cannot take (one line), before tracing
    precision = options["precision"]
    for spatial in (True, False) if dynamic else (False,):
        spec = dense_graph(loaded.model, s, batch=dynamic, spatial=spatial)
        manifest = _manifest(loaded, [spec], s, dynamic, **options)
        files = _write(spec, loaded.task, stage, manifest, **options)
        session = open_session(stage / files[0], "model")
        metrics = check_dense(session, loaded, s, batch=2 if dynamic else 1)
        verdict("model", precision, metrics)  # a disagreement at S is not the free axes' fault
        if spatial:
            m = loaded.preprocess.multiple
            other = s + max(m, s // 4 // m * m)  # a second side, about 1.25 S, still a multiple of m
            try:
                second = check_dense(session, loaded, other, batch=1, seed=1)
                verdict("model", precision, second)
            except ExportCheckError:
                continue  # the trace froze the input size: export with a free batch only
            metrics = _worst(metrics, second)
        manifest["check"] = check_all(["model"], {"model": metrics}, precision)
        return files, manifest
    raise AssertionError("unreachable: the batch-only attempt returns or raises")


def _export_sam(
    loaded: LoadedModel, stage: Path, size: int | None, decoder_masks: str, **options: Any
) -> tuple[list[str], dict[str, Any]]:
    """``image_encoder`` and ``prompt_decoder`` graphs, checked together."""
    sam = loaded.model
    s = sam.img_size
    if size is not None and size != s:
        raise ConfigError(f"--size {size}: a promptable model exports at its own input size, {s}")
    specs = [sam_encoder_graph(sam), sam_decoder_graph(sam, decoder_masks)]
    manifest = _manifest(loaded, specs, s, False, decoder_masks=decoder_masks, **options)
    files = [name for spec in specs for name in _write(spec, "promptable", stage, manifest, **options)]
    encoder = open_session(stage / GRAPH_FILES["promptable"]["image_encoder"], "image_encoder")
    decoder = open_session(stage / GRAPH_FILES["promptable"]["prompt_decoder"], "prompt_decoder")
    metrics = check_sam(encoder, decoder, sam, decoder_masks)
    manifest["check"] = check_all(["image_encoder", "prompt_decoder"], metrics, options["precision"])
    return files, manifest


def _export_detector(
    loaded: LoadedModel, stage: Path, size: int | None, min_score: float | None, **options: Any
) -> tuple[list[str], dict[str, Any]]:
    """The ``model`` graph of a detector: one image in, its post-processed detections out.

    At a positive score threshold the check's random images may leave no detection to compare, so the
    same network is also traced with threshold 0 (a probe graph, checked, then deleted): every export is
    checked on the detector's full top-k, and on its real graph as well."""
    model = loaded.model
    s = int(size or model.input_size)
    if s % model.input_multiple:
        raise ConfigError(
            f"--size {s}: a multiple of {model.input_multiple} (this detector's padding multiple)"
        )
    if min_score is not None:
        model.set_postprocess(score_thresh=min_score)
    post = {"arch": model.arch, **model.postprocess_settings()}
    spec = detector_graph(model, s)
    # the graph takes [0, 1] pixels and normalises inside: the record says so (mean 0, std 1)
    frame = replace(loaded.preprocess.with_size(s), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    manifest = _manifest(loaded, [spec], s, False, postprocess=post, preprocess=frame, **options)
    files = _write(spec, "detect", stage, manifest, **options)
    metrics = check_detector(open_session(stage / files[0], "model"), loaded, s)
    if post["score_thresh"] > 0:
        probe_dir = stage / "probe"
        probe_dir.mkdir()
        model.set_postprocess(score_thresh=0.0)
        try:
            export_graph(detector_graph(model, s), probe_dir / "traced.onnx", options["opset"])
            finish_graph(probe_dir / "traced.onnx", probe_dir / "probe.onnx", options["precision"],
                         graph_metadata(manifest), options["threshold"])  # fmt: skip
            probe = check_detector(open_session(probe_dir / "probe.onnx", "model"), loaded, s)
        finally:
            model.set_postprocess(score_thresh=post["score_thresh"])
            shutil.rmtree(probe_dir, ignore_errors=True)
        metrics = {**_worst(metrics, probe), "detections": probe["detections"],
                   "detections_at_threshold": metrics["detections"]}  # fmt: skip
    if not metrics["detections"] > 0:
        raise ExportCheckError(
            "model: the check compared no detections (the detector found none); nothing kept"
        )
    manifest["check"] = check_all(["model"], {"model": metrics}, options["precision"])
    return files, manifest
