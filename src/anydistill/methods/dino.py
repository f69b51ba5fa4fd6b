"""DINO (Caron et al. [0]): self-distillation with no labels, a student and a momentum teacher.

    P_s(x) = softmax(g_s(f_s(x)) / τ_s),   P_t(x) = softmax((g_t(f_t(x)) − c) / τ_t)
    L = Σ_{x ∈ {x¹_g, x²_g}} Σ_{x' ∈ V, x' ≠ x} H(P_t(x), P_s(x'))      (averaged over the pairs)

Views ``V`` (:class:`~anydistill.data.views.DINOViews`): 2 global crops (scale 0.4–1, ``data.image_size``)
and ``n_local_crops`` local crops (scale 0.05–0.4, ``local_size``); the teacher sees only the global ones.
The loss, centring ``c`` (EMA of the teacher's batch mean, ``center_momentum`` 0.9) and sharpening
(``teacher_temp`` 0.04 after a linear warm-up from ``warmup_teacher_temp`` over
``warmup_teacher_temp_epochs``; student ``student_temp`` 0.1) are
:class:`~anydistill.losses.dino.DINOLoss`. The teacher (backbone and :class:`~anydistill.models.ssl_heads.DINOHead`)
gets no gradient; after every optimizer step θ_t ← m·θ_t + (1 − m)·θ_s with ``m`` on a cosine schedule
from ``pretrain.momentum`` (0.996) to 1 over the run (:func:`~anydistill.optim.cosine_momentum`). The
last layer of the student's head gets no update during the first ``freeze_last_layer`` epoch(s).

The teacher is the network the paper evaluates and keeps: the kNN monitor and the exported backbone are
the teacher's. Not reproduced from the official recipe: the weight-decay schedule (0.04 → 0.4; here the
constant ``optim.weight_decay``) and the per-layer gradient clipping (``trainer.gradient_clip_val``
clips the global norm instead).

- [0] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
  https://arxiv.org/abs/2104.14294 (``main_dino.py`` in
  https://github.com/facebookresearch/dino/blob/7c446df5b9f45747937fb0d72314eb9f7b66930a/main_dino.py)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from anydistill.config import TrainConfig
from anydistill.data.views import DINOViews
from anydistill.errors import ConfigError
from anydistill.losses.dino import DINOLoss
from anydistill.methods.base import MethodRun, register_method
from anydistill.methods.ssl_common import (
    SelfSupervisedModule,
    build_encoder,
    check_encoder,
    embedding_spread,
    ssl_run,
)
from anydistill.models.ssl_heads import DINOHead, EmbeddingEncoder
from anydistill.optim import cosine_momentum, ema_update

__all__ = ["DINOModule", "dino_views", "local_crop_size"]

DEFAULT_MOMENTUM = 0.996


def local_crop_size(cfg: TrainConfig) -> int:
    """``pretrain.local_size``, else 96/224 of the global size (DINO's ratio), rounded to the ViT patch.

    Raises:
        ConfigError: a local size that is not a multiple of the ViT's patch size.
    """
    p, size = cfg.pretrain, cfg.data.image_size
    probe, _ = check_encoder(p, size)
    patch = probe.patch_size if probe.is_vit else 1
    assert patch is not None
    if p.local_size is not None:
        if p.local_size % patch:
            raise ConfigError(
                f"pretrain.local_size={p.local_size} is not a multiple of {p.backbone}'s patch size {patch}"
            )
        return p.local_size
    return max(patch, round(size * 96 / 224 / patch) * patch)


def dino_views(cfg: TrainConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> DINOViews:
    """DINO's multi-crop: 2 global views (``pretrain.crop_scale``, default 0.4–1) and
    ``n_local_crops`` local views (``local_scale``) of :func:`local_crop_size`."""
    p = cfg.pretrain
    return DINOViews(
        global_size=cfg.data.image_size, local_size=local_crop_size(cfg), n_local=p.n_local_crops,
        global_scale=tuple(p.crop_scale) if p.crop_scale else (0.4, 1.0), local_scale=tuple(p.local_scale),
        mean=mean, std=std,
    )  # fmt: skip


class DINOModule(SelfSupervisedModule):
    """DINO on ``cfg.pretrain.backbone``; ``ssl_loss(views=[g1, g2, l1, ..., ln])``."""

    def __init__(self, cfg: TrainConfig, knn_monitor: bool = False) -> None:
        super().__init__(cfg, knn_monitor)
        p = cfg.pretrain
        self.encoder = build_encoder(p, cfg.data.image_size)
        batch_norm = p.dino_batch_norm if p.dino_batch_norm is not None else not self.encoder.is_vit
        self.head = DINOHead(
            self.encoder.dim, p.dino_out_dim, p.dino_hidden_dim, p.dino_bottleneck_dim, batch_norm=batch_norm,
            norm_last_layer=p.norm_last_layer, freeze_last_layer=p.freeze_last_layer,
        )  # fmt: skip
        self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.criterion = DINOLoss(
            p.dino_out_dim, teacher_temp=p.teacher_temp, warmup_teacher_temp=p.warmup_teacher_temp,
            warmup_teacher_temp_epochs=p.warmup_teacher_temp_epochs, student_temp=p.student_temp,
            center_momentum=p.center_momentum,
        )  # fmt: skip
        self.base_momentum = p.momentum if p.momentum is not None else DEFAULT_MOMENTUM

    def embedding_encoder(self) -> EmbeddingEncoder:
        return self.teacher_encoder

    def encoder_prefix(self) -> str:
        return "teacher_encoder."

    def ssl_loss(self, views: list[Tensor]) -> dict[str, Tensor]:
        if len(views) < 2:
            raise ValueError(f"DINO takes 2 global views and any number of local views, got {len(views)}")
        n = views[0].shape[0]
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(torch.cat(views[:2]))).chunk(2)  # 2 × (B, K)
        h = self.encoder(torch.cat(views[:2]))  # (2B, D)
        student = list(self.head(h).chunk(2))
        if len(views) > 2:  # the local crops, another resolution: one more pass
            student += list(self.head(self.encoder(torch.cat(views[2:]))).split(n))
        loss = self.criterion(student, list(teacher), epoch=self.current_epoch if self._trainer else 0)
        return {"loss": loss, "embedding_spread": embedding_spread(h[:n])}

    def on_after_backward(self) -> None:
        self.head.cancel_last_layer_gradients(self.current_epoch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        m = cosine_momentum(self.global_step, self.total_steps(), base=self.base_momentum)
        ema_update(nn.ModuleList([self.teacher_encoder, self.teacher_head]),
                   nn.ModuleList([self.encoder, self.head]), m, copy_buffers=False)  # fmt: skip
        if self._trainer is not None:
            self.log("train/teacher_momentum", m, batch_size=batch["views"][0].shape[0])


@register_method("dino", tasks=("embed",))
def build_dino(cfg: TrainConfig) -> MethodRun:
    """DINO: student and momentum teacher, multi-crop, centring and sharpening (self-supervised)."""
    local_crop_size(cfg)  # a bad local size fails before anything is built
    return ssl_run(cfg, DINOModule, dino_views)
