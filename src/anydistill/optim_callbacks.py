"""Lightning callback that keeps the length of a :class:`~anydistill.optim.WarmupCosine` schedule in step
with how the run is limited (kept apart from :mod:`anydistill.optim` so that one does not import
Lightning).

Why: ``configure_optimizers`` sizes the schedule with ``trainer.estimated_stepping_batches``, which is
``max_epochs × batches`` (or ``max_steps``). A time-budgeted run (``Trainer(max_time=...)``) stops long
before that, so its cosine never decays. :class:`ScheduleLength` re-estimates the length from the measured
throughput and the time left, so the learning rate reaches ``≈ min_lr_ratio · lr`` when time runs out.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, Timer
from torch.optim.lr_scheduler import LambdaLR

from anydistill.optim import WarmupCosine

__all__ = ["ScheduleLength", "find_warmup_cosines"]


def find_warmup_cosines(trainer: pl.Trainer) -> list[tuple[Any, WarmupCosine]]:
    """``(lr_scheduler_config, schedule)`` for every :class:`WarmupCosine` driving a ``LambdaLR`` in
    ``trainer.lr_scheduler_configs`` (each schedule once, even when shared by several param groups)."""
    found: list[tuple[Any, WarmupCosine]] = []
    seen: set[int] = set()
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        for fn in getattr(scheduler, "lr_lambdas", []) if isinstance(scheduler, LambdaLR) else []:
            if isinstance(fn, WarmupCosine) and id(fn) not in seen:
                seen.add(id(fn))
                found.append((config, fn))
    return found


def _find_timer(trainer: pl.Trainer) -> Timer | None:
    """The Timer with a duration (``Trainer(max_time=...)`` adds one), or None."""
    for cb in trainer.callbacks:
        if isinstance(cb, Timer) and cb.time_remaining() is not None:
            return cb
    return None


def _step_cap(trainer: pl.Trainer, config: Any) -> float:
    """Most scheduler steps the step/epoch limits allow (``inf``: unbounded)."""
    frequency = max(1, int(getattr(config, "frequency", 1) or 1))
    if getattr(config, "interval", "step") == "epoch":
        cap = (
            float(trainer.max_epochs)
            if trainer.max_epochs is not None and trainer.max_epochs > 0
            else math.inf
        )
    else:
        cap = float(trainer.estimated_stepping_batches)  # min(max_epochs × batches / accumulation, max_steps)
    if not math.isfinite(cap) or cap <= 0:  # unbounded (max_epochs=-1 or an iterable dataset, no max_steps)
        return math.inf
    return math.ceil(cap / frequency)


class ScheduleLength(Callback):
    r"""Set ``total_steps`` of every :class:`~anydistill.optim.WarmupCosine` schedule of the run.

    * Limited by steps or epochs only: ``total = trainer.estimated_stepping_batches`` (which is
      ``min(max_epochs · ⌈batches / accumulate⌉, max_steps)``), set at the start of training.
    * Limited by time (a :class:`~lightning.pytorch.callbacks.Timer` with a duration, as
      ``Trainer(max_time=...)`` adds): after ``skip_steps`` optimizer steps (compilation, warm caches and
      data-loader start-up make the first steps slow), the callback starts a clock; every ``every_n_steps``
      steps it sets

      .. math::

          T = \min\Bigl(T_\text{cap},\; s + \frac{t_\text{remaining}}{\bar t_\text{step}}\Bigr),
          \qquad \bar t_\text{step} = \frac{\text{wall time since the clock started}}
                                          {\text{scheduler steps since the clock started}}

      where :math:`s` is the scheduler steps done, :math:`t_\text{remaining}` is
      ``Timer.time_remaining()`` and :math:`T_\text{cap}` the step/epoch limit. The wall time includes
      validation and checkpointing, which the Timer also counts. Until the first estimate, the total set
      in ``configure_optimizers`` (or restored from a checkpoint) is kept, capped at :math:`T_\text{cap}`.
      Under DDP, rank 0's estimate is broadcast so all ranks use the same learning rate.

    The effective warm-up (``min(warmup_steps, total // 5)``) follows the new total, so a first estimate
    that shrinks the total during warm-up shortens the warm-up. The schedule is assumed to be stepped
    by Lightning (``"interval": "step"`` or ``"epoch"``, any ``frequency``); steps are counted with the
    scheduler's ``last_epoch``.

    Args:
        every_n_steps: re-estimate every this many optimizer steps.
        skip_steps: optimizer steps after the start (or resume) before the clock starts.
    """

    def __init__(self, every_n_steps: int = 10, skip_steps: int = 5) -> None:
        super().__init__()
        if every_n_steps < 1 or skip_steps < 0:
            raise ValueError(
                f"every_n_steps must be >= 1 and skip_steps >= 0, got {every_n_steps}, {skip_steps}"
            )
        self.every_n_steps = every_n_steps
        self.skip_steps = skip_steps
        self._schedules: list[tuple[Any, WarmupCosine]] = []
        self._timer: Timer | None = None
        self._start_step = 0
        self._last_update = 0
        self._clock: tuple[float, list[int]] | None = None  # (time.monotonic(), scheduler steps) at start

    @property
    def time_limited(self) -> bool:
        """Whether the current run is limited by a Timer (set at the start of training)."""
        return self._timer is not None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._schedules = find_warmup_cosines(
            trainer
        )  # none: the method runs its own schedule; nothing to do
        self._timer = _find_timer(trainer)
        self._start_step = self._last_update = trainer.global_step
        self._clock = None
        for config, schedule in self._schedules:
            cap = _step_cap(trainer, config)
            # A time budget's total is an estimate that moves: keep the configured warm-up whole instead of
            # a fifth of the estimate (which would shrink mid-warm-up and jump the learning rate).
            schedule.cap_warmup = self._timer is None
            if self._timer is None:
                if math.isfinite(cap):
                    schedule.total_steps = max(1, int(cap))
            elif schedule.total_steps > cap:
                schedule.total_steps = max(1, int(cap))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._timer is None or not self._schedules:
            return
        step = trainer.global_step
        if self._clock is None:
            if step - self._start_step >= self.skip_steps:
                self._clock = (time.monotonic(), [c.scheduler.last_epoch for c, _ in self._schedules])
                self._last_update = step
            return
        if step - self._last_update < self.every_n_steps:
            return
        self._last_update = step
        self.update(trainer)

    def update(self, trainer: pl.Trainer) -> None:
        """Re-estimate the totals now from the throughput since the clock started and the time left."""
        if self._timer is None or self._clock is None:
            return
        t0, done0 = self._clock
        elapsed = time.monotonic() - t0
        remaining = max(0.0, float(self._timer.time_remaining() or 0.0))
        totals: list[int | None] = []
        for (config, _), start in zip(self._schedules, done0, strict=True):
            done = config.scheduler.last_epoch
            if done <= start or elapsed <= 0:
                totals.append(None)
                continue
            estimate = done + remaining * (done - start) / elapsed
            totals.append(max(1, round(min(estimate, _step_cap(trainer, config)))))
        totals = trainer.strategy.broadcast(totals, src=0)  # the same schedule on every rank
        for (_, schedule), total in zip(self._schedules, totals, strict=True):
            if total is not None:
                schedule.total_steps = total
