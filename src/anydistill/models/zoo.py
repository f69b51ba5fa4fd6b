"""Named task models: builders by size over one private constructor per task (segment-anything's
``build_sam_vit_b`` → ``_build_sam`` pattern), registered in :data:`MODELS`.

Every builder is ``fn([num_classes,] pretrained=False, checkpoint_path=None, **overrides)``:

* ``checkpoint_path``: a local file with the WHOLE model's weights (``model.state_dict()`` saved with
  ``torch.save`` or as ``.safetensors``; a Lightning checkpoint's ``state_dict`` with a prefix such as
  ``student.`` is found too);
* ``pretrained=True`` + ``backbone_checkpoint_path``: initialise only the backbone from a local timm
  weights file (e.g. ImageNet weights); nothing is ever downloaded;
* overrides: ``backbone`` (any timm name), ``out_indices``, ``backbone_kwargs`` (dict for
  ``timm.create_model``), head sizes (``features``, ``out_channels``, ``head_hidden``,
  ``late_upsample`` for depth; ``fpn_channels``, ``head_channels``, ``dropout`` for segmentation's FPN, or
  ``decoder="unet"`` with ``decoder_channels`` and ``output_stride`` for a U-Net decoder),
  ``pixel_mean``, ``pixel_std`` (default: the backbone's pre-training normalisation).

Default student: ``depth_tiny`` (MobileNetV4-Conv-Small + light DPT head): at 518² (padded to 544²)
on a 2-core CPU it runs ~15× faster than Depth-Anything-V2-Small; see benchmarks/bench_latency.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from anydistill.checkpoints import read_state_dict
from anydistill.errors import ConfigError, DataError
from anydistill.models.backbones import TimmBackbone
from anydistill.models.detection import DetectionModel, build_detector
from anydistill.models.heads.dpt import DPTHead
from anydistill.models.heads.fpn import FPNDecoder
from anydistill.models.heads.unet import UNetDecoder
from anydistill.models.task_models import DepthModel, SegmentationModel
from anydistill.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")

DEFAULT_DEPTH_STUDENT = "depth_tiny"
DEFAULT_NUM_CLASSES = 21


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name, e.g. ``build_model("depth_tiny")``."""
    return MODELS.build(name, **kwargs)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


# --------------------------------------------------------------------------------------------------
# Loading whole-model weights
# --------------------------------------------------------------------------------------------------


def _strip_prefix(state: dict[str, Any], model_keys: Sequence[str], path: Path) -> dict[str, Any]:
    """The part of ``state`` under the shortest prefix (``""``, ``"student."``, ``"model."``, ...) that
    holds every key of the model."""
    ref = model_keys[0]
    prefixes = sorted({k[: -len(ref)] for k in state if k == ref or k.endswith("." + ref)}, key=len)
    for p in prefixes:
        if all(p + k in state for k in model_keys):
            return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
    missing = [k for k in model_keys if k not in state][:5]
    raise DataError(path, f"does not hold this model's weights (missing e.g. {missing})")


def load_model_weights(model: nn.Module, checkpoint_path: str | Path) -> nn.Module:
    """Load a whole-model checkpoint into ``model`` (strict), in place; returns ``model``."""
    path = Path(checkpoint_path)
    own = model.state_dict()
    state = _strip_prefix(read_state_dict(path), list(own), path)
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if unexpected or wrong:
        raise DataError(
            path, f"does not match the model: shape mismatch {wrong[:3]}, unexpected keys {unexpected[:5]}"
        )
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------------------------------
# Private constructors
# --------------------------------------------------------------------------------------------------


def _build_backbone(
    backbone: str,
    out_indices: Sequence[int] | None,
    pretrained: bool,
    backbone_checkpoint_path: str | Path | None,
    backbone_kwargs: dict[str, Any] | None,
) -> TimmBackbone:
    return TimmBackbone(
        backbone,
        pretrained=pretrained,
        out_indices=out_indices,
        checkpoint_path=backbone_checkpoint_path,
        **(backbone_kwargs or {}),
    )


def _finish(model: nn.Module, checkpoint_path: str | Path | None) -> nn.Module:
    if checkpoint_path is not None:
        load_model_weights(model, checkpoint_path)
    return model


