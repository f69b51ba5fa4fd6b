"""Check a written graph against the PyTorch model it came from, with onnxruntime on the CPU.

Inputs are what users feed: seeded random uint8 images through the real pre-processing
(``Predictor.prepare`` + ``preprocess.normalize`` for dense students, ``SamPredictor``'s resize +
``Sam.preprocess`` for SAM), and for SAM's prompt graph a set of prompts in original-image pixels
(one click + padding point, two clicks, a box as corner labels 2/3, a click with a box, a click with
the previous best low-res mask as ``mask_input``), on two image shapes (so a crop size frozen at
trace time shows). The PyTorch side is the model's ordinary path (``Predictor.run``,
``SamPredictor.predict``), not the export wrapper, so the wrapper is checked too.

Measures, per graph: ``max_abs_error`` (over every output and sample), ``rel_error`` = the largest
``max |onnx - torch| / max |torch|`` of any output (the output's scale), and
``mask_iou`` (SAM masks, logits > 0, pooled over every mask: intersection / union),
``end_to_end_mask_iou`` (ONNX encoder → ONNX decoder against PyTorch all the way),
``argmax_agreement`` (semantic: the share of pixels whose arg-max class agrees),
``detection_agreement`` (detectors: the share of detections, of the larger of the two lists, that pair
one-to-one with the same label at box IoU >= 0.9; errors and mask IoU are measured on those pairs).

Tolerances (:data:`TOLERANCES`), per precision:

* ``fp32``: ``rel_error <= 1e-3``, mask IoU ``>= 0.99``, arg-max / detection agreement ``>= 0.99``: float32
  re-association in onnxruntime's kernels gives ~1e-6 relative here; masks and classes can only flip
  where a logit is within rounding of a tie;
* ``fp16``: ``rel_error <= 3e-2``, IoU / agreement ``>= 0.95``: float16 keeps ~3 decimal digits per
  op, over a few dozen layers;
* ``int8``: ``rel_error <= 0.3``, IoU / agreement ``>= 0.8``: dynamic quantisation (activations
  quantised per call, convolutions too) moved trained students' outputs by 2-3 % of their scale here
  (toyworld depth / semantic / ``sam_tiny`` checkpoints), random-weight ones by 1-13 %, and a
  random-weight ``sam_tiny`` encoder at 1024² by 145 % (refused, with a hint to use fp16). These bounds
  catch a broken graph (wrong wiring, a frozen size, a dropped input); they do not certify accuracy:
  measure that on your data.

A disagreement raises :class:`ExportCheckError` (one line naming the graph and the numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from anydistill.errors import AnydistillError
from anydistill.export.deps import require_onnx
from anydistill.inference import Predictor
from anydistill.loading import LoadedModel
from anydistill.models.sam.sam import Sam
from anydistill.preprocess import long_side_shape
from anydistill.promptable.predictor import SamPredictor

__all__ = [
    "TOLERANCES",
    "ExportCheckError",
    "Tolerance",
    "check_dense",
    "check_detector",
    "check_sam",
    "open_session",
    "run_onnx",
    "verdict",
]


class ExportCheckError(AnydistillError):
    """An exported graph disagrees with its PyTorch model beyond the tolerance (nothing is kept)."""


@dataclass(frozen=True)
class Tolerance:
    """The limits a graph must meet (module docstring)."""

    rel_error: float
    mask_iou: float
    argmax_agreement: float


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rel_error=1e-3, mask_iou=0.99, argmax_agreement=0.99),
    "fp16": Tolerance(rel_error=3e-2, mask_iou=0.95, argmax_agreement=0.95),
    "int8": Tolerance(rel_error=0.3, mask_iou=0.8, argmax_agreement=0.8),
}


def open_session(path: Path, graph: str) -> Any:
    """An onnxruntime CPU session on ``path`` using torch's thread count (quiet: errors only).

    Raises:
        ExportCheckError: onnxruntime cannot load the graph.
    """
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error classes: report them in one line
        raise ExportCheckError(
            f"{graph}: onnxruntime cannot load the written graph ({_first_line(exc)})"
        ) from None


def run_onnx(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One onnxruntime run: the graph's outputs in order."""
    return session.run(None, feeds)


