"""``anydistill demo --pretrain`` at a tiny budget: every step runs and the report says what it measured."""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf

from anydistill.demos.pretrain import PretrainDemoBudget, run_pretrain_demo

TINY = PretrainDemoBudget(
    unlabeled_count=16, labeled_count=8, test_count=4, image_size=32, pretrain_size=32, pretrain_steps=2,
    pretrain_batch=16, student_steps=2, object_size=32, bank_count=30, val_count=10, object_test_count=10,
    batch_size=4, workers=0,
)  # fmt: skip


def test_the_pretraining_story_runs_end_to_end_and_reports_both_comparisons(tmp_path) -> None:
    report = run_pretrain_demo(tmp_path, budget=TINY)
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results["knn"]) == {"pre-trained (MoCo v2)", "random initialisation"}
    assert all(0.0 <= m["top1"] <= 1.0 for m in results["knn"].values())
    assert set(results["depth"]) == {
        "depth_tiny from random initialisation",
        "depth_tiny from the pre-trained backbone",
    }
    backbone = tmp_path / "runs" / "pretrain" / "backbone.pth"
    assert results["backbone"] == str(backbone) and backbone.is_file()
    # the second student really started from the pre-trained backbone
    cfg = OmegaConf.load(tmp_path / "runs" / "student_pretrained_init" / "config.yaml")
    assert cfg.model.kwargs.backbone_checkpoint_path == str(backbone) and cfg.model.kwargs.pretrained
    text = report.read_text()
    first = results["knn"]["pre-trained (MoCo v2)"]["top1"]
    assert f"reaches kNN top-1 {first:.3f}" in text and "| depth_tiny from the pre-trained backbone |" in text
    state = torch.load(backbone, weights_only=True)
    assert any(k.startswith("conv_stem") for k in state)  # timm MobileNetV4 weights, loadable by timm
