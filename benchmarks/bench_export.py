"""ONNX export (``anydistill export``): parity with PyTorch, parity with segment-anything's own exported
decoder, and onnxruntime latency against PyTorch eager.

(a) Parity: ``depth_tiny`` (at 518², padded to 544² as the CNN's stride needs), ``seg_tiny`` (21 classes,
    544²), ``sam_tiny`` and ``sam_vit_b`` (1024²), random weights from the zoo (SAM prompt encoder and
    mask decoder weights perturbed by 0.1·N(0, 1) so that no zero-initialised part hides a mistake),
    saved as anydistill checkpoints and exported by :func:`anydistill.export.export_model` in fp32 (and
    fp16 / int8 for the tiny models). The figures are the export's own check (onnxruntime CPU against
    the model's PyTorch path on a seeded random image, SAM on 5 prompt sets x 2 image shapes): largest
    absolute error, relative to the output's scale, mask IoU (logits > 0) or arg-max agreement, file
    size and export time (trace + convert + check).
(b) Our prompt decoder graph against segment-anything's exported one (``SamOnnxModel`` +
    ``torch.onnx.export`` as its ``scripts/export_onnx_model.py``; its crop is frozen at the export
    example's image size, so it is exported at the 480×640 test size), same weights, same prompts
    (a click, two clicks, a box, a click + box), a seeded random (1, 256, 64, 64) embedding: all 4
    masks and upstream's ``return_single_mask``.
(c) Latency, batch 1, 2 threads each (torch ``set_num_threads``, onnxruntime ``intra_op_num_threads``),
    and 1 thread each:
    ``depth_tiny`` at 544² and the ``sam_tiny`` image encoder at 1024², PyTorch eager
    (``inference_mode``; OpenMP threads sleep while waiting, ``OMP_WAIT_POLICY=PASSIVE``) against
    onnxruntime (CPU; its threads spin while waiting by default, so also a row without spinning, the
    like-for-like one on a machine other processes share), round-robin in one process, median.

    nice python benchmarks/bench_export.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import markdown_table, write_results
from segment_anything.utils.onnx import SamOnnxModel

from anydistill.data.classes import ClassInfo
from anydistill.export import ExportCheckError, export_model
from anydistill.export.graphs import export_graph, sam_decoder_graph
from anydistill.loading import model_record
from anydistill.models import build_model

THREADS = 2
IMAGE_HW = (480, 640)  # the original image of (b): its masks are upscaled to this size
DECODER_NAMES = [
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------------------------------
# checkpoints at random weights
# --------------------------------------------------------------------------------------------------


def _perturb_prompt_side(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for part in (model.prompt_encoder, model.mask_decoder):
            for p in part.parameters():
                p.add_(0.1 * torch.randn_like(p))


def save_checkpoint(name: str, folder: Path) -> tuple[Path, torch.nn.Module]:
    """A zoo model at random weights saved as training saves a student (``model.*`` + its record)."""
    torch.manual_seed(0)
    if name.startswith("sam_"):
        model = build_model(name)
        _perturb_prompt_side(model)
        arch, task, spec, classes = (
            {"model_name": name, "model_kwargs": {}},
            "promptable",
            model.preprocess_spec(),
            None,
        )
    elif name.startswith("seg_"):
        model = build_model(name, num_classes=21)
        arch = {"model_name": name, "model_kwargs": {}, "num_classes": 21}
        task, spec, classes = "semantic", model.preprocess_spec(544), ClassInfo([f"c{i}" for i in range(21)])
    else:
        model = build_model(name)
        arch = {"model_name": name, "model_kwargs": {}, "num_classes": None}
        task, spec, classes = "depth", model.preprocess_spec(544), None
    path = folder / f"{name}.ckpt"
    record = model_record(task, spec, arch, classes)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "anydistill_model": record},
        path,
    )
    return path, model.eval()


# --------------------------------------------------------------------------------------------------
# (a) parity with PyTorch
# --------------------------------------------------------------------------------------------------


def bench_parity(
    folder: Path, quick: bool
) -> tuple[str, list[dict], dict[str, Path], dict[str, torch.nn.Module]]:
    plan = [("depth_tiny", "fp32"), ("depth_tiny", "fp16"), ("depth_tiny", "int8")]
    plan += [("seg_tiny", "fp32"), ("seg_tiny", "fp16"), ("seg_tiny", "int8")]
    plan += [("sam_tiny", "fp32"), ("sam_tiny", "fp16"), ("sam_tiny", "int8")]
    if not quick:
        plan += [("sam_vit_b", "fp32")]
    checkpoints: dict[str, Path] = {}
    models: dict[str, torch.nn.Module] = {}
    exports: dict[str, Path] = {}
    rows, data = [], []
    for name, precision in plan:
        if name not in checkpoints:
            checkpoints[name], models[name] = save_checkpoint(name, folder)
        out = folder / f"{name}_{precision}"
        start = time.perf_counter()
        try:
            result = export_model(checkpoints[name], out, precision=precision)
        except ExportCheckError as exc:  # the check refused the graph: a row saying so
            rows.append([f"`{name}`", precision, "refused", "", "", f"`{exc}`", "", ""])
            data.append(dict(model=name, precision=precision, refused=str(exc)))
            print(rows[-1], flush=True)
            continue
        seconds = time.perf_counter() - start
        exports[f"{name}_{precision}"] = out
        size_mb = sum((out / f).stat().st_size for f in result.files) / 1e6
        for graph, m in result.manifest["check"].items():
            agreement = m.get("mask_iou", m.get("argmax_agreement"))
            extra = f" (end to end {m['end_to_end_mask_iou']:.4f})" if "end_to_end_mask_iou" in m else ""
            rows.append(
                [
                    f"`{name}`",
                    precision,
                    graph,
                    f"{m['max_abs_error']:.2g}",
                    f"{m['rel_error']:.2g}",
                    "–" if agreement is None else f"{agreement:.4f}{extra}",
                    f"{(out / result.manifest['graphs'][graph]).stat().st_size / 1e6:.1f}",
                    f"{seconds:.1f}" if graph in ("model", "image_encoder") else "",
                ]
            )
            data.append(
                dict(model=name, precision=precision, graph=graph, seconds=seconds, size_mb=size_mb, **m)
            )
        print(rows[-1], flush=True)
    header = [
        "model",
        "precision",
        "graph",
        "max abs error",
        "/ output scale",
        "mask IoU / arg-max agreement",
        "file MB",
        "export s (both graphs)",
    ]
    return markdown_table(header, rows), data, exports, models


# --------------------------------------------------------------------------------------------------
# (b) our decoder graph against segment-anything's
# --------------------------------------------------------------------------------------------------


class _SizeOnly(torch.nn.Module):
    """Stands in for upstream's image encoder where only ``img_size`` is read."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size


