"""Promptable (SAM-structured) models from a file: a thin front of :func:`anydistill.loading.load_model`.

Reads an official segment-anything ``.pth`` (size from the tensor shapes), an anydistill SAM state dict,
or an anydistill training checkpoint of a promptable method (``train`` or ``distill`` with
``task=promptable``), which describes its model in its model record.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anydistill.errors import DataError
from anydistill.loading import load_model

__all__ = ["load_promptable"]


def load_promptable(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A SAM-structured model (:class:`~anydistill.models.sam.Sam`) from ``path``, in eval mode.

    Raises:
        DataError: missing, truncated or foreign file; an anydistill checkpoint of another task.
    """
    loaded = load_model(path, device=device)
    if loaded.task != "promptable":
        raise DataError(path, f"is a {loaded.task!r} checkpoint, not a promptable (SAM) model")
    return loaded.model
