"""PromptableModule: SAM's simulated interactive training on a tiny random SAM and synthetic squares."""

from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from anydistill.data.instances import InstanceDataset, InstanceRecord, collate_instances
from anydistill.methods.promptable import PromptableModule, round_plan

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is much faster than several on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_sam(img_size: int = SIZE, dim: int = 32, patch: int = 8) -> nn.Module:
    modeling = pytest.importorskip("segment_anything.modeling")
    grid = img_size // patch
    torch.manual_seed(0)
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=img_size,
            patch_size=patch,
            embed_dim=32,
            depth=1,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=8,
        ),
        mask_decoder=modeling.MaskDecoder(
            transformer_dim=dim,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            iou_head_hidden_dim=32,
        ),
    )


def _square_records(n: int, height: int = 24, width: int = 32) -> list[InstanceRecord]:
    """Bright squares on a dark background (1-2 objects per image; the image is wider than tall)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        id_map = np.zeros((height, width), dtype=np.int32)
        y, x, s = rng.integers(1, 10), rng.integers(1, 15), rng.integers(5, 9)
        id_map[y : y + s, x : x + s] = 1
        if i % 2:
            id_map[17:23, 22:30] = 2
        image = np.where(id_map[..., None] > 0, 210, 40).astype(np.uint8).repeat(3, axis=2)
        records.append(InstanceRecord.from_id_map(image, id_map, f"sq{i}"))
    return records


def _batch(n: int = 2) -> dict:
    ds = InstanceDataset(_square_records(n), size=SIZE, min_area=20, sampling="fixed")
    return collate_instances([ds[i] for i in range(n)])


def test_round_plan_matches_sam_schedule() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        plan = round_plan(11, 2, g)
        assert len(plan) == 11 and plan[0] and not plan[-1]
        assert sum(plan[1:]) == 8 and plan[1:-1].count(False) == 1  # 8 clicks, one refinement inside
    assert round_plan(1) == [True]
    assert round_plan(2) == [True, False]
    assert round_plan(4, 0) == [True] * 4
    assert round_plan(3, 5) == [True, False, False]
    with pytest.raises(ValueError):
        round_plan(0)


class _Recorder:
    """Records prompt-encoder inputs and decoder multimask flags."""

    def __init__(self, model: nn.Module) -> None:
        self.prompts: list[tuple] = []
        self.mask_grad: list[bool] = []
        self.multimask: list[bool] = []
        model.prompt_encoder.register_forward_pre_hook(self._prompt, with_kwargs=True)
        model.mask_decoder.register_forward_pre_hook(self._decoder, with_kwargs=True)

    def _prompt(self, module, args, kwargs):
        points, boxes, masks = kwargs["points"], kwargs["boxes"], kwargs["masks"]
        self.prompts.append((None if points is None else points[1].clone(), boxes, masks))
        self.mask_grad.append(masks is not None and masks.requires_grad)

    def _decoder(self, module, args, kwargs):
        self.multimask.append(kwargs["multimask_output"])


@pytest.mark.parametrize("p_box", [0.0, 1.0])
def test_rounds_decoder_calls_clicks_and_mask_prompts(p_box: float) -> None:
    model = _tiny_sam()
    rec = _Recorder(model)
    module = PromptableModule(model, num_rounds=5, refine_rounds=2, p_box=p_box)
    torch.manual_seed(1)
    out = module.rounds(_batch(2))
    assert torch.isfinite(out["loss"]) and out["num_objects"].item() == 3
    assert len(rec.multimask) == 5 * 2  # rounds x images (one prompt group per image)
    # Images are decoded in turn each round: calls 0, 1 = round 0; 2, 3 = round 1; ...
    assert rec.multimask == [p_box == 0.0] * 2 + [False] * 8
    for image in range(2):
        calls = rec.prompts[image::2]
        assert calls[0][2] is None and all(c[2] is not None for c in calls[1:])
        assert all(c[2].shape[1:] == (1, SIZE // 2, SIZE // 2) for c in calls[1:])
        if p_box == 1.0:
            assert all(c[1] is not None for c in calls)
            assert calls[0][0] is None  # round 0: the box alone
        counts = [0 if c[0] is None else c[0].shape[1] for c in calls]
        steps = np.diff(counts).tolist()
        assert set(steps) <= {0, 1} and sum(steps) == 2 and steps[-1] == 0  # 2 click rounds, last refines
        last_labels = calls[-1][0]
        assert last_labels is not None and set(last_labels.unique().tolist()) <= {-1, 0, 1}


def test_loss_backward_reaches_every_part_and_mask_prompt_detach() -> None:
    model = _tiny_sam()
    module = PromptableModule(model, num_rounds=3, refine_rounds=1, p_box=0.0)
    batch = _batch(2)
    torch.manual_seed(3)
    loss = module.rounds(batch)["loss"]
    loss.backward()
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    # The mask prompt of rounds >= 1 stays in the graph unless detach_mask_prompt.
    rec = _Recorder(model)
    torch.manual_seed(3)
    assert module.rounds(batch)["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert rec.mask_grad == [False, False, True, True, True, True]
    detached = PromptableModule(model, num_rounds=3, refine_rounds=1, p_box=0.0, detach_mask_prompt=True)
    rec.mask_grad.clear()
    torch.manual_seed(3)
    assert detached.rounds(batch)["loss"].item() == pytest.approx(loss.item(), rel=1e-5)  # same values
    assert rec.mask_grad == [False] * 6


def test_low_res_loss_and_empty_batch_and_size_check() -> None:
    model = _tiny_sam()
    module = PromptableModule(model, num_rounds=2, loss_resolution="low_res")
    assert torch.isfinite(module.rounds(_batch(2))["loss"])
    batch = _batch(2)
    batch["valid"][:] = False
    out = module.rounds(batch)
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad
    batch = _batch(2)
    batch["image"] = batch["image"][..., :16, :16]
    with pytest.raises(ValueError, match="img_size"):
        module.encode(batch["image"], batch["input_size"])


def _fit(module: PromptableModule, steps: int = 3) -> L.Trainer:
    train = InstanceDataset(_square_records(4), size=SIZE, min_area=20)
    val = InstanceDataset(_square_records(2), size=SIZE, min_area=20, sampling="fixed")
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    trainer.fit(
        module,
        DataLoader(train, batch_size=2, shuffle=True, collate_fn=collate_instances),
        DataLoader(val, batch_size=2, collate_fn=collate_instances),
    )
    return trainer


def test_training_steps_change_parameters_and_log() -> None:
    model = _tiny_sam()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = PromptableModule(model, optim={"lr": 1e-3, "warmup_steps": 1}, num_rounds=3, val_max_clicks=2)
    trainer = _fit(module)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and 0.0 <= metrics["train/iou"].item() <= 1.0
    for key in ("val/miou@1", "val/miou@2", "val/noc@85", "val/noc@90", "val/oracle_miou@1"):
        assert key in metrics, key
    after = model.state_dict()
    for part in ("image_encoder.", "prompt_encoder.mask_downscaling", "mask_decoder."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part)), part


def test_frozen_image_encoder_is_unchanged_in_eval_mode_and_not_optimised() -> None:
    model = _tiny_sam()
    modes: list[bool] = []
    model.image_encoder.register_forward_hook(lambda m, i, o: modes.append((m.training, o.requires_grad)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = PromptableModule(
        model, optim={"lr": 1e-3, "warmup_steps": 1}, num_rounds=2, freeze_image_encoder=True
    )
    trainer = _fit(module, steps=2)
    encoder_ids = {id(p) for p in model.image_encoder.parameters()}
    optimised = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert optimised and not any(id(p) in encoder_ids for p in optimised)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))
    assert modes and all(m == (False, False) for m in modes)  # eval mode, no graph
