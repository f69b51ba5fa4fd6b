"""Split BatchNorm: BatchNorm2d whose training statistics come from ``num_splits`` groups of a batch,
as if the batch were spread over ``num_splits`` GPUs (MoCo's shuffle-BN on one device; MoCo's CIFAR
demo and cifar10-fast's ``GhostBatchNorm``).

Shapes: ``x (N, C, H, W)`` with ``N`` divisible by ``k = num_splits``; sample ``i`` belongs to group
``i mod k`` (the batch viewed as ``(N/k, k·C, H, W)``: one ``F.batch_norm`` call for all groups). Each
group is normalised with its own mean and variance; the running statistics are updated with the
average of the groups' statistics, and kept as ordinary ``(C,)`` buffers (unlike lightly's
``SplitBatchNorm``, whose ``(k·C,)`` buffers change the ``state_dict``), so a model with split BN saves
and loads like its plain twin. In eval mode, or when ``N`` is not divisible by ``k``, it is plain
BatchNorm2d.

timm's ``BatchNormAct2d`` (BatchNorm, then dropout and the activation, in one layer: MobileNetV3/V4,
EfficientNet, RegNet ...) becomes a :class:`SplitBatchNormAct2d` that keeps its dropout and activation;
any other subclass of ``BatchNorm2d`` with a forward of its own is refused rather than replaced by a
layer that would do less.

Written here: a dozen lines over ``F.batch_norm``; torch has no grouped batch norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SplitBatchNorm2d", "SplitBatchNormAct2d", "convert_split_bn"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with per-group training statistics (see the module docstring)."""

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        k = self.num_splits
        n, c, h, w = x.shape
        if not self.training or k == 1 or n % k or not self.track_running_stats:
            return super().forward(x)
        assert self.running_mean is not None and self.running_var is not None
        mean, var = self.running_mean.repeat(k), self.running_var.repeat(k)  # (k·C,)
        weight = self.weight.repeat(k) if self.weight is not None else None
        bias = self.bias.repeat(k) if self.bias is not None else None
        momentum = 0.1 if self.momentum is None else self.momentum
        out = F.batch_norm(x.reshape(n // k, k * c, h, w), mean, var, weight, bias, True, momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(k, c).mean(0))
            self.running_var.copy_(var.view(k, c).mean(0))
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        return out.view(n, c, h, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


class SplitBatchNormAct2d(SplitBatchNorm2d):
    """:class:`SplitBatchNorm2d`, then the ``drop`` and ``act`` modules of the timm ``BatchNormAct2d`` it
    replaces (same ``state_dict`` keys: the activation and dropout have no parameters)."""

    def __init__(self, num_features: int, num_splits: int, drop: nn.Module, act: nn.Module, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(num_features, num_splits, **kwargs)
        self.drop = drop
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


def _is_batch_norm_act(layer: nn.Module) -> bool:
    """timm's ``BatchNormAct2d`` (and subclasses that keep its forward): BatchNorm, ``drop``, ``act``."""
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(layer, BatchNormAct2d) and type(layer).forward is BatchNormAct2d.forward


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` (in place) by a :class:`SplitBatchNorm2d` with the same
    parameters and buffers; returns ``module``. ``num_splits <= 1`` leaves it unchanged."""
    if num_splits <= 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            kwargs = dict(eps=child.eps, momentum=child.momentum, affine=child.affine,
                          track_running_stats=child.track_running_stats)  # fmt: skip
            if _is_batch_norm_act(child):
                split: SplitBatchNorm2d = SplitBatchNormAct2d(
                    child.num_features, num_splits, child.drop, child.act, **kwargs
                )
            elif type(child).forward is nn.BatchNorm2d.forward:
                split = SplitBatchNorm2d(child.num_features, num_splits, **kwargs)
            else:
                raise ValueError(
                    f"split BatchNorm cannot stand in for {name!r}, a {type(child).__name__} whose forward does "
                    "more than BatchNorm2d's; set pretrain.bn_splits=1"
                )
            split.load_state_dict(child.state_dict())
            split.to(device=child.weight.device if child.weight is not None else None)
            split.train(child.training)
            setattr(module, name, split)
        else:
            convert_split_bn(child, num_splits)
    return module
