"""Promptable segmentation: a SAM predictor (numpy in, masks out) and its resizing transform.

The names below load on first use (PEP 562): :mod:`anydistill.promptable.prompt_results` is torch-free
and serves the onnxruntime path (:mod:`anydistill.runtime`), which must not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"SamPredictor": "predictor", "ResizeLongestSide": "transforms"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anydistill.promptable' has no attribute {name!r}")
    return getattr(importlib.import_module(f"anydistill.promptable.{_EXPORTS[name]}"), name)
