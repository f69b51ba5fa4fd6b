"""The ways ``anydistill bench`` runs a model: each a ready callable on a fixed input, or the reason it
cannot run here.

* ``eager``: PyTorch as it is, ``torch.inference_mode``.
* ``channels_last``: the model and input in NHWC memory format (faster convolutions on many CPUs and
  on tensor cores).
* ``compile``: ``torch.compile`` (Inductor); compiled at the first (warm-up) call, whose time is
  reported apart. Needs a C++ compiler on the CPU; a failure makes the row "n/a" with the reason.
* ``onnx``: the model exported by :mod:`anydistill.export` and run by onnxruntime on the CPU.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anydistill.bench.onnx_backend import onnx_call
from anydistill.bench.targets import BenchTarget

__all__ = ["BACKENDS", "Runner", "make_runner"]

BACKENDS = ("eager", "channels_last", "compile", "onnx")


@dataclass
class Runner:
    """A backend's callable for one target and batch, or why there is none.

    Attributes:
        call: runs one forward pass on the fixed input (``None`` when unavailable).
        setup_s: seconds to prepare it (compile: the first call; onnx: export and session).
        reason: why it is unavailable, one line.
    """

    call: Callable[[], Any] | None
    setup_s: float = 0.0
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _inference(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return module(x)

    return call


def _eager(target: BenchTarget, x: torch.Tensor, _: Path) -> Runner:
    return Runner(_inference(target.module, x))


def _channels_last(target: BenchTarget, x: torch.Tensor, _: Path) -> Runner:
    module = copy.deepcopy(target.module).to(memory_format=torch.channels_last)
    return Runner(_inference(module, x.contiguous(memory_format=torch.channels_last)))


def _compile(target: BenchTarget, x: torch.Tensor, _: Path) -> Runner:
    # Inductor's C++ build logs "No CUDA runtime is found" on CPU-only machines: noise, not news.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    compiled = torch.compile(copy.deepcopy(target.module))
    call = _inference(compiled, x)
    start = time.perf_counter()
    call()  # compiles
    return Runner(call, setup_s=time.perf_counter() - start)


def _onnx(target: BenchTarget, x: torch.Tensor, workdir: Path) -> Runner:
    call, extra = onnx_call(target, x, workdir)
    return Runner(call, extra=extra)


_MAKERS: dict[str, Callable[[BenchTarget, torch.Tensor, Path], Runner]] = {
    "eager": _eager, "channels_last": _channels_last, "compile": _compile, "onnx": _onnx,
}  # fmt: skip


def make_runner(backend: str, target: BenchTarget, x: torch.Tensor, workdir: Path) -> Runner:
    """The runner of ``backend`` for ``target`` on input ``x`` ``(B, 3, S, S)``; a backend that fails
    to build (no compiler, an operator onnx cannot export, ...) gives a runner with its reason."""
    start = time.perf_counter()
    try:
        runner = _MAKERS[backend](target, x, workdir)
        runner.call()  # one trial call: a backend that cannot run this batch (memory, an operator) fails here
    except Exception as exc:  # any failure of an optional backend is a table cell, not a crash
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Runner(None, reason=f"{type(exc).__name__}: {first[:160]}")
    runner.setup_s = runner.setup_s or time.perf_counter() - start
    return runner
