"""SimCLR (Chen et al. [0]): two augmented views of each image, a projection MLP, NT-Xent.

    z = g(f(v)),   L = NT-Xent(z¹, z²; τ)   (:class:`~anydistill.losses.contrastive.NTXentLoss`)

``f`` the timm backbone (pooled), ``g`` :class:`~anydistill.models.ssl_heads.ProjectionHead`
(``Linear → BN → ReLU → Linear → BN``, 2048 → 128). Each of the 2N views has its other view as positive and
the 2N − 2 others as negatives; under DDP every rank's projections are gathered (with gradient) as
more negatives, so the effective batch is the global one, as the paper's TPU training. τ =
``pretrain.temperature`` (0.1 by default, the paper's ImageNet value; its CIFAR experiments use 0.5).

- [0] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
  https://arxiv.org/abs/2002.05709
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.config import TrainConfig
from anydistill.data.views import SimCLRViews
from anydistill.losses.contrastive import NTXentLoss
from anydistill.methods.base import MethodRun, register_method
from anydistill.methods.ssl_common import SelfSupervisedModule, build_encoder, embedding_spread, ssl_run
from anydistill.models.ssl_heads import ProjectionHead

__all__ = ["SimCLRModule", "contrastive_views"]

DEFAULT_TEMPERATURE = 0.1


def contrastive_views(cfg: TrainConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> SimCLRViews:
    """SimCLR's / MoCo v2's two views: random resized crop (scale ``pretrain.crop_scale``, 0.08–1),
    flip, colour jitter (MoCo v2's 0.4/0.4/0.4/0.1, p 0.8), grey (p 0.2), blur (``pretrain.blur_p``; by
    default 0.5, none for views of 32 px or less: SimCLR's CIFAR setting)."""
    p = cfg.pretrain
    scale = tuple(p.crop_scale) if p.crop_scale else (0.08, 1.0)
    return SimCLRViews(cfg.data.image_size, scale=scale, blur_p=p.blur_p, mean=mean, std=std)


class SimCLRModule(SelfSupervisedModule):
    """SimCLR on ``cfg.pretrain.backbone``; ``ssl_loss(views=[v1, v2])`` with ``v (B, 3, S, S)``."""

    def __init__(self, cfg: TrainConfig, knn_monitor: bool = False) -> None:
        super().__init__(cfg, knn_monitor)
        p = cfg.pretrain
        self.encoder = build_encoder(p, cfg.data.image_size)
        self.projection = ProjectionHead(self.encoder.dim, p.proj_hidden_dim, p.proj_dim, last_bn=True)
        temperature = p.temperature if p.temperature is not None else DEFAULT_TEMPERATURE
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def ssl_loss(self, views: list[Tensor]) -> dict[str, Tensor]:
        if len(views) != 2:
            raise ValueError(f"SimCLR takes 2 views, got {len(views)}")
        n = views[0].shape[0]
        h = self.encoder(torch.cat(views))  # (2N, D): one pass, BN over both views
        z = self.projection(h)  # (2N, proj_dim)
        return {"loss": self.criterion(z[:n], z[n:]), "embedding_spread": embedding_spread(h[:n])}


@register_method("simclr", verbs=("pretrain",), tasks=("embed",))
def build_simclr(cfg: TrainConfig) -> MethodRun:
    """SimCLR: two views, projection MLP, NT-Xent (self-supervised, no labels)."""
    return ssl_run(cfg, SimCLRModule, contrastive_views, min_loss_batch=2)  # NT-Xent: 2 images or more
