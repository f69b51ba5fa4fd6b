"""``anydistill train`` for a promptable model with ``prompt.teacher``: the teacher's prompt encoder and mask
decoder are taken over (frozen unless ``finetune_decoder``) and only the image encoder learns from labels, the
labels-only counterpart of the distilled student."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from sam_upstream import tiny_upstream_sam
from test_promptable_module import _square_records
from torch.utils.data import DataLoader

from anydistill.config import DataConfig, ModelConfig, OptimConfig, PromptConfig, TrainConfig
from anydistill.data.instances import InstanceDataset, collate_instances
from anydistill.errors import ConfigError
from anydistill.methods.base import get_method
from anydistill.methods.promptable import PromptableModule, take_decoder
from anydistill.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

HEAD = ("prompt_encoder", "mask_decoder")
SIZE = 64


def _tiny_sam(seed: int = 0):
    pytest.importorskip("segment_anything")
    return tiny_upstream_sam(seed=seed, img_size=SIZE, decoder_heads=8)  # 8 heads: an official .pth's


def _saved_sam(path, seed: int) -> dict[str, torch.Tensor]:
    """A tiny SAM (the architecture of ``_tiny_sam()``, other weights) saved as an official ``.pth``;
    returns its head's state dict."""
    teacher = _tiny_sam(seed)
    torch.save(teacher.state_dict(), path)
    return {k: v.clone() for k, v in teacher.state_dict().items() if k.split(".")[0] in HEAD}


def _fit(module: PromptableModule, steps: int) -> L.Trainer:
    data = InstanceDataset(_square_records(4), size=SIZE, min_area=20)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=2, shuffle=True, collate_fn=collate_instances))
    return trainer


def _head(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in HEAD}


@pytest.mark.parametrize("frozen", [True, False])
def test_the_teachers_head_is_taken_over_and_stays_frozen(tmp_path, frozen) -> None:
    path = tmp_path / "teacher.pth"
    teacher_head = _saved_sam(path, seed=7)
    model = _tiny_sam()
    encoder_before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    take_decoder(model, str(path), frozen=frozen)
    head = _head(model)
    assert head.keys() == teacher_head.keys()
    assert all(torch.equal(head[k], teacher_head[k]) for k in head)
    module = PromptableModule(model, PromptConfig(num_rounds=2), OptimConfig(lr=0.01, warmup_steps=1))
    trainer = _fit(module, steps=2)
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    head_params = [p for part in HEAD for p in getattr(model, part).parameters()]
    assert any(id(p) in optimised for p in head_params) is not frozen
    after = _head(model)
    assert all(torch.equal(after[k], teacher_head[k]) for k in after) is frozen
    encoder_after = model.image_encoder.state_dict()
    assert any(not torch.equal(encoder_before[k], encoder_after[k]) for k in encoder_before)


def test_a_head_of_another_width_is_one_config_error(tmp_path) -> None:
    path = tmp_path / "teacher.pth"
    _saved_sam(path, seed=1)
    wide = build_model("sam_tiny", img_size=SIZE)  # decoder 256 wide, the tiny SAM's is 32
    with pytest.raises(ConfigError, match=r"^prompt.teacher: .*teacher.pth's prompt_encoder does not fit"):
        take_decoder(wide, str(path), frozen=True)


def test_the_promptable_method_uses_prompt_teacher(tmp_path) -> None:
    source = build_model("sam_tiny", img_size=64)
    for p in source.parameters():
        p.data += 0.05
    torch.save(source.state_dict(), tmp_path / "teacher.pth")
    cfg = TrainConfig(
        task="promptable", model=ModelConfig(name="sam_tiny"), run_dir=str(tmp_path / "run"),
        data=DataConfig(source="toyworld", image_size=64, train_count=4, val_count=2),
        prompt=PromptConfig(teacher=str(tmp_path / "teacher.pth")),
    )  # fmt: skip
    run = get_method("promptable")(cfg)
    model = run.module.model
    for part in HEAD:
        assert all(torch.equal(a, b) for a, b in zip(getattr(model, part).state_dict().values(),
                                                     getattr(source, part).state_dict().values(), strict=True))  # fmt: skip
        assert not any(p.requires_grad for p in getattr(model, part).parameters())
    assert all(p.requires_grad for p in model.image_encoder.parameters())
