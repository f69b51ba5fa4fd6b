"""Parameters and GFLOPs of a forward pass (``torch.utils.flop_counter``, 2 FLOPs per multiply-add)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["forward_gflops", "params_m"]


def params_m(module: nn.Module) -> float:
    """Parameters of ``module``, in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def forward_gflops(module: nn.Module, x: torch.Tensor) -> float:
    """GFLOPs of ``module(x)`` for the whole batch ``x`` (convolutions, matmuls, attention)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(x)
    return counter.get_total_flops() / 1e9
