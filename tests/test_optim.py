"""anydistill.optim / optim_callbacks: parameter groups, the resizable warm-up + cosine schedule, its
checkpointing, the time-budget fix (ScheduleLength) and the momentum-teacher helpers."""

from __future__ import annotations

import io
import math
import pickle
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from anydistill.config import OptimConfig
from anydistill.optim import (
    UNKNOWN_TOTAL_STEPS,
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    cosine_momentum,
    ema_update,
    param_groups,
)
from anydistill.optim_callbacks import ScheduleLength, find_warmup_cosines

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- groups


class _EncHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(16))
        self.head = nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 2, bias=False))
        self.scale = nn.Parameter(torch.ones(()))  # 0-d: no decay
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.encoder[0].bias.requires_grad_(False)  # a frozen encoder parameter


def test_param_groups_decay_lr_and_coverage() -> None:
    model = _EncHead()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, encoder=model.encoder, encoder_lr_mult=0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    # every trainable parameter in exactly one group, frozen ones absent
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == {id(p) for p in trainable}
    for frozen in (model.frozen.weight, model.frozen.bias, model.encoder[0].bias):
        assert id(frozen) not in by_id
    enc_ids = {id(p) for p in model.encoder.parameters()}
    for p in trainable:
        g = by_id[id(p)]
        assert g["weight_decay"] == (0.0 if p.ndim <= 1 else 0.05)
        assert g["lr"] == pytest.approx(1e-4 if id(p) in enc_ids else 1e-3)
    # norms and biases explicitly
    assert by_id[id(model.head[1].weight)]["weight_decay"] == 0.0
    assert by_id[id(model.head[0].bias)]["weight_decay"] == 0.0
    assert by_id[id(model.encoder[1].weight)]["weight_decay"] == 0.0
    assert by_id[id(model.scale)]["weight_decay"] == 0.0
    assert by_id[id(model.head[0].weight)]["weight_decay"] == 0.05
    assert by_id[id(model.encoder[0].weight)] is not by_id[id(model.head[0].weight)]
    # deterministic order: (head, decay), (head, no decay), (encoder, decay), (encoder, no decay)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [
        (1e-3, 0.05),
        (1e-3, 0.0),
        (pytest.approx(1e-4), 0.05),
        (pytest.approx(1e-4), 0.0),
    ]
    assert groups[0]["params"] == [model.head[0].weight, model.head[2].weight]


def test_param_groups_without_encoder_drops_empty_groups() -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    groups = param_groups(model, lr=0.5, weight_decay=0.1)
    assert len(groups) == 1 and groups[0]["lr"] == 0.5 and len(groups[0]["params"]) == 2


def test_build_optimizer_uses_config() -> None:
    model = _EncHead()
    cfg = OptimConfig(lr=2e-3, backbone_lr_mult=0.5, weight_decay=0.2)
    opt = build_optimizer(model, cfg, encoder=model.encoder)
    assert isinstance(opt, torch.optim.AdamW)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([1e-3, 2e-3])
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.2}
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), cfg)


# -------------------------------------------------------------------------------------------- schedule