def _upstream_sam(ours: torch.nn.Module) -> torch.nn.Module:
    """segment_anything's SAM with ``ours``' prompt encoder and mask decoder weights (no image encoder)."""
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        sam = sam_model_registry["vit_b"]()
    sam.prompt_encoder.to_empty(device="cpu")
    sam.mask_decoder.to_empty(device="cpu")
    sam.prompt_encoder.load_state_dict(ours.prompt_encoder.state_dict())
    sam.mask_decoder.load_state_dict(ours.mask_decoder.state_dict())
    sam.image_encoder = _SizeOnly(1024)
    sam.pixel_mean, sam.pixel_std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    return sam.eval()


def _export_upstream(sam: torch.nn.Module, path: Path, return_single_mask: bool) -> None:
    model = SamOnnxModel(sam, return_single_mask=return_single_mask)
    dummy = (
        torch.randn(1, 256, 64, 64), torch.randint(0, 1024, (1, 5, 2)).float(), torch.randint(0, 4, (1, 5)).float(),
        torch.randn(1, 1, 256, 256), torch.tensor([1.0]), torch.tensor([float(IMAGE_HW[0]), float(IMAGE_HW[1])]),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, dummy, str(path), input_names=DECODER_NAMES,
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=17, do_constant_folding=True, dynamo=False,
        )  # fmt: skip


