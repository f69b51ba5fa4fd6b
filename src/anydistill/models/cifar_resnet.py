"""CIFAR-style ResNets as timm models: ``resnet18_cifar``, ``resnet50_cifar`` and the small ``resnet8_cifar``.

The CIFAR variant of He et al. [0] that SimCLR [1] (appendix B.9), MoCo's CIFAR demos and lightly's
CIFAR-10 benchmarks [2] use: the ImageNet stem (7×7 convolution at stride 2, then a 3×3 max-pool at
stride 2) becomes a single 3×3 convolution at stride 1, so a 32×32 image keeps its resolution through
the first stage (stage strides 1, 2, 4, 8 instead of 4, 8, 16, 32). Everything else is timm's
:class:`~timm.models.resnet.ResNet`, so ``timm.create_model("resnet18_cifar", ...)`` works everywhere a
timm name does (``features_only``, ``num_classes=0``, weights files through timm's loader): the names
are registered with timm when :mod:`anydistill.models` is imported.

- [0] He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385
- [1] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
  https://arxiv.org/abs/2002.05709
- [2] https://github.com/lightly-ai/lightly/blob/master/benchmarks/cifar10_benchmark.py
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

__all__ = ["CifarResNet"]


class CifarResNet(ResNet):
    """timm's ResNet with the CIFAR stem: ``conv1`` 3×3 stride 1 (no bias), ``bn1``, ReLU, no max-pool.

    Shapes: ``(B, 3, H, W)`` → stages at strides 1, 2, 4, 8 → ``forward_features`` ``(B, C, H/8, W/8)``
    (``C`` = 512 for ResNet-18, 2048 for ResNet-50) → pooled ``(B, C)`` with ``num_classes=0``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        in_chans = self.conv1.in_channels
        width = self.conv1.out_channels
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        for info in self.feature_info:  # every stage is 4x finer than in the ImageNet stem
            info["reduction"] = max(1, int(info["reduction"]) // 4)


def _cfg() -> dict[str, Any]:
    # CIFAR-10 statistics (the ones lightly's and most CIFAR benchmarks normalise with).
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "conv1",
        "classifier": "fc",
    }


# Read by timm's register_model (a module-level ``default_cfgs``): no weights to download, only the
# input size and normalisation constants that timm.data and our pre-processing read.
default_cfgs = generate_default_cfgs(
    {"resnet8_cifar": _cfg(), "resnet18_cifar": _cfg(), "resnet50_cifar": _cfg()}
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, **kwargs)


@register_model
def resnet8_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """A small student: one basic block per stage, widths 16, 32, 64, 128 after timm's plain 64-wide stem, 0.31 M parameters
    without the classifier, 1/16 of ResNet-18's width (the ResNet-8 of the CIFAR distillation literature,
    e.g. Tian et al. "Contrastive Representation Distillation", ICLR 2020, is 16-32-64 wide, three stages)."""
    kwargs = dict(dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128)), **kwargs)
    return _create("resnet8_cifar", pretrained, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18 with the CIFAR stem (11.2 M parameters without the classifier)."""
    return _create(
        "resnet18_cifar", pretrained, **dict(dict(block=BasicBlock, layers=(2, 2, 2, 2)), **kwargs)
    )


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-50 with the CIFAR stem (23.5 M parameters without the classifier)."""
    return _create(
        "resnet50_cifar", pretrained, **dict(dict(block=Bottleneck, layers=(3, 4, 6, 3)), **kwargs)
    )
