"""Optimizer, learning-rate schedule and momentum-teacher helpers shared by the training methods.

* :func:`param_groups` / :func:`build_optimizer`: AdamW whose norms and biases get no weight decay
  (timm's ``param_groups_weight_decay`` rule: parameters with ``ndim <= 1``) and whose (pre-trained)
  encoder may train at ``lr · encoder_lr_mult``.
* :class:`WarmupCosine` / :func:`build_scheduler`: linear warm-up then cosine decay to
  ``min_lr_ratio · lr``, as a picklable callable for :class:`torch.optim.lr_scheduler.LambdaLR`. Its
  ``total_steps`` may change during the run (:class:`anydistill.optim_callbacks.ScheduleLength` re-estimates
  it for time-budgeted runs) and is saved with the scheduler's ``state_dict()``.
* :func:`cosine_momentum` / :func:`ema_update`: the teacher momentum schedule of DINO and the
  exponential-moving-average teacher update of MoCo / DINO.

This module imports only torch (no Lightning), so it is cheap to import.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anydistill.config import OptimConfig

__all__ = [
    "UNKNOWN_TOTAL_STEPS",
    "WarmupCosine",
    "build_optimizer",
    "build_scheduler",
    "cosine_momentum",
    "ema_update",
    "param_groups",
]

#: Stand-in length for a schedule whose length is not known yet (e.g. ``Trainer(max_time=...)`` with
#: ``max_epochs=-1``, where ``trainer.estimated_stepping_batches`` is ``inf``): the cosine stays at the
#: peak until :class:`~anydistill.optim_callbacks.ScheduleLength` sets a real estimate.
UNKNOWN_TOTAL_STEPS = 10**9


def param_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    encoder: nn.Module | None = None,
    encoder_lr_mult: float = 1.0,
) -> list[dict]:
    """Split the trainable parameters of ``module`` into AdamW parameter groups.

    Each parameter ``p`` of ``module.parameters()`` with ``p.requires_grad`` goes into exactly one group,
    keyed by ``(p in encoder, p.ndim <= 1)``:

    * learning rate ``lr · encoder_lr_mult`` if ``p`` is a parameter of ``encoder``, else ``lr``;
    * weight decay ``0`` if ``p.ndim <= 1`` (norm scales and biases: timm's rule), else ``weight_decay``.

    Frozen parameters and parameters of ``encoder`` that are not in ``module`` are left out; empty groups
    are dropped. The order is deterministic: (head, decay), (head, no decay), (encoder, decay),
    (encoder, no decay); inside a group the order of ``module.parameters()``.

    Args:
        module: the module being optimised (a LightningModule: the model and any learned loss parts).
        lr: the base learning rate.
        weight_decay: decoupled weight decay for the parameters with ``ndim >= 2``.
        encoder: a sub-module (usually the pre-trained backbone / image encoder) trained at
            ``lr · encoder_lr_mult``; ``None``: every parameter at ``lr``.
        encoder_lr_mult: learning-rate multiplier of the encoder's parameters.

    Returns:
        ``[{"params": [...], "lr": ..., "weight_decay": ...}, ...]`` for :class:`torch.optim.AdamW`.
    """
    in_encoder = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in module.parameters():  # parameters() yields each shared parameter once
        if p.requires_grad:
            groups.setdefault((id(p) in in_encoder, p.ndim <= 1), []).append(p)
    return [
        {
            "params": params,
            "lr": lr * (encoder_lr_mult if enc else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (enc, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(
    module: nn.Module, cfg: OptimConfig, encoder: nn.Module | None = None
) -> torch.optim.Optimizer:
    """AdamW (``cfg.optimizer == "adamw"``) or SGD with ``cfg.momentum`` (``"sgd"``: the self-supervised
    CIFAR recipes) over :func:`param_groups` of ``module`` with ``cfg.lr``, ``cfg.weight_decay`` and
    ``cfg.backbone_lr_mult`` for the parameters of ``encoder``."""
    groups = param_groups(module, cfg.lr, cfg.weight_decay, encoder, cfg.backbone_lr_mult)
    if not groups:
        raise ValueError(f"{type(module).__name__} has no trainable parameters to optimise")
    if getattr(cfg, "optimizer", "adamw") == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class WarmupCosine:
    r"""Learning-rate factor: linear warm-up, then cosine decay to ``min_lr_ratio``.

    With :math:`T` = ``total_steps``, :math:`r` = ``min_lr_ratio`` and the effective warm-up
    :math:`W = \min(\text{warmup\_steps}, \max(\lfloor T/5 \rfloor, 1))` (warm-up never takes more than a
    fifth of a run whose length is known; with ``cap_warmup=False``, :math:`W = \min(\text{warmup\_steps}, T)`:
    a time-budgeted run's :math:`T` is an estimate that moves, and the configured warm-up must not shrink
    with it), the factor at optimizer step :math:`s = 0, 1, \dots` is

    .. math::

        f(s) = \begin{cases}
            (s + 1) / W & s < W \\
            r + (1 - r)\,\tfrac12\,\bigl(1 + \cos(\pi\,p)\bigr),
            \quad p = \min\!\bigl(1, (s - W) / \max(1, T - W)\bigr) & s \ge W
        \end{cases}

    ``total_steps`` may be changed at any time (the effective warm-up follows it); later factors use the
    new value. The object holds only plain numbers in ``__dict__``, so :class:`~torch.optim.lr_scheduler.LambdaLR`
    saves it in ``state_dict()`` and restores it (``total_steps`` included) in ``load_state_dict()``,
    and it pickles.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(1, int(total_steps))
        self.min_lr_ratio = float(min_lr_ratio)
        self.cap_warmup = True

    @property
    def effective_warmup(self) -> int:
        """Warm-up length for the current total: ``min(warmup_steps, max(total_steps // 5, 1))``, or
        ``min(warmup_steps, total_steps)`` with ``cap_warmup=False``."""
        if not getattr(self, "cap_warmup", True):  # (schedules saved before the flag existed: capped)
            return min(self.warmup_steps, int(self.total_steps))
        return min(self.warmup_steps, max(int(self.total_steps) // 5, 1))

    def __call__(self, step: int) -> float:
        warmup = self.effective_warmup
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, int(self.total_steps) - warmup))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return (
            f"WarmupCosine(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
            f"min_lr_ratio={self.min_lr_ratio})"
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int | float
) -> tuple[torch.optim.lr_scheduler.LambdaLR, WarmupCosine]:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` driven by one :class:`WarmupCosine` shared by all
    parameter groups (each group keeps its own peak lr, e.g. the encoder's ``lr · backbone_lr_mult``).

    ``total_steps`` is usually ``trainer.estimated_stepping_batches``; a non-finite or non-positive value
    (an unbounded run) becomes :data:`UNKNOWN_TOTAL_STEPS`. Step the scheduler once per optimizer step
    (Lightning: ``"interval": "step"``). Returns ``(scheduler, schedule)``; change ``schedule.total_steps``
    to change the length of the run.
    """
    total = int(total_steps) if math.isfinite(total_steps) and total_steps >= 1 else UNKNOWN_TOTAL_STEPS
    schedule = WarmupCosine(cfg.warmup_steps, total, cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), schedule


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    r"""DINO's teacher-momentum schedule: from ``base`` at step 0 up to ``final`` at ``total_steps``,

    .. math:: m(s) = m_\text{final} - (m_\text{final} - m_\text{base})\,\frac{\cos(\pi s / T) + 1}{2}

    with :math:`s` clamped to :math:`[0, T]` (``utils.cosine_scheduler(args.momentum_teacher, 1, ...)``
    in https://github.com/facebookresearch/dino/blob/7c446df5b9f45747937fb0d72314eb9f7b66930a/main_dino.py
    and ``utils.py``; Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021).
    """
    if total_steps <= 0:
        return final
    s = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * s / total_steps) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    r"""Momentum (exponential moving average) update of a teacher / key encoder, in place:

    .. math:: \theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_o

    for every parameter (paired in ``parameters()`` order), computed as
    ``torch._foreach_lerp_(θ_t, θ_o, 1 - m)`` (:math:`\theta_t + (1 - m)(\theta_o - \theta_t)`), one fused
    kernel per dtype/device. Buffers (e.g. batch-norm running statistics) are copied from ``online`` when
    ``copy_buffers`` (a model EMA, as timm's ``ModelEmaV3``); MoCo and DINO pass ``False``: their key
    encoder / teacher runs its own forward passes in train mode and keeps the statistics those give (the
    official code averages the parameters only).
    No autograd graph is recorded. MoCo: ``_momentum_update_key_encoder`` in
    https://github.com/facebookresearch/moco/blob/7397dfe146c7ca6bbb58e9c382498069178ba764/moco/builder.py
    (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", 2020, Eq. 2);
    DINO: "EMA update for the teacher" in
    https://github.com/facebookresearch/dino/blob/7c446df5b9f45747937fb0d72314eb9f7b66930a/main_dino.py .

    Args:
        target: the teacher / key encoder, updated in place (same architecture, dtypes and devices as
            ``online``).
        online: the student / query encoder.
        momentum: :math:`m \in [0, 1]`; 1 keeps ``target``, 0 copies ``online``.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params, o_params = list(target.parameters()), list(online.parameters())
    t_bufs, o_bufs = list(target.buffers()), list(online.buffers())
    if len(t_params) != len(o_params) or len(t_bufs) != len(o_bufs):
        raise ValueError(
            f"target and online differ: {len(t_params)} vs {len(o_params)} parameters, "
            f"{len(t_bufs)} vs {len(o_bufs)} buffers"
        )
    for t, o in zip(t_params, o_params, strict=True):
        if t.shape != o.shape:
            raise ValueError(f"parameter shapes differ: {tuple(t.shape)} vs {tuple(o.shape)}")
    if t_params and momentum < 1.0:
        torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    if copy_buffers:
        for t, o in zip(t_bufs, o_bufs, strict=True):
            t.copy_(o)
