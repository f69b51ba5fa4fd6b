"""segmentation_models_pytorch (smp) U-Net / FPN as anydistill semantic models, for the peer benchmark.

``register()`` adds ``smp_unet`` and ``smp_fpn`` to anydistill's model registry in this process, so the
peer models go through exactly the same path as the zoo's (``anydistill.api.train`` with the same config,
data module, augmentation, loss, optimizer, schedule, checkpoint choice and ``api.evaluate``): the only
thing that differs between a zoo row and a peer row is the network.

An smp model is split into anydistill's two parts without changing its computation:

* backbone = ``smp_model.encoder``: ``x (B, 3, H, W)`` → ``[x, f_2, f_4, f_8, f_16, f_32]`` (smp's
  list, the input itself first, which smp's decoders expect);
* head = ``smp_model.decoder`` + ``smp_model.segmentation_head``: that list → logits ``(B, K, H, W)``.

``SegmentationModel(backbone, head)`` then computes ``head(backbone(x), x.shape[-2:])`` = ``smp_model(x)``
(tested in ``tests/benchmarks/test_peer_models.py``). Random initialisation only (``encoder_weights=None``):
nothing can be downloaded here.

This stays under ``benchmarks/``: smp is a benchmark dependency (``pip install segmentation-models-pytorch``),
never one of the library's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from anydistill.models.task_models import SegmentationModel
from anydistill.models.zoo import MODELS, load_model_weights


class SmpEncoder(nn.Module):
    """smp's encoder with the attributes anydistill's backbones have (``channels``, ``reductions``,
    ``input_multiple``); ``forward`` returns smp's full list (input first)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.channels = list(encoder.out_channels)
        self.reductions = [2**i for i in range(len(self.channels))]
        self.input_multiple = int(encoder.output_stride)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.encoder(x)


class SmpHead(nn.Module):
    """smp's decoder + segmentation head: ``(features, image_size)`` → logits ``(B, K, H, W)``."""

    def __init__(self, decoder: nn.Module, segmentation_head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.num_classes = num_classes

    def forward(self, features: Sequence[Tensor], image_size: Sequence[int]) -> Tensor:
        logits = self.segmentation_head(self.decoder(list(features)))
        if tuple(logits.shape[-2:]) != tuple(image_size):
            raise ValueError(
                f"smp returned {tuple(logits.shape[-2:])} logits for a {tuple(image_size)} input"
            )
        return logits


def build_smp(
    architecture: str,
    num_classes: int,
    encoder: str = "resnet18",
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    **smp_kwargs: Any,
) -> SegmentationModel:
    """``smp.<architecture>(encoder_name=encoder, encoder_weights=None, classes=num_classes, **smp_kwargs)``
    as a :class:`SegmentationModel` (ImageNet normalisation, as smp's encoders are defined with)."""
    import segmentation_models_pytorch as smp  # the benchmark's optional dependency

    if pretrained:
        raise ValueError("the peer benchmark trains smp models from random initialisation only")
    net = getattr(smp, architecture)(
        encoder_name=encoder, encoder_weights=None, classes=num_classes, **smp_kwargs
    )
    model = SegmentationModel(
        SmpEncoder(net.encoder), SmpHead(net.decoder, net.segmentation_head, num_classes)
    )
    if checkpoint_path is not None:
        load_model_weights(model, checkpoint_path)
    return model


def register() -> None:
    """Add ``smp_unet`` and ``smp_fpn`` to the model registry (once per process)."""
    if "smp_unet" in MODELS.names():
        return

    def smp_unet(
        num_classes: int = 21, pretrained: bool = False, checkpoint_path: str | None = None, **kw: Any
    ):
        """segmentation_models_pytorch U-Net (decoder 256-128-64-32-16, BN)."""
        return build_smp("Unet", num_classes, pretrained=pretrained, checkpoint_path=checkpoint_path, **kw)

    def smp_fpn(
        num_classes: int = 21, pretrained: bool = False, checkpoint_path: str | None = None, **kw: Any
    ):
        """segmentation_models_pytorch FPN (pyramid 256, segmentation 128, output at stride 4 → ×4)."""
        return build_smp("FPN", num_classes, pretrained=pretrained, checkpoint_path=checkpoint_path, **kw)

    MODELS.register("smp_unet")(smp_unet)
    MODELS.register("smp_fpn")(smp_fpn)
