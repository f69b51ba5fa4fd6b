"""What is traced into each ONNX graph, and the trace itself.

Graphs per task (every input and output float32):

* depth / semantic: ``model``: ``image (B, 3, H, W)`` → ``prediction (B, C, H, W)`` (depth C = 1
  relative disparity, semantic C = K logits). ``image`` is the normalised, padded input
  ``Predictor.run`` hands the model (``preprocess.normalize`` of the ``S x S`` padded image).
  Static: ``B = 1``, ``H = W = S``. ``dynamic``: ``B`` free (axis ``batch``) and, where the model
  allows (checked at a second size, else only ``B``), ``H``/``W`` (``height``/``width``, multiples of
  ``preprocess.multiple``).
* detect: ``model``: ``image (1, 3, S, S)`` in [0, 1], resized to long side ``S`` and zero-padded
  (the detector normalises inside) → ``boxes (N, 4)`` xyxy in that frame's pixels, ``scores (N,)``,
  ``labels (N,)`` int64, and for Mask R-CNN ``masks (N, 1, S, S)`` probabilities; the whole
  post-processing (threshold, NMS, top-k) is in the graph, ``N`` free, the input static.
* promptable: ``image_encoder``: ``image (1, 3, S, S)`` (``Sam.preprocess``'s output) →
  ``image_embeddings (1, C, S/16, S/16)``, static (SAM's position embeddings and windows are laid out
  for ``S``); ``prompt_decoder``: segment-anything's exported decoder interface
  (:mod:`anydistill.export.sam_decoder`), ``num_points`` dynamic, the output masks' size from
  ``orig_im_size``.

The resizes in these graphs are bilinear without antialiasing (DPT / FPN heads, the SAM mask
post-processing); the DPT fusion's ``scale_factor=2`` and the FPN's ``nn.Upsample(scale_factor=2)``
become ``Resize`` with constant scales, which onnxruntime computes as PyTorch does (the check below
measures it). The pre-processing's antialiased resize stays outside the graphs (it is the caller's,
as in ``Predictor``).

Exporter: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript tracer). It exports all three
families correctly at opsets 14-20 (checked against PyTorch on every export), with free batch / height
/ width from ``dynamic_axes``, in about a second for the tiny models. The dynamo exporter
(torch 2.14) writes opset 18 natively: asked for 17 it down-converts, and the decoder it wrote then
was invalid (``ReduceMax`` with an opset-18 attribute); at 18 its decoder was correct but took 20 s
against the tracer's 1 s, and it needs ``onnxscript``. The tracer's one trap is a Python ``int()`` of a
tensor, frozen to the example's value (segment-anything's own decoder crop is, so its graph crops
every other image size wrongly); our decoder slices with tensors, and the check runs a second image
size to catch any frozen size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from anydistill.errors import ConfigError
from anydistill.export.sam_decoder import DECODER_INPUTS, DECODER_OUTPUTS, SamOnnxDecoder
from anydistill.models.sam.sam import Sam

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "DETECTOR_OUTPUTS",
    "DetectorGraph",
    "GraphSpec",
    "dense_graph",
    "detector_graph",
    "export_graph",
    "sam_decoder_graph",
    "sam_encoder_graph",
]

#: The opsets accepted: from 14 (what the export is tested at, with 17 the default) to the newest the
#: TorchScript exporter writes.
MIN_OPSET = 14
MAX_OPSET = 20


@dataclass
class GraphSpec:
    """One graph to trace: ``module(*example)`` with named inputs/outputs and the free axes."""

    name: str
    module: nn.Module
    example: tuple[Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    def input_axes(self) -> dict[str, dict[int, str]]:
        """The free axes of the inputs only (what ``export.json`` records)."""
        return {k: v for k, v in self.dynamic_axes.items() if k in self.input_names}


def dense_graph(model: nn.Module, size: int, batch: bool = False, spatial: bool = False) -> GraphSpec:
    """The ``model`` graph of a depth / semantic student at input side ``size`` (module docstring);
    ``batch``/``spatial``: free batch / height and width axes."""
    axes: dict[int, str] = {}
    if batch:
        axes[0] = "batch"
    if spatial:
        axes.update({2: "height", 3: "width"})
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2 if batch else 1, 3, size, size, generator=generator)  # (B, 3, S, S)
    dynamic = {"image": axes, "prediction": dict(axes)} if axes else {}
    return GraphSpec("model", model, (example,), ("image",), ("prediction",), dynamic)


def sam_encoder_graph(sam: Sam) -> GraphSpec:
    """``image (1, 3, S, S)`` → ``image_embeddings (1, C, S/16, S/16)``, static."""
    s = sam.img_size
    example = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    return GraphSpec("image_encoder", sam.image_encoder, (example,), ("image",), ("image_embeddings",))


def sam_decoder_graph(sam: Sam, masks: str = "all") -> GraphSpec:
    """segment-anything's decoder interface for ``sam`` (:class:`SamOnnxDecoder`); ``num_points`` free.
    The example is upstream's export script's (5 points, labels 0-3, a mask input, a 1500 x 2250 image)."""
    module = SamOnnxDecoder(sam, masks).eval()
    c = sam.prompt_encoder.embed_dim
    h, w = sam.prompt_encoder.image_embedding_size
    g = torch.Generator().manual_seed(0)
    example = (
        torch.randn(1, c, h, w, generator=g),  # image_embeddings
        torch.randint(0, sam.img_size, (1, 5, 2), generator=g).float(),  # point_coords
        torch.randint(0, 4, (1, 5), generator=g).float(),  # point_labels
        torch.randn(1, 1, 4 * h, 4 * w, generator=g),  # mask_input
        torch.tensor([1.0]),  # has_mask_input
        torch.tensor([1500.0, 2250.0]),  # orig_im_size
    )
    axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    return GraphSpec("prompt_decoder", module, example, DECODER_INPUTS, DECODER_OUTPUTS, axes)


class DetectorGraph(nn.Module):
    """A detector's whole inference path for one image: normalisation, backbone, FPN, head, anchor
    decoding, score threshold, class-wise NMS and top-k (torchvision's own post-processing, which it
    writes to ONNX with ``NonMaxSuppression`` / ``TopK`` / ``RoiAlign``), and for Mask R-CNN the mask
    head with its masks pasted into the frame."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        found = self.model(image)[0]  # image (1, 3, S, S) in [0, 1], padded bottom/right
        out = (found["boxes"], found["scores"], found["labels"])
        return (*out, found["masks"]) if "masks" in found else out