def _build_depth(
    backbone: str,
    out_indices: Sequence[int] | None,
    features: int,
    out_channels: Sequence[int],
    head_hidden: int = 32,
    late_upsample: bool = False,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    backbone_checkpoint_path: str | Path | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> DepthModel:
    enc = _build_backbone(backbone, out_indices, pretrained, backbone_checkpoint_path, backbone_kwargs)
    if len(out_channels) != len(enc.channels):
        # A user-picked backbone with another number of levels: keep the widths' scale.
        out_channels = [out_channels[min(i, len(out_channels) - 1)] for i in range(len(enc.channels))]
    head = DPTHead(
        enc.channels,
        enc.reductions,
        features=features,
        out_channels=out_channels,
        head_hidden=head_hidden,
        late_upsample=late_upsample,
    )
    model = DepthModel(enc, head, pixel_mean or enc.pixel_mean, pixel_std or enc.pixel_std)
    return _finish(model, checkpoint_path)


def _build_segmentation(
    backbone: str,
    out_indices: Sequence[int] | None,
    num_classes: int,
    fpn_channels: int,
    head_channels: int,
    dropout: float = 0.0,
    decoder: str = "fpn",
    decoder_channels: Sequence[int] | None = None,
    output_stride: int = 1,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    backbone_checkpoint_path: str | Path | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> SegmentationModel:
    if decoder not in ("fpn", "unet"):
        raise ConfigError(f"model.kwargs.decoder must be 'fpn' or 'unet', got {decoder!r}")
    if decoder == "fpn" and output_stride != 1:
        raise ConfigError(
            "model.kwargs.output_stride is a U-Net setting (decoder: unet); the FPN predicts at stride 4"
        )
    enc = _build_backbone(backbone, out_indices, pretrained, backbone_checkpoint_path, backbone_kwargs)
    head: nn.Module
    if decoder == "unet":
        n_blocks = len(enc.channels) - 1 + round(math.log2(enc.reductions[0] / max(output_stride, 1)))
        widths = list(decoder_channels or [max(16, 256 >> i) for i in range(n_blocks)])
        try:
            head = UNetDecoder(enc.channels, enc.reductions, num_classes, widths, output_stride=output_stride)
        except ValueError as e:
            raise ConfigError(f"model.kwargs: {e}") from None
    else:
        head = FPNDecoder(
            enc.channels,
            enc.reductions,
            num_classes=num_classes,
            fpn_channels=fpn_channels,
            head_channels=head_channels,
            dropout=dropout,
        )
    model = SegmentationModel(enc, head, pixel_mean or enc.pixel_mean, pixel_std or enc.pixel_std)
    return _finish(model, checkpoint_path)


def _merge(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win; a new ``backbone`` without ``out_indices`` gets the adapter's default taps."""
    merged = {**defaults, **overrides}
    if "backbone" in overrides and "out_indices" not in overrides:
        merged["out_indices"] = None
    return merged


# --------------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------------


@MODELS.register()
def depth_tiny(
    pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any
) -> DepthModel:
    """THE default student: MobileNetV4-Conv-Small + light DPT head (features 24, head_hidden 16, late
    upsampling), 1.5 M params, 4.2 GFLOPs at 544². Measured on 2 CPU cores: ~50 ms at 544² (~16× faster
    than Depth-Anything-V2-Small at 518²); trains at ~100 img/s at 128² (batch 32, AdamW), ~130 img/s
    with ``channels_last``."""
    defaults = dict(
        backbone="mobilenetv4_conv_small",
        out_indices=(1, 2, 3, 4),
        features=24,
        out_channels=(16, 24, 48, 96),
        head_hidden=16,
        late_upsample=True,
    )
    return _build_depth(pretrained=pretrained, checkpoint_path=checkpoint_path, **_merge(defaults, overrides))


@MODELS.register()
def depth_small(
    pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any
) -> DepthModel:
    """MobileNetV4-Conv-Medium + DPT head (features 64, late upsampling), 8.4 M params, 22.8 GFLOPs at
    544²: ~5× faster than Depth-Anything-V2-Small on a 2-core CPU."""
    defaults = dict(
        backbone="mobilenetv4_conv_medium",
        out_indices=(1, 2, 3, 4),
        features=64,
        out_channels=(32, 64, 128, 256),
        head_hidden=32,
        late_upsample=True,
    )
    return _build_depth(pretrained=pretrained, checkpoint_path=checkpoint_path, **_merge(defaults, overrides))


@MODELS.register()
def depth_vits14(
    pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any
) -> DepthModel:
    """Depth-Anything-V2-Small architecture: DINOv2 ViT-S/14, blocks [2, 5, 8, 11], DPT features 64,
    out_channels [48, 96, 192, 384], 24.8 M params."""
    defaults = dict(
        backbone="vit_small_patch14_dinov2",
        out_indices=(2, 5, 8, 11),
        features=64,
        out_channels=(48, 96, 192, 384),
    )
    return _build_depth(pretrained=pretrained, checkpoint_path=checkpoint_path, **_merge(defaults, overrides))


@MODELS.register()
def depth_vitb14(
    pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any
) -> DepthModel:
    """Depth-Anything-V2-Base architecture: DINOv2 ViT-B/14, blocks [2, 5, 8, 11], DPT features 128,
    out_channels [96, 192, 384, 768], 97.5 M params."""
    defaults = dict(
        backbone="vit_base_patch14_dinov2",
        out_indices=(2, 5, 8, 11),
        features=128,
        out_channels=(96, 192, 384, 768),
    )
    return _build_depth(pretrained=pretrained, checkpoint_path=checkpoint_path, **_merge(defaults, overrides))


# --------------------------------------------------------------------------------------------------
# Semantic segmentation
# --------------------------------------------------------------------------------------------------


@MODELS.register()
def seg_tiny(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> SegmentationModel:
    """MobileNetV4-Conv-Small + light Panoptic-FPN semantic branch (FPN 32, head 32)."""
    defaults = dict(
        backbone="mobilenetv4_conv_small", out_indices=(1, 2, 3, 4), fpn_channels=32, head_channels=32
    )
    return _build_segmentation(
        num_classes=num_classes,
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        **_merge(defaults, overrides),
    )


@MODELS.register()
def seg_small(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> SegmentationModel:
    """MobileNetV4-Conv-Medium + Panoptic-FPN semantic branch (FPN 64, head 64)."""
    defaults = dict(
        backbone="mobilenetv4_conv_medium", out_indices=(1, 2, 3, 4), fpn_channels=64, head_channels=64
    )
    return _build_segmentation(
        num_classes=num_classes,
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        **_merge(defaults, overrides),
    )


#: The light U-Net decoder of the ``_unet`` entries: stride-2…32 taps, decoding to full resolution.
_LIGHT_UNET = dict(decoder="unet", out_indices=(0, 1, 2, 3, 4))


@MODELS.register()
def seg_tiny_unet(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> SegmentationModel:
    """``seg_tiny`` with a light U-Net decoder (widths 64-48-32-16 over its stride-2…32 taps, decoding to
    stride 2, logits upsampled bilinearly: ``output_stride=2``). On em-membranes (135 steps, 2 seeds): test
    mIoU 0.754 ± 0.000 against ``seg_tiny``'s 0.701 ± 0.002 and the full-resolution decoder's 0.750 ± 0.001,
    at 0.20× the latency of an smp U-Net ResNet-18 (0.783 ± 0.004; full resolution: 0.33×, ``seg_tiny``
    0.12×; 512², 1 thread, one round-robin run). On toyworld scenes the FPN ``seg_tiny`` is better (0.268
    against 0.241, 1 seed): thin structures gain, objects do not (benchmarks/RESULTS.md, issue 11)."""
    unet = _merge({**_LIGHT_UNET, "decoder_channels": (64, 48, 32, 16), "output_stride": 2}, overrides)
    return seg_tiny(num_classes, pretrained, checkpoint_path, **unet)


@MODELS.register()
def seg_small_unet(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> SegmentationModel:
    """``seg_small`` with a light U-Net decoder (widths 128-64-32-16-16 over its stride-2…32 taps). On
    em-membranes (135 steps, 1 seed): test mIoU 0.764 against ``seg_small``'s 0.712, at 261 against 163 ms
    (512², 1 thread), 0.57× the latency of an smp U-Net ResNet-18 (0.783 ± 0.004) (benchmarks/RESULTS.md)."""
    unet = _merge({**_LIGHT_UNET, "decoder_channels": (128, 64, 32, 16, 16)}, overrides)
    return seg_small(num_classes, pretrained, checkpoint_path, **unet)


@MODELS.register()
def seg_r18_unet(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> SegmentationModel:
    """timm ResNet-18 with the U-Net decoder (widths 256-128-64-32 over its stride-2…32 taps, decoding to
    stride 2, logits upsampled bilinearly): the encoder of smp's U-Net ResNet-18 with a decoder that stops
    one level earlier. On em-membranes (135 steps, 4 seeds) test mIoU 0.780 ± 0.000 against smp's U-Net
    ResNet-18's 0.783 ± 0.004 at 0.70× its latency (512², 1 thread); on toyworld (600 steps, 2 seeds) 0.255
    ± 0.001 against 0.248 ± 0.007 at 0.88×, where the FPN ``seg_tiny`` (0.272) is better still
    (benchmarks/RESULTS.md, issue 11)."""
    widths = {"backbone": "resnet18", "decoder_channels": (256, 128, 64, 32), "output_stride": 2}
    return seg_small_unet(num_classes, pretrained, checkpoint_path, **_merge(widths, overrides))


@MODELS.register()
def seg_vits14(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> SegmentationModel:
    """DINOv2 ViT-S/14 (blocks [2, 5, 8, 11], ViTDet-style simple pyramid) + FPN semantic branch
    (FPN 128, head 64)."""
    defaults = dict(
        backbone="vit_small_patch14_dinov2", out_indices=(2, 5, 8, 11), fpn_channels=128, head_channels=64
    )
    return _build_segmentation(
        num_classes=num_classes,
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        **_merge(defaults, overrides),
    )


# --------------------------------------------------------------------------------------------------
# Object detection (torchvision detectors over timm backbones; models/detection.py)
# --------------------------------------------------------------------------------------------------

DEFAULT_DETECTION_SIZE = 512


def _build_detection(
    arch: str,
    backbone: str,
    out_indices: Sequence[int] | None,
    num_classes: int,
    input_size: int = DEFAULT_DETECTION_SIZE,
    fpn_channels: int = 64,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    backbone_checkpoint_path: str | Path | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **detector_kwargs: Any,
) -> DetectionModel:
    enc = _build_backbone(backbone, out_indices, pretrained, backbone_checkpoint_path, backbone_kwargs)
    try:
        model = build_detector(arch, enc, num_classes, input_size, fpn_channels, **detector_kwargs)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"model.kwargs: {e}") from None
    return _finish(model, checkpoint_path)


@MODELS.register()
def det_tiny(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> DetectionModel:
    """RetinaNet (focal loss, 9 anchors per location) over MobileNetV4-Conv-Small's stride-8/16/32 taps,
    FPN 64 with P6/P7; input 512² (longest side)."""
    defaults = dict(
        arch="retinanet", backbone="mobilenetv4_conv_small", out_indices=(2, 3, 4), fpn_channels=64
    )
    return _build_detection(num_classes=num_classes, pretrained=pretrained, checkpoint_path=checkpoint_path,
                            **_merge(defaults, overrides))  # fmt: skip


@MODELS.register()
def det_small(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> DetectionModel:
    """RetinaNet over MobileNetV4-Conv-Medium's stride-8/16/32 taps, FPN 128 with P6/P7; input 512²."""
    defaults = dict(
        arch="retinanet", backbone="mobilenetv4_conv_medium", out_indices=(2, 3, 4), fpn_channels=128
    )
    return _build_detection(num_classes=num_classes, pretrained=pretrained, checkpoint_path=checkpoint_path,
                            **_merge(defaults, overrides))  # fmt: skip


@MODELS.register()
def det_tiny_fcos(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> DetectionModel:
    """FCOS (anchor-free, centre-ness, focal loss) over MobileNetV4-Conv-Small's stride-8/16/32 taps,
    FPN 64 with P6/P7; input 512²."""
    defaults = dict(arch="fcos", backbone="mobilenetv4_conv_small", out_indices=(2, 3, 4), fpn_channels=64)
    return _build_detection(num_classes=num_classes, pretrained=pretrained, checkpoint_path=checkpoint_path,
                            **_merge(defaults, overrides))  # fmt: skip


@MODELS.register()
def det_tiny_frcnn(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> DetectionModel:
    """Faster R-CNN (RPN + RoI-align box head, two 256-wide MLP layers) over MobileNetV4-Conv-Small's
    stride-4…32 taps, FPN 64 with a pooled level; input 512²."""
    defaults = dict(
        arch="faster_rcnn", backbone="mobilenetv4_conv_small", out_indices=(1, 2, 3, 4), fpn_channels=64
    )
    return _build_detection(num_classes=num_classes, pretrained=pretrained, checkpoint_path=checkpoint_path,
                            **_merge(defaults, overrides))  # fmt: skip


@MODELS.register()
def det_tiny_maskrcnn(
    num_classes: int = DEFAULT_NUM_CLASSES,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> DetectionModel:
    """Mask R-CNN: ``det_tiny_frcnn`` + a four-conv 64-wide mask head on 14² RoI-aligned features."""
    defaults = dict(
        arch="mask_rcnn", backbone="mobilenetv4_conv_small", out_indices=(1, 2, 3, 4), fpn_channels=64
    )
    return _build_detection(num_classes=num_classes, pretrained=pretrained, checkpoint_path=checkpoint_path,
                            **_merge(defaults, overrides))  # fmt: skip