def _run(session: Any, feeds: dict[str, np.ndarray], graph: str) -> list[np.ndarray]:
    try:
        return [np.asarray(o) for o in run_onnx(session, feeds)]
    except Exception as exc:  # onnxruntime's own error classes: report them in one line
        raise ExportCheckError(
            f"{graph}: onnxruntime cannot run the written graph ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class _Agreement:
    """Pools the comparisons of one graph: errors per output, mask IoU, arg-max agreement."""

    def __init__(self, graph: str) -> None:
        self.graph = graph
        self.abs_error: dict[str, float] = {}
        self.scale: dict[str, float] = {}
        self.inter = self.union = self.masks = 0
        self.agree = self.pixels = 0

    def add(self, name: str, out: np.ndarray, ref: np.ndarray) -> None:
        if out.shape != ref.shape:
            raise ExportCheckError(
                f"{self.graph}: output {name!r} has shape {out.shape}, PyTorch's is {ref.shape}"
            )
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        err = float(diff.max()) if diff.size else 0.0
        if not np.isfinite(err):
            err = float("inf")
        self.abs_error[name] = max(self.abs_error.get(name, 0.0), err)
        self.scale[name] = max(self.scale.get(name, 0.0), float(np.abs(ref).max()) if ref.size else 0.0)

    def add_masks(self, out: np.ndarray, ref: np.ndarray, threshold: float = 0.0) -> None:
        a, b = out > threshold, ref > threshold
        self.masks += 1
        self.inter += int((a & b).sum())
        self.union += int((a | b).sum())

    def add_classes(self, out: np.ndarray, ref: np.ndarray) -> None:
        """Logits ``(B, K, H, W)``: arg-max over K."""
        self.agree += int((out.argmax(1) == ref.argmax(1)).sum())
        self.pixels += ref.shape[0] * ref.shape[2] * ref.shape[3]

    def metrics(self) -> dict[str, float]:
        rel = [e / max(self.scale[k], 1e-12) for k, e in self.abs_error.items()]
        out = {"max_abs_error": max(self.abs_error.values()), "rel_error": max(rel)}
        if self.masks:
            out["mask_iou"] = self.inter / self.union if self.union else 1.0
        if self.pixels:
            out["argmax_agreement"] = self.agree / self.pixels
        return out


def verdict(graph: str, precision: str, metrics: dict[str, float]) -> None:
    """Raise :class:`ExportCheckError` when ``metrics`` break ``precision``'s :class:`Tolerance`."""
    tol = TOLERANCES[precision]
    problems = []
    if not metrics["rel_error"] <= tol.rel_error:  # NaN fails too
        problems.append(
            f"max abs error {metrics['max_abs_error']:.3g} is {metrics['rel_error']:.3g} of the output scale "
            f"(limit {tol.rel_error:g})"
        )
    for key, limit in (
        ("mask_iou", tol.mask_iou),
        ("end_to_end_mask_iou", tol.mask_iou),
        ("argmax_agreement", tol.argmax_agreement),
        ("detection_agreement", tol.argmax_agreement),
    ):
        if key in metrics and not metrics[key] >= limit:
            problems.append(f"{key.replace('_', ' ')} {metrics[key]:.4f} (limit {limit:g})")
    if problems:
        hint = (
            "; dynamic int8 quantisation does not suit this model: try --fp16" if precision == "int8" else ""
        )
        raise ExportCheckError(
            f"{graph} ({precision}): onnxruntime disagrees with PyTorch: {'; '.join(problems)}{hint}; nothing kept"
        )


# ------------------------------------------------------------------------------------ dense students


def check_dense(
    session: Any, student: LoadedModel, size: int, batch: int = 1, seed: int = 0
) -> dict[str, float]:
    """The ``model`` graph on ``batch`` seeded random images prepared at side ``size`` (each a little
    wider than tall, so the resize and the padding are exercised) against ``Predictor.run``.

    Returns:
        ``max_abs_error``, ``rel_error`` (and ``argmax_agreement`` for a semantic student).
    """
    predictor = Predictor(student, image_size=size, batch_size=batch)
    rng = np.random.default_rng(seed)
    height, width = max(1, round(size * 0.75)), size + size // 3
    samples = [
        predictor.prepare(rng.integers(0, 256, (height + 5 * i, width, 3), dtype=np.uint8))
        for i in range(batch)
    ]
    x = predictor.preprocess.normalize(torch.stack([s["image"] for s in samples]))  # (B, 3, S, S)
    ref = predictor.run(samples).cpu().numpy()  # (B, C, S, S): the model's ordinary path
    (out,) = _run(session, {"image": x.numpy()}, "model")
    agreement = _Agreement("model")
    agreement.add("prediction", out, ref)
    if student.task == "semantic":
        agreement.add_classes(out, ref)
    return agreement.metrics()


# ----------------------------------------------------------------------------------------------- detectors
def _pair_detections(
    out: list[np.ndarray], ref: list[np.ndarray], iou_min: float = 0.5
) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs ``(onnx index, torch index)``: each PyTorch detection, by descending score,
    takes the unpaired ONNX detection of its label with the highest box IoU (at least ``iou_min``)."""
    if len(out[0]) == 0 or len(ref[0]) == 0:
        return []
    iou = box_iou(torch.from_numpy(ref[0]).double(), torch.from_numpy(out[0]).double()).numpy()  # (R, O)
    iou[ref[2][:, None] != out[2][None, :]] = -1.0  # another label never pairs
    pairs, taken = [], np.zeros(len(out[0]), dtype=bool)
    for r in np.argsort(-ref[1], kind="stable"):
        candidates = np.where(taken, -1.0, iou[r])
        o = int(candidates.argmax())
        if candidates[o] >= iou_min:
            taken[o] = True
            pairs.append((o, int(r)))
    return pairs


def check_detector(session: Any, student: LoadedModel, size: int) -> dict[str, float]:
    """The detector graph on two seeded random images, one landscape and one portrait (so the resize and
    the padding are exercised), prepared as ``anydistill predict`` prepares them (antialiased resize to
    long side ``size``, zero padding), against the model's ordinary path on the same input.

    Returns:
        ``max_abs_error``, ``rel_error`` (boxes in pixels, scores, mask probabilities, over the paired
        detections), ``detection_agreement``, ``detections`` (how many PyTorch found: a check over none
        says little), and ``mask_iou`` for Mask R-CNN.
    """
    model = student.model
    rng = np.random.default_rng(0)
    agreement = _Agreement("model")
    paired = total = found = 0
    for height, width in ((round(size * 0.75), size + size // 3), (size + size // 5, size // 2 + 3)):
        image = torch.from_numpy(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).permute(2, 0, 1)
        h, w = long_side_shape(height, width, size)
        x = F.interpolate(image[None].float() / 255.0, (h, w), mode="bilinear", antialias=True).clamp(0, 1)
        x = F.pad(x, (0, size - w, 0, size - h))  # (1, 3, S, S), the frame the graph takes
        with torch.inference_mode():
            ref_found = model(x)[0]
        names = ("boxes", "scores", "labels", "masks")
        ref = [
            ref_found[k].float().numpy() if k != "labels" else ref_found[k].numpy()
            for k in names
            if k in ref_found
        ]
        out = _run(session, {"image": x.numpy()}, "model")
        if len(out) != len(ref):
            raise ExportCheckError(f"model: the graph has {len(out)} outputs, PyTorch's detector {len(ref)}")
        pairs = _pair_detections(out, ref)
        o_idx = np.array([p[0] for p in pairs], dtype=np.int64)
        r_idx = np.array([p[1] for p in pairs], dtype=np.int64)
        good = 0
        if len(pairs):
            ious = box_iou(torch.from_numpy(out[0][o_idx]).double(), torch.from_numpy(ref[0][r_idx]).double())
            good = int((ious.diagonal() >= 0.9).sum())
        agreement.add("boxes", out[0][o_idx], ref[0][r_idx])
        agreement.add("scores", out[1][o_idx], ref[1][r_idx])
        if len(ref) == 4:
            agreement.add("masks", out[3][o_idx], ref[3][r_idx])
            agreement.add_masks(out[3][o_idx], ref[3][r_idx], threshold=0.5)
        paired += good
        total += max(len(out[0]), len(ref[0]))
        found += len(ref[0])
    metrics = agreement.metrics()
    metrics["detection_agreement"] = paired / total if total else 1.0
    metrics["detections"] = float(found)
    return metrics


# ----------------------------------------------------------------------------------------------- SAM


def _image_shapes(s: int) -> list[tuple[int, int]]:
    """Two original image shapes: landscape, shrunk to the frame, and portrait, enlarged."""
    return [(round(s * 0.6) + 1, s + s // 3), (s // 2 + 3, s // 3 + 1)]


def _prompts(height: int, width: int) -> list[dict[str, Any]]:
    """Prompts in original-image pixels (x, y): clicks, a box, both, and a click with a mask prompt."""

    def pt(fx: float, fy: float) -> list[float]:
        return [fx * (width - 1), fy * (height - 1)]

    box = np.array([*pt(0.2, 0.25), *pt(0.75, 0.8)])
    return [
        {"points": np.array([pt(0.45, 0.4)]), "labels": np.array([1])},
        {"points": np.array([pt(0.3, 0.3), pt(0.7, 0.6)]), "labels": np.array([1, 0])},
        {"box": box},
        {"points": np.array([pt(0.5, 0.55)]), "labels": np.array([1]), "box": box},
        {"points": np.array([pt(0.45, 0.4)]), "labels": np.array([1]), "mask_from": 0},
    ]


def decoder_feeds(
    predictor: SamPredictor, prompt: dict[str, Any], embedding: np.ndarray, mask: np.ndarray | None
) -> dict[str, np.ndarray]:
    """segment-anything's decoder inputs for ``prompt`` on the predictor's current image: points
    and box corners (labels 2, 3) mapped to the resized frame, a padding point when there is no box,
    ``mask`` ``(1, 4h, 4w)`` as ``mask_input`` with ``has_mask_input = 1`` when given."""
    orig = predictor.original_size
    coords, labels = [], []
    if "points" in prompt:
        coords.append(predictor.transform.apply_coords(prompt["points"].astype(np.float64), orig))
        labels.append(prompt["labels"].astype(np.float32))
    if "box" in prompt:
        coords.append(predictor.transform.apply_boxes(prompt["box"][None], orig).reshape(2, 2))
        labels.append(np.array([2, 3], np.float32))
    else:
        coords.append(np.zeros((1, 2)))
        labels.append(np.array([-1], np.float32))
    h, w = predictor.mask_input_size
    return {
        "image_embeddings": embedding,
        "point_coords": np.concatenate(coords)[None].astype(np.float32),  # (1, N, 2)
        "point_labels": np.concatenate(labels)[None],  # (1, N)
        "mask_input": (mask if mask is not None else np.zeros((1, h, w), np.float32))[None],  # (1, 1, 4h, 4w)
        "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
        "orig_im_size": np.array(orig, np.float32),
    }


def _predict(predictor: SamPredictor, prompt: dict[str, Any], mask: np.ndarray | None, multimask: bool):
    return predictor.predict(
        prompt.get("points"), prompt.get("labels"), prompt.get("box"), mask, multimask, return_logits=True
    )


def reference_masks(
    predictor: SamPredictor,
    prompt: dict[str, Any],
    mask: np.ndarray | None,
    decoder_masks: str,
    num_points: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's ``(masks (M, H, W), iou (M,), low_res (M, 4h, 4w))`` for ``prompt`` through
    ``SamPredictor.predict``: the 3 multimask outputs, mask token 0 (``"single"``), all four, token
    0 first (``"all"``), or segment-anything's ``select_masks`` choice among the four (``"best"``,
    ``num_points`` counting padding and box corners)."""
    if decoder_masks in ("multimask", "single"):
        return _predict(predictor, prompt, mask, decoder_masks == "multimask")
    multi, single = _predict(predictor, prompt, mask, True), _predict(predictor, prompt, mask, False)
    masks, iou, low = (np.concatenate([s, m]) for s, m in zip(single, multi, strict=True))  # 4 each
    if decoder_masks == "all":
        return masks, iou, low
    score = iou + (num_points - 2.5) * np.array([1000.0, 0.0, 0.0, 0.0])
    best = int(np.argmax(score))
    return masks[best : best + 1], iou[best : best + 1], low[best : best + 1]


@torch.no_grad()
def check_sam(
    encoder: Any, decoder: Any, sam: Sam, decoder_masks: str = "multimask", seed: int = 0
) -> dict[str, dict[str, float]]:
    """Both SAM graphs against ``SamPredictor`` on a seeded random image (module docstring).

    The decoder is fed PyTorch's embedding (its own error alone) and, for ``end_to_end_mask_iou``, the
    ONNX encoder's.

    Returns:
        ``{"image_encoder": {...}, "prompt_decoder": {...}}`` metrics.
    """
    s = sam.img_size
    rng = np.random.default_rng(seed)
    predictor = SamPredictor(sam)
    shapes = _image_shapes(s)
    image = rng.integers(0, 256, (*shapes[0], 3), dtype=np.uint8)
    resized = predictor.transform.apply_image(image)  # (h, w, 3) uint8, long side S
    x = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None])  # (1, 3, S, S)
    predictor.set_image(image)
    torch_embedding = predictor.get_image_embedding()  # (1, C, S/16, S/16)
    enc = _Agreement("image_encoder")
    (onnx_embedding,) = _run(encoder, {"image": x.numpy()}, "image_encoder")
    enc.add("image_embeddings", onnx_embedding, torch_embedding.numpy())

    dec = _Agreement("prompt_decoder")
    end_to_end = _Agreement("prompt_decoder")
    names = ("masks", "iou_predictions", "low_res_masks")
    for index, shape in enumerate(shapes):
        if index:  # the same embedding as another image's: what the decoder sees of the image's size
            predictor.set_embedding(torch_embedding, shape, long_side_shape(*shape, s))
        refs: list[tuple[np.ndarray, ...]] = []
        for prompt in _prompts(*shape):
            mask = None
            if "mask_from" in prompt:
                _, iou, low = refs[prompt["mask_from"]]
                mask = low[int(np.argmax(iou))][None]  # (1, 4h, 4w)
            feeds = decoder_feeds(predictor, prompt, torch_embedding.numpy(), mask)
            ref = reference_masks(predictor, prompt, mask, decoder_masks, feeds["point_coords"].shape[1])
            refs.append(ref)
            outs = _run(decoder, feeds, "prompt_decoder")
            for name, out, r in zip(names, outs, ref, strict=True):
                dec.add(name, out, r[None])
            dec.add_masks(outs[0], ref[0][None])
            if index == 0:
                feeds["image_embeddings"] = onnx_embedding
                end_to_end.add_masks(_run(decoder, feeds, "prompt_decoder")[0], ref[0][None])
    metrics = dec.metrics()
    metrics["end_to_end_mask_iou"] = end_to_end.inter / end_to_end.union if end_to_end.union else 1.0
    return {"image_encoder": enc.metrics(), "prompt_decoder": metrics}


def check_all(
    graphs: Sequence[str], metrics: dict[str, dict[str, float]], precision: str
) -> dict[str, dict[str, float]]:
    """:func:`verdict` on each graph's metrics, in order; returns ``metrics`` (rounded for the record)."""
    for graph in graphs:
        verdict(graph, precision, metrics[graph])
    return {g: {k: float(f"{v:.6g}") for k, v in metrics[g].items()} for g in graphs}
