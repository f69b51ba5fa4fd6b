"""Heads of the self-supervised methods and the pooled-embedding encoder they sit on.

- :class:`EmbeddingEncoder`: any timm model without its classifier, ``(B, 3, H, W)`` → ``(B, D)`` (the
  global average pool of a CNN, the class token of a ViT: timm's ``num_classes=0``).
- :class:`ProjectionHead`: the MLP of SimCLR [0] (``Linear → BN → ReLU → Linear``, 2 layers) and
  MoCo v2 [1] (the same without BN), whose output the contrastive loss compares; thrown away after
  pre-training (SimCLR §4.2: the representation *before* the head is the better one).
- :class:`DINOHead`: DINO's [2] 3-layer MLP (GELU, hidden 2048) → bottleneck 256 → L2 normalisation →
  a weight-normalised linear layer to ``K`` prototypes (``K`` = 65,536 in the paper), its norm fixed at 1
  by default (``norm_last_layer``) and its gradient cancelled during the first epoch(s)
  (``freeze_last_layer``), as the official code.

Written here rather than taken from a library: each is a few lines over ``torch.nn``; lightly's
equivalents (``SimCLRProjectionHead``, ``MoCoProjectionHead``, ``DINOProjectionHead``) are what the
tests compare against (same weights → same outputs).

- [0] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
  https://arxiv.org/abs/2002.05709
- [1] Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020, https://arxiv.org/abs/2003.04297
- [2] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
  https://arxiv.org/abs/2104.14294 (``vision_transformer.py: DINOHead`` in
  https://github.com/facebookresearch/dino/blob/7c446df5b9f45747937fb0d72314eb9f7b66930a/vision_transformer.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from anydistill.models.backbones import checked_timm_weights

__all__ = ["DINOHead", "EmbeddingEncoder", "ProjectionHead"]


class EmbeddingEncoder(nn.Module):
    """A timm model as a pooled-embedding encoder: ``x (B, 3, H, W)`` normalised → ``(B, D)``.

    ``D`` = timm's ``head_hidden_size`` or ``num_features`` (512 for ResNet-18, 384 for ViT-S, 1280 for
    MobileNetV4-Conv-Small, whose head convolution follows the pool). The wrapped model is ``self.model``
    (``timm.create_model(name, num_classes=0)``), whose ``state_dict()`` is a timm weights file: what
    :meth:`save_timm_weights` writes for students (``backbone_checkpoint_path``) and frozen encoders
    (``timm:<name>@<file>``) to load.

    Args:
        name: a timm model name (``resnet18_cifar``, ``resnet18``, ``vit_small_patch16_224``, ...).
        checkpoint_path: optional local timm weights file to start from.
        **timm_kwargs: for ``timm.create_model`` (``img_size`` for ViTs, ``drop_path_rate``, ...).
    """

    def __init__(self, name: str, checkpoint_path: str | Path | None = None, **timm_kwargs: Any) -> None:
        super().__init__()
        load: dict[str, Any] = {"pretrained": False}
        if checkpoint_path is not None:
            load = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(checkpoint_path)}}
        self.name = name
        self.timm_kwargs = dict(timm_kwargs)
        with checked_timm_weights(name, checkpoint_path):
            self.model = timm.create_model(name, num_classes=0, **load, **timm_kwargs)
        # The pooled output's width: timm's ``head_hidden_size`` where a head layer sits after the pool
        # (MobileNetV3/V4: 960 features -> conv_head -> 1280), else ``num_features``.
        self.dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.pixel_mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.pixel_std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        self.is_vit = hasattr(self.model, "patch_embed") and hasattr(self.model, "num_prefix_tokens")
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        self.patch_size = int(patch if isinstance(patch, int) else patch[0]) if patch is not None else None

    @classmethod
    def probe(cls, name: str, **timm_kwargs: Any) -> EmbeddingEncoder:
        """A weightless copy on the ``meta`` device (milliseconds, even for a ViT-L): its ``dim``,
        ``is_vit``, ``patch_size`` and normalisation, before anything is allocated."""
        with torch.device("meta"):
            return cls(name, **timm_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def save_timm_weights(self, path: str | Path) -> Path:
        """Write the timm model's weights (no classifier) to ``path`` atomically; returns ``path``."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, tmp)
        tmp.replace(path)
        return path


class ProjectionHead(nn.Module):
    """MLP projection head: ``(B, in_dim)`` → ``(B, out_dim)``.

    ``num_layers`` linear layers; every one but the last is followed by BatchNorm1d (``batch_norm``) and
    ReLU; the last by BatchNorm1d too when ``last_bn``. SimCLR: ``ProjectionHead(512, 2048, 128,
    last_bn=True)`` (the official code's head ends in BN as well: ``projection_head`` in
    google-research/simclr ``tf2/model.py``; lightly's ``SimCLRProjectionHead``); MoCo v2:
    ``ProjectionHead(512, 2048, 128, batch_norm=False)`` (lightly's ``MoCoProjectionHead``). Linear layers
    have a bias only when no BatchNorm follows them.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_bn: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i in range(num_layers):
            last = i == num_layers - 1
            bn = batch_norm and not last
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=not (bn or (last and last_bn))))
            if bn:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            if not last:
                layers.append(nn.ReLU(inplace=True))
            elif last_bn:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DINOHead(nn.Module):
    r"""DINO's projection head: ``(B, in_dim)`` → ``(B, out_dim)`` prototype scores.

    .. math:: h(x) = W \, \frac{g(x)}{\lVert g(x) \rVert_2}, \qquad
              W_k = \gamma_k \frac{v_k}{\lVert v_k \rVert_2}

    with ``g`` a ``num_layers``-layer MLP (GELU; BatchNorm1d after the hidden layers with
    ``batch_norm``, for CNN backbones) ending at ``bottleneck_dim``, and ``W`` weight-normalised
    (``torch.nn.utils.parametrizations.weight_norm``), its per-row scale ``γ`` fixed at 1 when
    ``norm_last_layer`` (the official default). Linear weights truncated-normal (std 0.02), biases 0.

    ``freeze_last_layer``: :meth:`cancel_last_layer_gradients` drops the last layer's gradients while
    ``epoch < freeze_last_layer`` (DINO: 1 epoch).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
        freeze_last_layer: int = 1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)  # γ (out_dim, 1)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)
        self.freeze_last_layer = freeze_last_layer

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1, p=2)  # (B, bottleneck_dim)
        return self.last_layer(z)  # (B, out_dim)

    def cancel_last_layer_gradients(self, epoch: int) -> None:
        """Set the last layer's gradients to None while ``epoch < freeze_last_layer``."""
        if epoch >= self.freeze_last_layer:
            return
        for p in self.last_layer.parameters():
            p.grad = None
