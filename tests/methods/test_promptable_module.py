"""PromptableModule: SAM's simulated interactive training on a tiny random SAM and synthetic squares."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from sam_upstream import tiny_patch8_sam
from torch import nn
from torch.utils.data import DataLoader

from anydistill.config import OptimConfig, PromptConfig
from anydistill.data.clicks import error_clicks, first_prompts
from anydistill.data.instances import InstanceDataset, InstanceRecord, collate_instances
from anydistill.methods.promptable import PromptableModule, round_plan
from anydistill.promptable.batched import decode_prompts

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_sam(img_size: int = SIZE, dim: int = 32, patch: int = 8, ours: bool = False) -> nn.Module:
    """segment_anything's Sam (random, tiny); ``ours``: with our MaskDecoder, the same weights."""
    pytest.importorskip("segment_anything")
    return tiny_patch8_sam(img_size, dim, patch, ours)


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


def _mixed_batch() -> dict:
    """4 images with 2, 1, 0 and 3 objects (copies, shifts and transposes of the squares)."""
    batch = _batch(4)
    masks = batch["masks"]  # (4, 2, S, S), objects per image: 1, 2, 1, 2
    extra = torch.zeros((4, 3, SIZE, SIZE), dtype=torch.bool)
    extra[0, 0], extra[0, 1] = masks[0, 0], torch.roll(masks[0, 0], 3, dims=1)
    extra[1, 0] = masks[1, 1]
    extra[3, :2], extra[3, 2] = masks[3], masks[3, 0].transpose(0, 1)
    batch["masks"] = extra
    batch["valid"] = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    return batch


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
    """Records prompt-encoder inputs and decoder inputs."""

    def __init__(self, model: nn.Module) -> None:
        self.prompts: list[tuple] = []
        self.mask_grad: list[bool] = []
        self.multimask: list[bool] = []
        self.decoder_shapes: list[tuple[int, int]] = []  # (image embeddings, prompt sets) per call
        self.embedding_grad_fns: list[str] = []  # how each call's image embeddings were gathered
        model.prompt_encoder.register_forward_pre_hook(self._prompt, with_kwargs=True)
        model.mask_decoder.register_forward_pre_hook(self._decoder, with_kwargs=True)

    def _prompt(self, module, args, kwargs):
        points, boxes, masks = kwargs["points"], kwargs["boxes"], kwargs["masks"]
        self.prompts.append((None if points is None else points[1].clone(), boxes, masks))
        self.mask_grad.append(masks is not None and masks.requires_grad)

    def _decoder(self, module, args, kwargs):
        self.multimask.append(kwargs["multimask_output"])
        n_img, n_prompt = kwargs["image_embeddings"].shape[0], kwargs["sparse_prompt_embeddings"].shape[0]
        self.decoder_shapes.append((n_img, n_prompt))
        grad_fn = kwargs["image_embeddings"].grad_fn
        self.embedding_grad_fns.append(grad_fn.name() if grad_fn is not None else "")