def _session(path: Path, spinning: bool = True, threads: int = THREADS) -> ort.InferenceSession:
    """A CPU session on ``threads`` threads; ``spinning=False``: its threads sleep while they wait, as
    torch's do here (``OMP_WAIT_POLICY=PASSIVE``, set by benchmarks/common.py and the anydistill CLI)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _prompt_feeds() -> list[dict[str, np.ndarray]]:
    """A click, two clicks (with the padding point), a box (corners 2/3), a click + box; input frame (768×1024)."""
    box = [[200.0, 150.0], [700.0, 600.0]]
    sets = [
        ([[500.0, 380.0], [0, 0]], [1, -1]),
        ([[300.0, 250.0], [650.0, 500.0], [0, 0]], [1, 0, -1]),
        (box, [2, 3]),
        ([[450.0, 400.0], *box], [1, 2, 3]),
    ]
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0)).numpy()
    return [
        {
            "image_embeddings": embedding,
            "point_coords": np.array([coords], np.float32),
            "point_labels": np.array([labels], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(IMAGE_HW, np.float32),
        }
        for coords, labels in sets
    ]


def bench_upstream(folder: Path, models: dict[str, torch.nn.Module]) -> tuple[str, list[dict]]:
    rows, data = [], []
    for name in [n for n in ("sam_tiny", "sam_vit_b") if n in models]:
        upstream = _upstream_sam(models[name])
        for mode, single in (("all", False), ("best", True)):
            ours_path = folder / f"{name}_decoder_{mode}.onnx"  # the decoder graph export_model writes
            export_graph(sam_decoder_graph(models[name], mode), ours_path, opset=17)
            _export_upstream(upstream, folder / f"{name}_upstream_{mode}.onnx", single)
            ours = _session(ours_path)
            theirs = _session(folder / f"{name}_upstream_{mode}.onnx")
            inter = union = 0
            err = 0.0
            for feeds in _prompt_feeds():
                a, b = ours.run(None, feeds)[0], theirs.run(None, feeds)[0]
                inter += int(((a > 0) & (b > 0)).sum())
                union += int(((a > 0) | (b > 0)).sum())
                err = max(err, float(np.abs(a - b).max()))
            iou = inter / max(union, 1)
            label = "all 4 masks" if mode == "all" else "`return_single_mask`"
            rows.append([f"`{name}` decoder", label, 4, f"{iou:.4f}", f"{err:.2g}"])
            data.append(dict(model=name, mode=mode, prompts=4, mask_iou=iou, max_abs_error=err))
            print(rows[-1], flush=True)
    header = [
        "weights",
        "masks",
        "prompt sets",
        "mask IoU ours vs segment-anything's graph",
        "max abs logit diff",
    ]
    return markdown_table(header, rows), data


# --------------------------------------------------------------------------------------------------
# (c) latency
# --------------------------------------------------------------------------------------------------


def timed(runs: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call of each callable, ``repeats`` times, round-robin after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runs.values():
                run()
        for _ in range(repeats):
            for label, run in runs.items():
                start = time.perf_counter()
                run()
                times[label].append((time.perf_counter() - start) * 1000)
    return times


def bench_latency(
    exports: dict[str, Path], models: dict[str, torch.nn.Module], warmup: int, repeats: int
) -> tuple[str, list[dict]]:
    """Each case at ``THREADS`` threads and at 1 thread (torch and onnxruntime alike), round-robin."""
    cases = [
        ("`depth_tiny`, 544² (518² padded)", models["depth_tiny"], "depth_tiny", "model.onnx", 544),
        (
            "`sam_tiny` image encoder, 1024²",
            models["sam_tiny"].image_encoder,
            "sam_tiny",
            "image_encoder.onnx",
            1024,
        ),
    ]
    variants = [("fp32", True), ("fp32", False), ("fp16", True), ("int8", True)]
    rows, data = [], []
    for threads in (THREADS, 1):
        torch.set_num_threads(threads)
        runs: dict[str, Callable[[], object]] = {}
        for label, module, name, graph, side in cases:
            x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
            runs[f"{label}|PyTorch eager"] = lambda m=module, x=x: m(x)
            for precision, spinning in variants:
                if f"{name}_{precision}" not in exports:  # refused by the check
                    continue
                session = _session(exports[f"{name}_{precision}"] / graph, spinning, threads)
                feeds = {session.get_inputs()[0].name: x.numpy()}
                runtime = f"onnxruntime {precision}" + ("" if spinning else ", no spinning")
                runs[f"{label}|{runtime}"] = lambda s=session, f=feeds: s.run(None, f)
        times = timed(runs, warmup, repeats)
        for label, *_ in cases:
            eager = statistics.median(times[f"{label}|PyTorch eager"])
            for key in [k for k in times if k.startswith(f"{label}|")]:
                runtime, t = key.split("|", 1)[1], times[key]
                med = statistics.median(t)
                rows.append(
                    [
                        label,
                        threads,
                        runtime,
                        f"{med:.1f}",
                        f"{min(t):.1f}–{max(t):.1f}",
                        f"{eager / med:.2f}×",
                    ]
                )
                data.append(
                    dict(case=label, threads=threads, runtime=runtime, median_ms=med, times_ms=t,
                         speedup_vs_eager=eager / med)
                )  # fmt: skip
        print(rows[-1], flush=True)
    torch.set_num_threads(THREADS)
    header = ["model, batch 1", "threads", "runtime", "ms (median)", "min–max ms", "speed-up vs eager"]
    return markdown_table(header, rows), data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="no sam_vit_b; 1 warm-up + 3 timed runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    warmup, repeats = (1, 3) if args.quick else (2, 10)
    load_before = load_average()
    if load_before > 0.5:
        print(
            f"warning: load average {load_before:.2f}: other processes will distort the timings",
            file=sys.stderr,
        )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        folder = Path(tmp)
        parity_table, parity, exports, models = bench_parity(folder, args.quick)
        upstream_table, upstream = bench_upstream(folder, models)
        latency_table, latency = bench_latency(exports, models, warmup, repeats)
    load_after = load_average()
    note = (
        f"\n\nRandom weights; export checks on onnxruntime {ort.__version__} CPU, opset 17, static shapes. "
        f"Latency: {THREADS} threads each, then 1 thread each, {warmup} warm-up + {repeats} timed runs, "
        "round-robin. PyTorch's OpenMP threads wait passively (`OMP_WAIT_POLICY=PASSIVE`, as the CLI sets): "
        "on a shared, busy 2-core machine its 2-thread runs stall at every barrier, so the 1-thread rows "
        "compare the runtimes themselves. "
        f"1-min load average before/after: {load_before:.2f}/{load_after:.2f}; whole run "
        f"{time.perf_counter() - start:.0f} s."
    )
    table = "\n\n".join([parity_table, upstream_table, latency_table]) + note
    print(table)
    command = "nice python benchmarks/bench_export.py" + (" --quick" if args.quick else "")
    path = write_results(
        "export" + ("_quick" if args.quick else ""),
        table,
        {
            "parity": parity,
            "vs_segment_anything": upstream,
            "latency": latency,
            "threads": THREADS,
            "load_before": load_before,
            "load_after": load_after,
        },
        command,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