#: A detector graph's outputs, N the number of detections (free): xyxy boxes in the frame's pixels,
#: scores, labels 0 … K-1 (int64) and, for Mask R-CNN, mask probabilities pasted into the frame.
DETECTOR_OUTPUTS = ("boxes", "scores", "labels")


def detector_graph(model: nn.Module, size: int) -> GraphSpec:
    """``image (1, 3, S, S)`` in [0, 1] (resized to long side S, zero-padded bottom/right: the detector
    normalises inside) → ``boxes (N, 4)``, ``scores (N,)``, ``labels (N,)`` [, ``masks (N, 1, S, S)``]
    (module docstring); static input, ``N`` free."""
    outputs = DETECTOR_OUTPUTS + (("masks",) if getattr(model, "arch", "") == "mask_rcnn" else ())
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    axes = {name: {0: "detections"} for name in outputs}
    return GraphSpec("model", DetectorGraph(model).eval(), (example,), ("image",), outputs, axes)


def export_graph(spec: GraphSpec, path: Path, opset: int) -> None:
    """Trace ``spec`` into an fp32 ONNX file at ``path`` (constant folding on).

    Raises:
        ConfigError: the exporter cannot write this graph at ``opset`` (its first line).
    """
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer / deprecation warnings of the TorchScript exporter
            torch.onnx.export(
                spec.module,
                spec.example,
                str(path),
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_axes=spec.dynamic_axes or None,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except (RuntimeError, ValueError, TypeError, torch.onnx.OnnxExporterError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{spec.name}: cannot be exported to ONNX at opset {opset} ({first})") from None