def _formula(step: int, warmup: int, total: int, r: float) -> float:
    """The schedule written out independently (effective warm-up given explicitly)."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / (total - warmup))
    return r + (1 - r) * (1 + math.cos(math.pi * p)) / 2


def test_schedule_values() -> None:
    s = WarmupCosine(warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    expected = {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 55: 0.55, 100: 0.1, 250: 0.1}
    for step, value in expected.items():
        assert s(step) == pytest.approx(value), step
    for step in (3, 17, 40, 77, 99):
        assert s(step) == pytest.approx(_formula(step, 10, 100, 0.1))
    # no warm-up
    s0 = WarmupCosine(0, 10, 0.0)
    assert s0(0) == pytest.approx(1.0) and s0(5) == pytest.approx(0.5) and s0(10) == pytest.approx(0.0)


def test_warmup_capped_at_a_fifth_of_the_current_total() -> None:
    s = WarmupCosine(warmup_steps=50, total_steps=100, min_lr_ratio=0.0)
    assert s.effective_warmup == 20
    assert s(0) == pytest.approx(1 / 20) and s(19) == pytest.approx(1.0)
    assert s(60) == pytest.approx(_formula(60, 20, 100, 0.0))
    s.total_steps = 1000
    assert s.effective_warmup == 50 and s(19) == pytest.approx(20 / 50)
    assert WarmupCosine(50, 3, 0.0).effective_warmup == 1


def test_changing_total_mid_run_changes_later_factors() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched, schedule = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=5, min_lr_ratio=0.05), 1000)
    for _ in range(30):
        opt.step()
        sched.step()
    before = sched.get_last_lr()[0]
    assert before == pytest.approx(_formula(30, 5, 1000, 0.05))
    schedule.total_steps = 40
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(_formula(31, 5, 40, 0.05))
    assert sched.get_last_lr()[0] < 0.5 * before
    for _ in range(9):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.05)


def test_build_scheduler_unbounded_total_and_group_peaks() -> None:
    model = _EncHead()
    cfg = OptimConfig(lr=1.0, backbone_lr_mult=0.1, warmup_steps=0, min_lr_ratio=0.0)
    opt = build_optimizer(model, cfg, encoder=model.encoder)
    sched, schedule = build_scheduler(opt, cfg, float("inf"))
    assert schedule.total_steps == UNKNOWN_TOTAL_STEPS
    assert all(fn is schedule for fn in sched.lr_lambdas)
    schedule.total_steps = 10
    for _ in range(5):
        opt.step()
        sched.step()
    assert sorted(sched.get_last_lr()) == pytest.approx([0.05] * 2 + [0.5] * 2)


def test_scheduler_state_round_trip_keeps_changed_total() -> None:
    cfg = OptimConfig(lr=0.1, warmup_steps=3, min_lr_ratio=0.02)
    param = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=cfg.lr)
    sched, schedule = build_scheduler(opt, cfg, 1000)
    for _ in range(7):
        opt.step()
        sched.step()
    schedule.total_steps = 123
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as Lightning loads checkpoints

    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=cfg.lr)
    sched2, schedule2 = build_scheduler(opt2, cfg, 1000)
    assert schedule2.total_steps == 1000
    sched2.load_state_dict(state)
    assert schedule2.total_steps == 123 and sched2.lr_lambdas[0] is schedule2
    assert sched2.last_epoch == 7
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert sched2.get_last_lr()[0] == pytest.approx(0.1 * _formula(8, 3, 123, 0.02))
    copy = pickle.loads(pickle.dumps(schedule))
    assert vars(copy) == vars(schedule) and copy(50) == schedule(50)


# ------------------------------------------------------------------------------------ Lightning runs


class _Tiny(L.LightningModule):
    def __init__(self, cfg: OptimConfig, sleep: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.cfg = cfg
        self.sleep = sleep
        self.lrs: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.sleep:
            time.sleep(self.sleep)
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> dict:
        optimizer = build_optimizer(self, self.cfg)
        scheduler, _ = build_scheduler(optimizer, self.cfg, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _loader(batches: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batches, 4, generator=g), torch.randn(batches, 1, generator=g))
    return DataLoader(data, batch_size=1)


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _fit(module: L.LightningModule, ckpt_path: str | None = None, **kwargs) -> L.Trainer:
    trainer = _trainer(**kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*(smaller than the logging interval|lr_scheduler).*")
        trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return trainer


CFG = OptimConfig(lr=0.01, backbone_lr_mult=1.0, weight_decay=0.0, warmup_steps=10, min_lr_ratio=0.01)


def test_time_budget_decays_lr_to_the_minimum_only_with_schedule_length() -> None:
    """The bug: with max_time the schedule is sized for max_epochs × batches and never decays."""
    budget = {"seconds": 3}
    fixed = _Tiny(CFG, sleep=0.005)
    _fit(fixed, max_time=budget, max_epochs=1000, callbacks=[ScheduleLength(every_n_steps=10, skip_steps=5)])
    plain = _Tiny(CFG, sleep=0.005)
    plain_trainer = _fit(plain, max_time=budget, max_epochs=1000)

    assert plain_trainer.current_epoch < 100  # stopped by the time budget, not by max_epochs
    for module in (fixed, plain):
        assert len(module.lrs) > 100
        assert max(module.lrs) == pytest.approx(CFG.lr, rel=0.02)  # warm-up reached the peak
    assert plain.lrs[-1] > 0.9 * CFG.lr  # without the callback: still at the peak when time runs out
    assert fixed.lrs[-1] < 0.1 * CFG.lr  # with it: decayed to ~min_lr_ratio · lr
    # and it decayed smoothly over the run rather than jumping at the end
    mid = fixed.lrs[len(fixed.lrs) // 2]
    assert 0.2 * CFG.lr < mid < 0.8 * CFG.lr


def test_schedule_length_for_epoch_and_step_limits() -> None:
    # configure_optimizers sees no useful length (pretend 10**6); the callback sets it from the limits
    class _Long(_Tiny):
        def configure_optimizers(self) -> dict:
            optimizer = build_optimizer(self, self.cfg)
            scheduler, _ = build_scheduler(optimizer, self.cfg, 10**6)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    by_epochs = _Long(CFG)
    trainer = _fit(by_epochs, max_epochs=2, callbacks=[ScheduleLength()])
    ((_, schedule),) = find_warmup_cosines(trainer)
    assert schedule.total_steps == 128 and len(by_epochs.lrs) == 128
    assert by_epochs.lrs[-1] == pytest.approx(CFG.lr * _formula(127, 10, 128, CFG.min_lr_ratio))
    assert by_epochs.lrs[-1] < 0.05 * CFG.lr

    by_steps = _Long(CFG)
    trainer = _fit(by_steps, max_epochs=1000, max_steps=40, callbacks=[ScheduleLength()])
    assert find_warmup_cosines(trainer)[0][1].total_steps == 40
    assert by_steps.lrs[-1] < 0.05 * CFG.lr


def test_lightning_checkpoint_restores_changed_total(tmp_path: Path) -> None:
    first = _Tiny(CFG)
    trainer = _fit(first, max_steps=5)
    find_warmup_cosines(trainer)[0][1].total_steps = 777
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)

    seen: list[int] = []

    class _Probe(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            seen.append(find_warmup_cosines(trainer)[0][1].total_steps)

    resumed = _Tiny(CFG)
    trainer = _fit(resumed, ckpt_path=str(path), max_steps=8, callbacks=[_Probe()])
    assert seen == [777]  # configure_optimizers built 8; the checkpoint's 777 won
    # the first resumed step runs at the lr saved with the optimizer (set by the last scheduler step before
    # the total was changed); from the next scheduler step on, the restored total is used
    assert resumed.lrs[1:] == pytest.approx([CFG.lr * _formula(s, 10, 777, CFG.min_lr_ratio) for s in (6, 7)])


# ------------------------------------------------------------------------------------ momentum teacher


def test_cosine_momentum() -> None:
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, base=0.9, final=1.0) == pytest.approx(
        1.0 - 0.1 * (math.cos(math.pi / 4) + 1) / 2
    )
    assert cosine_momentum(500, 100) == pytest.approx(1.0) and cosine_momentum(-5, 100) == pytest.approx(
        0.996
    )
    values = [cosine_momentum(s, 100) for s in range(101)]
    assert values == sorted(values)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net.train()
    net(torch.randn(8, 3) * (seed + 1))  # different running statistics per seed
    return net


def test_ema_update_matches_formula_on_parameters_and_copies_buffers() -> None:
    target, online = _net(0), _net(1)
    m = 0.9
    expected = [
        m * t.detach().clone() + (1 - m) * o.detach()
        for t, o in zip(target.parameters(), online.parameters(), strict=True)
    ]
    assert not torch.allclose(target[1].running_mean, online[1].running_mean)
    with torch.enable_grad():  # the update must not record a graph (in-place on leaves would raise)
        ema_update(target, online, m)
    for t, e in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(t.detach(), e)
        assert t.is_leaf and t.requires_grad and t.grad is None
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        torch.testing.assert_close(t, o)
    assert all(p.grad is None for p in online.parameters())


def test_ema_update_can_leave_the_buffers_alone() -> None:
    """MoCo / DINO: the key encoder / teacher keeps the statistics of its own forward passes."""
    target, online = _net(0), _net(1)
    buffers = [b.clone() for b in target.buffers()]
    expected = [
        0.5 * t.detach() + 0.5 * o.detach()
        for t, o in zip(target.parameters(), online.parameters(), strict=True)
    ]
    ema_update(target, online, 0.5, copy_buffers=False)
    for t, b in zip(target.buffers(), buffers, strict=True):
        assert torch.equal(t, b)
    for t, e in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(t.detach(), e)


def test_ema_update_edges() -> None:
    target, online = _net(0), _net(1)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 1.0)
    for t, b in zip(target.parameters(), before, strict=True):
        torch.testing.assert_close(t.detach(), b)
    ema_update(target, online, 0.0)
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(t, o)
    with pytest.raises(ValueError):
        ema_update(target, nn.Linear(3, 4), 0.5)
    with pytest.raises(ValueError):
        ema_update(target, online, 1.5)


def test_uncapped_warmup_keeps_the_configured_length():
    """Time-budgeted runs (``cap_warmup=False``): the warm-up is the configured one, not a fifth of a moving
    estimate; capped (step/epoch budgets) it never takes more than a fifth of the run."""
    capped = WarmupCosine(warmup_steps=50, total_steps=60, min_lr_ratio=0.0)
    uncapped = WarmupCosine(warmup_steps=50, total_steps=60, min_lr_ratio=0.0)
    uncapped.cap_warmup = False
    assert capped.effective_warmup == 12 and uncapped.effective_warmup == 50
    assert uncapped(24) == pytest.approx(25 / 50) and capped(24) < 1.0
    assert uncapped(59) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))
    uncapped.total_steps = 30
    assert uncapped.effective_warmup == 30
