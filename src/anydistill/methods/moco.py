"""MoCo v2 (He et al. [0], Chen et al. [1]): a query encoder, a momentum key encoder and a queue of keys.

    q = normalize(g_q(f_q(v¹))),  k = normalize(g_k(f_k(v²))),
    L = InfoNCE(q, k⁺, queue; τ) = −log exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ_j exp(q·queue_j/τ))

(:class:`~anydistill.losses.contrastive.InfoNCELoss`), τ = ``pretrain.temperature`` (0.2, MoCo v2).
Each step, before the keys are computed, the key encoder (backbone and head) moves towards the query
encoder, θ_k ← m·θ_k + (1 − m)·θ_q (m = ``pretrain.momentum``, 0.999); no gradient reaches it. The
batch's keys then enter the FIFO queue (:class:`~anydistill.losses.contrastive.KeyQueue`, ``queue_size``
keys, the oldest leave first; any size works, divisible by the batch or not); under DDP they are
gathered from every rank first, as the official ``concat_all_gather``.

Batch statistics must not leak between a query and its key (MoCo §3.3: the model would find a shortcut
through BatchNorm's batch statistics). MoCo shuffles the keys across GPUs before the key encoder (each
GPU's BN then sees other images than its queries). Here the key batch is shuffled (globally under DDP,
as MoCo's ``_batch_shuffle_ddp``), and with ``bn_splits = k > 1`` every BatchNorm2d of both encoders
computes its statistics in ``k`` groups of the batch
(:class:`~anydistill.models.split_bn.SplitBatchNorm2d`, MoCo's CIFAR demo's "split BN"), so a key's
group holds other images than its query's: the one-device form of MoCo's shuffle-BN. ``bn_splits=1``
on one device lets statistics leak (a choice, not the default); a training batch that ``bn_splits`` does
not divide would silently do the same, so it is refused at start (:func:`check_split_batch`). A backbone
with GroupNorm/LayerNorm (e.g. a ViT) needs none of this.

- [0] He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
  https://arxiv.org/abs/1911.05722
- [1] Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020,
  https://arxiv.org/abs/2003.04297 (``moco/builder.py`` in
  https://github.com/facebookresearch/moco/blob/7397dfe146c7ca6bbb58e9c382498069178ba764/moco/builder.py)
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import Tensor, nn

from anydistill.config import TrainConfig
from anydistill.errors import ConfigError
from anydistill.losses.contrastive import InfoNCELoss, KeyQueue, gather_keys
from anydistill.methods.base import MethodRun, register_method
from anydistill.methods.simclr import contrastive_views
from anydistill.methods.ssl_common import SelfSupervisedModule, build_encoder, embedding_spread, ssl_run
from anydistill.models.split_bn import convert_split_bn
from anydistill.models.ssl_heads import ProjectionHead
from anydistill.optim import ema_update

__all__ = ["MoCoModule", "check_split_batch"]

DEFAULT_TEMPERATURE = 0.2
DEFAULT_MOMENTUM = 0.999


class MoCoModule(SelfSupervisedModule):
    """MoCo v2 on ``cfg.pretrain.backbone``; ``ssl_loss(views=[query view, key view])``."""

    def __init__(self, cfg: TrainConfig, knn_monitor: bool = False) -> None:
        super().__init__(cfg, knn_monitor)
        p = cfg.pretrain
        self.encoder = convert_split_bn(build_encoder(p, cfg.data.image_size), p.bn_splits)
        self.projection = ProjectionHead(self.encoder.dim, p.proj_hidden_dim, p.proj_dim, batch_norm=False)
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_projection = copy.deepcopy(self.projection).requires_grad_(False)
        self.queue = KeyQueue(p.proj_dim, p.queue_size)
        temperature = p.temperature if p.temperature is not None else DEFAULT_TEMPERATURE
        self.criterion = InfoNCELoss(temperature=temperature)
        self.momentum = p.momentum if p.momentum is not None else DEFAULT_MOMENTUM

    @torch.no_grad()
    def keys(self, view: Tensor) -> Tensor:
        """``(B, proj_dim)`` keys of ``view``: shuffled, encoded, un-shuffled.

        Under DDP the shuffle is global (MoCo's ``_batch_shuffle_ddp``): every rank's views are gathered,
        one permutation (rank 0's, broadcast) deals them out again, each rank encodes its share, and the
        keys are gathered and put back in order; each rank keeps its own images' keys.
        """
        encode = nn.Sequential(self.key_encoder, self.key_projection)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world == 1:
            order = torch.randperm(view.shape[0], device=view.device)
            return encode(view[order])[order.argsort()]
        every = gather_keys(view)  # (world·B, 3, S, S), rank-major
        order = torch.randperm(every.shape[0], device=view.device)
        dist.broadcast(order, src=0)
        rank, n = dist.get_rank(), view.shape[0]
        keys = gather_keys(encode(every[order.view(world, n)[rank]]))
        return keys[order.argsort()].view(world, n, -1)[rank]

    def ssl_loss(self, views: list[Tensor]) -> dict[str, Tensor]:
        if len(views) != 2:
            raise ValueError(f"MoCo takes 2 views, got {len(views)}")
        h = self.encoder(views[0])  # (B, D)
        q = self.projection(h)  # (B, d)
        if self.training:
            ema_update(self.key_encoder, self.encoder, self.momentum, copy_buffers=False)
            ema_update(self.key_projection, self.projection, self.momentum, copy_buffers=False)
        k = self.keys(views[1])  # (B, d), no gradient
        loss = self.criterion(q, k, self.queue.keys.clone())
        if self.training:
            self.queue.enqueue(gather_keys(nn.functional.normalize(k, dim=1)))
        return {"loss": loss, "embedding_spread": embedding_spread(h)}


def check_split_batch(batch_size: int, train_images: int, bn_splits: int, has_batch_norm: bool) -> None:
    """Refuse a training batch that split BatchNorm cannot split: with ``batch % bn_splits != 0``
    :class:`~anydistill.models.split_bn.SplitBatchNorm2d` falls back to whole-batch statistics, which a
    query and its key would then share (the leak split BN is there to stop). The batch is
    ``batch_size``, or the whole training set when it is smaller (its one batch per epoch). A group of
    one image is refused too: BatchNorm cannot normalise one value per channel (a pooled head's).

    Raises:
        ConfigError: naming ``pretrain.bn_splits`` and the batch, with the ways out.
    """
    batch = min(batch_size, train_images)
    if has_batch_norm and bn_splits > 1 and batch % bn_splits:
        what = f"data.batch_size={batch_size}" if batch == batch_size else (
            f"the one batch of all {train_images} training images (data.batch_size={batch_size} is larger)"
        )  # fmt: skip
        raise ConfigError(
            f"pretrain.bn_splits={bn_splits} does not divide {what}: split BatchNorm would fall back to "
            f"whole-batch statistics, shared by a query and its key; make the batch a multiple of {bn_splits}, "
            "or set pretrain.bn_splits=1 to accept the leak"
        )
    if has_batch_norm and bn_splits > 1 and batch // bn_splits < 2:
        raise ConfigError(
            f"pretrain.bn_splits={bn_splits} splits a batch of {batch} into groups of {batch // bn_splits} "
            "image: BatchNorm needs at least 2 per group (a pooled head, e.g. MobileNetV4's, has one value per "
            f"image); use a batch of at least {2 * bn_splits} or fewer splits"
        )


@register_method("moco", tasks=("embed",))
def build_moco(cfg: TrainConfig) -> MethodRun:
    """MoCo v2: momentum key encoder, FIFO queue of keys, InfoNCE (self-supervised, no labels)."""
    run = ssl_run(cfg, MoCoModule, contrastive_views)
    n = len(run.datamodule.train_set)  # a set smaller than one batch is the one batch of every step
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in run.module.encoder.modules())
    check_split_batch(cfg.data.batch_size, n, cfg.pretrain.bn_splits, has_bn)
    return run
