"""Datasets, readers and joint transforms (toyworld lives in ``anydistill.data.toyworld``).

The names below are loaded on first use (PEP 562), not when the package is imported: the readers
(:mod:`anydistill.data.io`) and the prediction files (:mod:`anydistill.data.prediction_files`) need no
torch, and the onnxruntime path (:mod:`anydistill.runtime`) imports them where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name → the submodule that defines it.
_EXPORTS = {
    "FolderDataset": "folder",
    "SkippedSample": "folder",
    "UnlabeledImageFolder": "folder",
    "read_image": "io",
    "ClassEntry": "labels",
    "ClassTable": "labels",
    "read_classes": "labels",
    "read_depth": "labels",
    "read_mask": "labels",
    "ToTensorSample": "sample_ops",
    "Compose": "transforms",
    "PadToMultiple": "transforms",
    "PadToSize": "transforms",
    "RandomHorizontalFlip": "transforms",
    "RandomResizedCrop": "transforms",
    "Resize": "transforms",
    "ResizeToMultiple": "transforms",
    "collate_samples": "transforms",
    "eval_transforms": "transforms",
    "restore_prediction": "transforms",
    "train_transforms": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anydistill.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"anydistill.data.{_EXPORTS[name]}"), name)
