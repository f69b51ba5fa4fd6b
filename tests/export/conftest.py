"""Tiny checkpoints the export tests share (built once per session; each a few MB at most)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def depth_ckpt(tmp_path_factory):
    from tiny_students import save_tiny_depth_student

    return save_tiny_depth_student(tmp_path_factory.mktemp("depth") / "depth.ckpt")


@pytest.fixture(scope="session")
def semantic_ckpt(tmp_path_factory):
    from tiny_students import save_tiny_semantic_student

    return save_tiny_semantic_student(tmp_path_factory.mktemp("semantic") / "semantic.ckpt")


@pytest.fixture(scope="session")
def sam_student_ckpt(tmp_path_factory):
    """A promptable anydistill checkpoint: ``sam_tiny`` (CNN encoder, SAM's 256-wide decoder) at 64²."""
    from tiny_students import save_tiny_promptable_student

    return save_tiny_promptable_student(tmp_path_factory.mktemp("sam_student") / "sam.ckpt")


@pytest.fixture(scope="session")
def upstream_sam():
    """segment_anything's own ``Sam``, tiny (ViT 48 wide, decoder 32 wide, 8 heads as official files), 128²."""
    pytest.importorskip("segment_anything")
    from sam_upstream import tiny_upstream_sam

    return tiny_upstream_sam(seed=3, img_size=128, decoder_heads=8)


@pytest.fixture(scope="session")
def upstream_sam_pth(tmp_path_factory, upstream_sam):
    """``upstream_sam``'s weights as an official segment-anything ``.pth`` (a plain state dict)."""
    path = tmp_path_factory.mktemp("sam_pth") / "sam_tiny_official.pth"
    torch.save(upstream_sam.state_dict(), path)
    return path
