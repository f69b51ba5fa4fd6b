"""From the traced fp32 file to the graph that is shipped: precision, metadata, one file or external data.

Precision (weights; inputs and outputs stay float32 in every case):

* ``fp32``: as traced;
* ``fp16``: onnxruntime's ``convert_float_to_float16`` (``keep_io_types=True``: a Cast after each
  float input and before each output; integer size computations such as the decoder's crop stay
  int64);
* ``int8``: onnxruntime's ``quantize_dynamic`` (int8 weights of MatMul / Gemm / Conv, activations
  quantised per call), what segment-anything's export script offers for its decoder.

A graph whose tensors exceed ``external_threshold`` bytes (default just under protobuf's 2 GiB limit:
a ViT-H image encoder in fp32 is 2.5 GB) is saved with its weights in ``<file>.data`` beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from anydistill.errors import ConfigError
from anydistill.export.deps import require_onnx
from anydistill.export.manifest import METADATA_KEY

__all__ = ["EXTERNAL_DATA_THRESHOLD", "finish_graph", "tensor_bytes"]

#: Bytes of tensors above which a graph is saved with external data (protobuf refuses 2 GiB).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def tensor_bytes(model: Any) -> int:
    """Bytes of the initializers and constant tensors of an ``onnx.ModelProto`` loaded in memory."""
    onnx, _ = require_onnx()
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                total += len(attr.t.raw_data)
    return total


def _to_fp16(model: Any, large: bool) -> Any:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise ConfigError("--fp16 needs onnxruntime's transformers tools (onnxruntime >= 1.16)") from None
    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=large)


def _to_int8(source: Path, target: Path, large: bool) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ConfigError("--int8 needs onnxruntime's quantization tools (onnxruntime >= 1.16)") from None
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its advice to pre-process first goes to the root logger
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, use_external_data_format=large)
    finally:
        logging.disable(previous)


def finish_graph(
    traced: Path,
    target: Path,
    precision: str,
    metadata: str,
    external_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> list[str]:
    """Convert ``traced`` (fp32, from :func:`~anydistill.export.graphs.export_graph`) to ``precision``,
    store ``metadata`` (JSON text) under ``metadata_props["anydistill"]`` and save it at ``target``.

    Returns:
        the file names written beside ``target`` (``target.name``, plus ``target.name + ".data"`` when
        the tensors exceed ``external_threshold`` bytes).
    """
    onnx, _ = require_onnx()
    model = onnx.load(str(traced))  # external data (torch writes it for > 2 GB graphs) loaded too
    large = tensor_bytes(model) > external_threshold
    if precision == "fp16":
        model = _to_fp16(model, large)
    elif precision == "int8":
        quantized = traced.with_name(f"{traced.stem}.int8.onnx")
        del model  # quantize_dynamic reads the traced file (and its external data) itself
        _to_int8(traced, quantized, large)
        model = onnx.load(str(quantized))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: metadata})
    if tensor_bytes(model) > external_threshold:
        data = f"{target.name}.data"
        onnx.save_model(
            model, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
            size_threshold=1024,
        )  # fmt: skip
        return [target.name, data]
    onnx.save_model(model, str(target))
    return [target.name]
