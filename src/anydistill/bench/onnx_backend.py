"""The onnxruntime backend of ``anydistill bench``: the timed module exported to ONNX (with a dynamic
batch axis) and run by an onnxruntime CPU session with the same thread count as torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anydistill.bench.targets import BenchTarget
from anydistill.export.graphs import GraphSpec, export_graph

__all__ = ["onnx_call"]

#: The opset of ``anydistill export``'s default graphs.
OPSET = 17


def onnx_call(
    target: BenchTarget, x: torch.Tensor, workdir: Path
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Export ``target.module`` for input ``x`` ``(B, 3, S, S)`` under ``workdir`` and return a call that runs
    it in onnxruntime on ``x`` as numpy, plus facts about the graph: its size (external data included) and the largest absolute
    difference of its output from the PyTorch module's on ``x`` (a wrong graph shows there, not as a fast row)."""
    try:
        import onnxruntime as ort  # optional dependency: the [export] extra
    except ImportError:
        raise RuntimeError("onnxruntime is not installed: pip install 'anydistill[export]'") from None
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model.onnx"
    axes = {"image": {0: "batch"}, "output": {0: "batch"}}
    export_graph(GraphSpec("bench", target.module, (x,), ("image",), ("output",), axes), path, OPSET)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    # onnxruntime's pool threads spin after each run by default; round-robin, that spinning would steal
    # the cores from the PyTorch call timed next (and inflate it), so it is switched off here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    with torch.inference_mode():
        expected = target.module(x).float().numpy()
    error = float(abs(session.run(None, feed)[0] - expected).max())
    return (lambda: session.run(None, feed)), {"onnx_mb": round(sum(f.stat().st_size for f in workdir.iterdir()) / 2**20, 2),
                                                "max_abs_err_vs_eager": error}  # fmt: skip
