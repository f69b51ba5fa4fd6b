"""Named SAM models, registered in :data:`anydistill.models.MODELS` (segment-anything's
``build_sam_vit_b`` → ``_build_sam`` pattern).

Every builder is ``fn(pretrained=False, checkpoint_path=None, **overrides)`` and returns a
:class:`~anydistill.models.sam.sam.Sam` in eval mode (as upstream's builders do):

* ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``: SAM's own architecture (image encoder = timm
  ``samvit_*``). ``checkpoint_path`` (or ``pretrained=True`` with it) loads an official
  segment-anything ``.pth`` (e.g. ``sam_vit_b_01ec64.pth``; keys are mapped, see ``checkpoint.py``)
  or an anydistill SAM state dict / Lightning checkpoint. Nothing is ever downloaded.
* ``sam_tiny`` (THE default SAM student) and ``sam_small``: a timm CNN + SAM-style neck as the image
  encoder, SAM's prompt encoder and mask decoder unchanged (so the teacher's decoder weights can be
  copied in). ``pretrained=True`` + ``backbone_checkpoint_path`` initialises the backbone only.

Overrides:
  ``img_size`` (S, default 1024; e.g. 256 for toyworld training: embeddings are then (S/16)², mask
  prompts and low-res masks (S/4)²); decoder: ``prompt_embed_dim`` (256), ``mask_in_chans`` (16),
  ``decoder_depth`` (2), ``decoder_mlp_dim`` (2048), ``decoder_num_heads`` (8), ``iou_head_depth``
  (3), ``iou_head_hidden_dim`` (256), ``num_multimask_outputs`` (3), ``pixel_mean``, ``pixel_std``;
  ViT encoders: ``embed_dim``, ``depth``, ``num_heads``, ``global_attn_indexes``, ``window_size``
  and other ``VisionTransformerSAM`` arguments; students: ``backbone`` (any timm name with a
  stride-16 stage), ``backbone_kwargs``, ``backbone_checkpoint_path``.

Cost at 1024² (benchmarks/bench_sam_latency.py): the ``sam_tiny`` image encoder needs 13 GFLOPs
and 2.1 M params against 972 GFLOPs and 89.7 M for SAM ViT-B's (74× fewer FLOPs); ``sam_small``'s
needs 40 GFLOPs. On a 2-core CPU busy with other jobs the measured latency ratio ranged from 12×
(2 threads, same run: the CNN's many small ops suffer most from thread contention) to ~70× (1
thread); benchmarks/results/sam_latency.md holds the latest run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from anydistill.models.sam.checkpoint import load_sam_weights
from anydistill.models.sam.image_encoders import (
    SAM_PATCH_SIZE,
    SAM_VIT_CONFIGS,
    SamViTEncoder,
    StudentImageEncoder,
)
from anydistill.models.sam.mask_decoder import MaskDecoder
from anydistill.models.sam.prompt_encoder import PromptEncoder
from anydistill.models.sam.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD, Sam
from anydistill.models.sam.transformer import TwoWayTransformer
from anydistill.models.zoo import MODELS

DEFAULT_SAM_STUDENT = "sam_tiny"

#: Builder names of the SAM students (checkpoint.py tries them to recognise a student state dict).
SAM_STUDENTS: dict[str, str] = {"sam_tiny": "mobilenetv4_conv_small", "sam_small": "mobilenetv4_conv_medium"}

_DECODER_KEYS = (
    "prompt_embed_dim",
    "mask_in_chans",
    "decoder_depth",
    "decoder_mlp_dim",
    "decoder_num_heads",
    "iou_head_depth",
    "iou_head_hidden_dim",
    "num_multimask_outputs",
    "pixel_mean",
    "pixel_std",
)


def _split(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(decoder and normalisation overrides, image-encoder overrides)."""
    dec = {k: v for k, v in overrides.items() if k in _DECODER_KEYS}
    enc = {k: v for k, v in overrides.items() if k not in _DECODER_KEYS}
    return dec, enc


