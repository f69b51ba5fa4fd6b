"""Tiny models for the web demo's tests (untrained: the tests check the plumbing, not the predictions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_students import save_tiny_depth_student, save_tiny_sam, save_tiny_semantic_student

CHECKPOINTS = {
    "depth": save_tiny_depth_student,
    "semantic": save_tiny_semantic_student,
    "promptable": save_tiny_sam,
}
NAMES = {"depth": "depth.ckpt", "semantic": "semantic.ckpt", "promptable": "sam.pth"}


@pytest.fixture(scope="session")
def serve_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny depth student, semantic student (toyworld's classes) and SAM (a ``.pth`` state dict)."""
    folder = tmp_path_factory.mktemp("serve_models")
    return {task: save(folder / NAMES[task]) for task, save in CHECKPOINTS.items()}
