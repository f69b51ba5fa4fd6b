"""Tiny untrained students saved as training saves them, for tests that need a checkpoint but no training."""

from __future__ import annotations

from pathlib import Path


def save_tiny_depth_student(path: Path, size: int = 64) -> Path:
    """A tiny untrained ``depth_tiny`` saved the way training saves a student (``model.*`` weights and the
    model record ``anydistill.loading.load_model`` reads), at pre-processing size ``size``: no training."""
    import torch

    from anydistill.loading import model_record
    from anydistill.models import build_model

    torch.manual_seed(0)
    model = build_model("depth_tiny")
    arch = {"model_name": "depth_tiny", "model_kwargs": {}, "num_classes": None}
    record = model_record("depth", model.preprocess_spec(size), arch)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path