def _build_sam(
    image_encoder: nn.Module,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_depth: int = 3,
    iou_head_hidden_dim: int = 256,
    num_multimask_outputs: int = 3,
    pixel_mean: tuple[float, ...] = SAM_PIXEL_MEAN,
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD,
) -> Sam:
    """SAM's prompt encoder and mask decoder (constants of segment_anything/build_sam.py) around
    ``image_encoder``, sized to its ``img_size``."""
    size = int(image_encoder.img_size)
    grid = size // SAM_PATCH_SIZE
    prompt_encoder = PromptEncoder(
        embed_dim=prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(size, size),
        mask_in_chans=mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=decoder_depth,
            embedding_dim=prompt_embed_dim,
            num_heads=decoder_num_heads,
            mlp_dim=decoder_mlp_dim,
        ),
        num_multimask_outputs=num_multimask_outputs,
        iou_head_depth=iou_head_depth,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    return Sam(image_encoder, prompt_encoder, mask_decoder, pixel_mean, pixel_std).eval()


def _build_sam_vit(
    size: str, pretrained: bool, checkpoint_path: str | Path | None, overrides: dict[str, Any]
) -> Sam:
    if pretrained and checkpoint_path is None:
        raise ValueError(
            f"pretrained=True for sam_{size} needs checkpoint_path= a local segment-anything checkpoint "
            f"(e.g. sam_{size}_*.pth); anydistill never downloads weights"
        )
    dec, enc = _split(overrides)
    cfg = {k: v for k, v in SAM_VIT_CONFIGS[size].items() if k != "timm_name"}
    cfg.update(enc)
    encoder = SamViTEncoder(
        SAM_VIT_CONFIGS[size]["timm_name"], out_chans=dec.get("prompt_embed_dim", 256), **cfg
    )
    model = _build_sam(encoder, **dec)
    if checkpoint_path is not None:
        load_sam_weights(model, checkpoint_path)
    return model


def _build_sam_student(
    backbone: str,
    pretrained: bool,
    checkpoint_path: str | Path | None,
    overrides: dict[str, Any],
) -> Sam:
    dec, enc = _split(overrides)
    enc.setdefault("backbone", backbone)
    encoder = StudentImageEncoder(pretrained=pretrained, out_chans=dec.get("prompt_embed_dim", 256), **enc)
    model = _build_sam(encoder, **dec)
    if checkpoint_path is not None:
        load_sam_weights(model, checkpoint_path)
    return model


@MODELS.register()
def sam_vit_b(pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any) -> Sam:
    """SAM ViT-B (93.7 M params: encoder 89.7 M, prompt encoder + decoder 4.1 M)."""
    return _build_sam_vit("vit_b", pretrained, checkpoint_path, overrides)


@MODELS.register()
def sam_vit_l(pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any) -> Sam:
    """SAM ViT-L (312 M params)."""
    return _build_sam_vit("vit_l", pretrained, checkpoint_path, overrides)


@MODELS.register()
def sam_vit_h(pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any) -> Sam:
    """SAM ViT-H (641 M params), the model of the paper."""
    return _build_sam_vit("vit_h", pretrained, checkpoint_path, overrides)


@MODELS.register()
def sam_tiny(pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any) -> Sam:
    """THE default SAM student: MobileNetV4-Conv-Small (1/16 and 1/32 stages fused) + SAM-style
    256-ch neck (encoder 2.1 M params, 13 GFLOPs at 1024²), SAM's prompt encoder and mask decoder
    (4.1 M); 6.2 M params in all."""
    return _build_sam_student(SAM_STUDENTS["sam_tiny"], pretrained, checkpoint_path, overrides)


@MODELS.register()
def sam_small(pretrained: bool = False, checkpoint_path: str | Path | None = None, **overrides: Any) -> Sam:
    """MobileNetV4-Conv-Medium + SAM-style neck (encoder 8.1 M params, 40 GFLOPs at 1024²) and SAM's
    decoder; 12.1 M params in all."""
    return _build_sam_student(SAM_STUDENTS["sam_small"], pretrained, checkpoint_path, overrides)