@pytest.mark.parametrize("ours", [False, True])
@pytest.mark.parametrize("p_box", [0.0, 1.0])
def test_rounds_decoder_calls_clicks_and_mask_prompts(p_box: float, ours: bool) -> None:
    model = _tiny_sam(ours=ours)
    rec = _Recorder(model)
    module = PromptableModule(model, PromptConfig(num_rounds=5, refine_rounds=2, p_box=p_box))
    torch.manual_seed(1)
    out = module.rounds(_batch(2))  # image 0: 1 object, image 1: 2 objects
    assert torch.isfinite(out["loss"]) and out["num_objects"].item() == 3
    if ours:  # one decoder call per round for all objects, each with its image's embedding
        assert rec.decoder_shapes == [(3, 3)] * 5
        assert rec.multimask == [p_box == 0.0] + [False] * 4
    else:  # segment_anything's decoder: one call per image per round, a single embedding each
        assert rec.decoder_shapes == [(1, 1), (1, 2)] * 5
        assert rec.multimask == [p_box == 0.0] * 2 + [False] * 8
    calls = rec.prompts  # one prompt-encoder call per round (a single prompt group) for all 3 objects
    assert len(calls) == 5
    assert calls[0][2] is None and all(c[2] is not None for c in calls[1:])
    assert all(c[2].shape == (3, 1, SIZE // 2, SIZE // 2) for c in calls[1:])
    if p_box == 1.0:
        assert all(c[1] is not None and c[1].shape == (3, 4) for c in calls)
        assert calls[0][0] is None  # round 0: the box alone
    counts = [0 if c[0] is None else c[0].shape[1] for c in calls]
    steps = np.diff(counts).tolist()
    assert set(steps) <= {0, 1} and sum(steps) == 2 and steps[-1] == 0  # 2 click rounds, last refines
    last_labels = calls[-1][0]
    assert last_labels is not None and last_labels.shape[0] == 3
    assert set(last_labels.unique().tolist()) <= {-1, 0, 1}


def _run(model: nn.Module, batch: dict, seed: int, **kwargs) -> tuple[dict, dict]:
    """Loss terms and gradients (by parameter name) of one step."""
    module = PromptableModule(model, PromptConfig(**kwargs))
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = module.rounds(batch)
    out["loss"].backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def test_per_object_embeddings_are_gathered_with_a_backward_that_adds_in_order() -> None:
    """Several objects share an image: their embedding gradients are summed into that image's. Advanced
    indexing (``embeddings[image_index]``) sums them on CPU with atomic float adds (``index_put_`` with
    ``accumulate``), whose order, and so the gradient's last bits, varied from run to run on a busy
    machine; ``index_select``'s backward (``index_add_``) adds them in index order."""
    model = _tiny_sam(ours=True)
    rec = _Recorder(model)
    _run(model, _mixed_batch(), 3, num_rounds=2)
    assert rec.embedding_grad_fns and set(rec.embedding_grad_fns) == {"IndexSelectBackward0"}


@pytest.mark.parametrize("multimask_box", [False, True])
def test_batched_decoding_equals_per_image_decoding(multimask_box: bool) -> None:
    """One decoder call per round (per-object embeddings) == one call per image, with our decoder and
    with segment_anything's (same weights): same loss terms and gradients, mixed point / box prompts."""
    batch = _mixed_batch()
    kwargs = dict(num_rounds=4, refine_rounds=1, p_box=0.5, multimask_box=multimask_box)
    model = _tiny_sam(ours=True)
    rec = _Recorder(model)
    batched, g_batched = _run(model, batch, 7, **kwargs)
    # round 0: one call per multimask flag (points 3 masks, boxes 1) unless boxes are multimask too
    first, rest = rec.decoder_shapes[: 1 if multimask_box else 2], rec.decoder_shapes[2 - multimask_box :]
    assert all(i == p for i, p in first) and sum(p for _, p in first) == 6 and rest == [(6, 6)] * 3
    assert len(rec.prompts) == 2 * 4 and rec.prompts[1][1] is not None  # points and boxes every round
    model.mask_decoder.accepts_batched_embeddings = False  # the per-image fallback, same weights
    rec.decoder_shapes.clear()
    looped, g_looped = _run(model, batch, 7, **kwargs)
    assert all(n_img == 1 for n_img, _ in rec.decoder_shapes) and len(rec.decoder_shapes) >= 4 * 3
    upstream, g_upstream = _run(_tiny_sam(ours=False), batch, 7, **kwargs)
    assert batched.keys() == looped.keys() == upstream.keys()
    for key in batched:
        torch.testing.assert_close(batched[key], looped[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched[key], upstream[key], rtol=1e-4, atol=1e-5)
    assert batched["num_objects"].item() == 6
    assert g_batched.keys() == g_looped.keys() == g_upstream.keys() and len(g_batched) > 10
    for key in g_batched:
        torch.testing.assert_close(g_batched[key], g_looped[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g_batched[key], g_upstream[key], rtol=1e-3, atol=1e-4)


def test_point_and_box_tokens_decode_together_like_separately() -> None:
    """After round 0 point-prompted (P clicks + padding point) and box-prompted objects (P - 1 clicks
    + 2 corners) carry the same token count and go through one decoder call; each object's outputs
    equal its own decode_prompts call on its image alone."""
    model = _tiny_sam(ours=True)
    module = PromptableModule(model, PromptConfig(p_box=0.5))
    batch = _mixed_batch()
    obj = module._objects(batch)
    torch.manual_seed(2)
    obj.prompts = first_prompts(obj.gt, 0.5, obj.size)
    obj.prompts = obj.prompts.append(*error_clicks(torch.zeros_like(obj.gt), obj.gt, obj.valid))
    assert 0 < int(obj.prompts.has_box.sum()) < 6
    obj.low = torch.randn(6, 1, SIZE // 2, SIZE // 2)
    with torch.no_grad():
        emb = module.encode(batch["image"], batch["input_size"])
        pe = model.prompt_encoder.get_dense_pe()
        (rows, low, iou), *rest = module._decode(obj, emb, pe, r=1)
        assert not rest and sorted(rows.tolist()) == list(range(6))
        for i, row in enumerate(rows.tolist()):
            p = obj.prompts
            if p.has_box[row]:
                points, boxes = (
                    (p.coords[row : row + 1, 1:], p.labels[row : row + 1, 1:]),
                    p.boxes[row : row + 1],
                )
            else:
                points, boxes = (p.coords[row : row + 1], p.labels[row : row + 1]), None
            b = int(obj.image[row])
            low_1, iou_1 = decode_prompts(
                model, emb[b : b + 1], pe, points, boxes, obj.low[row : row + 1], multimask=False
            )
            torch.testing.assert_close(low[i : i + 1], low_1, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(iou[i : i + 1], iou_1, rtol=1e-5, atol=1e-6)


def test_objects_are_flattened_image_by_image_with_their_padding() -> None:
    module = PromptableModule(_tiny_sam(ours=True))
    batch = _mixed_batch()
    batch["input_size"][1] = torch.tensor([20, 32])
    obj = module._objects(batch)
    assert obj.image.tolist() == [0, 0, 1, 3, 3, 3]
    assert torch.equal(obj.gt[2], batch["masks"][1, 0]) and torch.equal(obj.gt[5], batch["masks"][3, 2])
    assert obj.size[2].tolist() == [20, 32] and obj.valid[2, :20].all() and not obj.valid[2, 20:].any()
    assert obj.valid[0].all() == bool((batch["input_size"][0] == SIZE).all())
    h, w = batch["input_size"][0].tolist()
    assert obj.valid[0].sum() == h * w


def test_loss_backward_reaches_every_part_and_mask_prompt_detach() -> None:
    model = _tiny_sam()
    module = PromptableModule(model, PromptConfig(num_rounds=3, refine_rounds=1, p_box=0.0))
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
    assert rec.mask_grad == [False, True, True]  # one prompt-encoder call per round
    detached = PromptableModule(
        model, PromptConfig(num_rounds=3, refine_rounds=1, p_box=0.0, detach_mask_prompt=True)
    )
    rec.mask_grad.clear()
    torch.manual_seed(3)
    assert detached.rounds(batch)["loss"].item() == pytest.approx(loss.item(), rel=1e-5)  # same values
    assert rec.mask_grad == [False] * 3


def test_low_res_loss_and_empty_batch_and_size_check() -> None:
    model = _tiny_sam()
    module = PromptableModule(model, PromptConfig(num_rounds=2, loss_resolution="low_res"))
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
    module = PromptableModule(
        model, PromptConfig(num_rounds=3, val_max_clicks=2), OptimConfig(lr=0.001, warmup_steps=1)
    )
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
        model, PromptConfig(num_rounds=2, freeze_image_encoder=True), OptimConfig(lr=0.001, warmup_steps=1)
    )
    trainer = _fit(module, steps=2)
    encoder_ids = {id(p) for p in model.image_encoder.parameters()}
    optimised = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert optimised and not any(id(p) in encoder_ids for p in optimised)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))
    assert modes and all(m == (False, False) for m in modes)  # eval mode, no graph
