"""ONNX export checked against PyTorch (``anydistill export``).

:func:`export_model` writes a folder of graphs plus ``export.json`` (the contract: :mod:`.manifest`)
after running each graph with onnxruntime against the PyTorch model (:mod:`.check`). Depth and
semantic students give one graph, ``model.onnx``; promptable (SAM) models give ``image_encoder.onnx``
and ``prompt_decoder.onnx``, the latter with segment-anything's exported-decoder interface
(:mod:`.sam_decoder`). What is static and what is dynamic: :mod:`.graphs`.

``onnx`` and ``onnxruntime`` are optional (``pip install 'anydistill[export]'``): importing this
package does not import them.
"""

from anydistill.export.check import TOLERANCES, ExportCheckError, Tolerance
from anydistill.export.exporter import FORMATS, ExportResult, export_model
from anydistill.export.manifest import EXPORT_FORMAT, EXPORT_JSON, GRAPH_FILES, METADATA_KEY, read_manifest
from anydistill.export.sam_decoder import SamOnnxDecoder

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_JSON",
    "FORMATS",
    "GRAPH_FILES",
    "METADATA_KEY",
    "TOLERANCES",
    "ExportCheckError",
    "ExportResult",
    "SamOnnxDecoder",
    "Tolerance",
    "export_model",
    "read_manifest",
]
