"""Multi-scale feature extractor for any timm model.

One adapter, two timm APIs (timm >= 1.0):

* hierarchical models (CNNs, Swin, ConvNeXt, ...): ``timm.create_model(name, features_only=True,
  out_indices=...)`` returns one map per stage, strides e.g. 4, 8, 16, 32;
* plain ViTs (DINOv2, DeiT, EVA, ...): ``model.forward_intermediates(x, indices=...,
  output_fmt="NCHW", intermediates_only=True, norm=True)`` taps blocks and returns their patch tokens
  as maps at the patch stride — how Depth Anything taps 4 DINOv2 blocks (layers [2, 5, 8, 11] of
  ViT-S, final LayerNorm applied, class token dropped).

Weights come from a local file only (``checkpoint_path``); this module never touches the network.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn


def _feature_info_list(model: nn.Module) -> list[dict[str, Any]]:
    """timm exposes ``feature_info`` as a list of dicts or a ``FeatureInfo`` object; return dicts."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    if isinstance(info, list):
        return info
    return list(info.info)  # timm.models.FeatureInfo


def _meta_model(name: str, **timm_kwargs: Any) -> nn.Module:
    """A weightless copy of ``name`` on the ``meta`` device: milliseconds to build, even for ViT-L."""
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **timm_kwargs)


_LOAD_REPORT = re.compile(r"^(Missing|Unexpected) keys \((.*?)\) (?:discovered|found) while loading")


@contextmanager
def checked_timm_weights(name: str, path: str | Path | None) -> Iterator[None]:
    """Around ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay={"file": path})``: a weights
    file that leaves parameters of the model unset is an error, not a partial load.

    timm loads a local file with ``strict=False`` whenever the classifier is dropped (``num_classes=0``) or
    a feature extractor is built (``features_only``), and reports keys the model lacks only at INFO
    level: weights of another architecture would leave the model mostly random without a visible word.
    Keys the file has and the model lacks (a classifier or head convolution a feature extractor does not
    build) are expected and are not shown: timm's warning about them is dropped here; so is a classifier
    timm's filter drops from the file while the model keeps one (a feature extractor throws it away).

    Raises:
        ValueError: naming the file, the model and the first missing parameters.
    """
    if path is None:
        yield
        return
    logger = logging.getLogger("timm.models._builder")
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Collect(level=logging.INFO)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    cfg = timm.models.get_pretrained_cfg(name)
    heads = getattr(cfg, "classifier", None) or ()
    heads = tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))
    missing: list[str] = []
    for record in records:
        match = _LOAD_REPORT.match(record.getMessage())
        if match and match.group(1) == "Missing":
            missing += [
                k.strip() for k in match.group(2).split(",") if k.strip() and not k.strip().startswith(heads)
            ]
        elif not match and record.levelno >= logging.WARNING:
            logger.log(record.levelno, record.getMessage())  # anything else timm says still shows
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise ValueError(
            f"{path}: these weights do not fit {name!r}: {len(missing)} of its parameters are not in the "
            f"file ({shown}); is it a {name} weights file?"
        )


def is_plain_vit(model: nn.Module) -> bool:
    """True for a non-hierarchical ViT (patch embedding, every block at the same stride)."""
    info = _feature_info_list(model)
    reductions = {int(i["reduction"]) for i in info}
    return (
        hasattr(model, "patch_embed")
        and hasattr(model, "forward_intermediates")
        and len(info) > 1
        and len(reductions) == 1
    )


def default_vit_indices(depth: int, n: int = 4) -> list[int]:
    """``n`` evenly spaced block indices ending at the last block: depth 12 → [2, 5, 8, 11] (DPT/DA)."""
    return [round((i + 1) * depth / n) - 1 for i in range(n)]


class TimmBackbone(nn.Module):
    """Feature pyramid from any timm model.

    Structure: ``x (B, 3, H, W)`` → ``[f_i (B, C_i, H / r_i, W / r_i) for i in out_indices]``.
    For a plain ViT all ``r_i`` equal the patch size; for a CNN they grow, e.g. (4, 8, 16, 32).

    Attributes: ``channels`` (C_i), ``reductions`` (r_i), ``input_multiple`` (H and W must be multiples
    of it), ``is_vit``, ``out_indices`` (resolved), ``pixel_mean``/``pixel_std`` (the timm model's
    pre-training normalisation, [0, 1] scale), ``model`` (the wrapped timm module).

    Args:
        name: any timm model name (``resnet18``, ``mobilenetv3_large_100``, ``vit_small_patch14_dinov2``).
        pretrained: load weights; requires ``checkpoint_path`` (this library never downloads).
        out_indices: CNN stage indices (default: the last 4 stages) or ViT block indices (default: 4
            evenly spaced blocks, [2, 5, 8, 11] for a 12-block ViT).
        checkpoint_path: a local timm-format weights file (``.pth``/``.bin``/``.safetensors``, e.g. a
            Hugging Face ``timm/...`` ``model.safetensors`` or ``timm.create_model(name).state_dict()``)
            loaded through timm's own filter (classifier dropped). Implies ``pretrained``.
        vit_norm: apply the ViT's final norm to tapped blocks (Depth Anything does).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``drop_path_rate``).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        out_indices: Sequence[int] | None = None,
        checkpoint_path: str | Path | None = None,
        vit_norm: bool = True,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained and checkpoint_path is None:
            raise ValueError(
                f"pretrained=True for {name!r} needs checkpoint_path= a local weights file "
                "(anydistill never downloads weights)"
            )
        load_kwargs: dict[str, Any] = dict(pretrained=False)
        if checkpoint_path is not None:
            path = Path(checkpoint_path)
            if not path.is_file():
                raise FileNotFoundError(f"backbone checkpoint not found: {path}")
            # timm reads the file instead of its hub entry and applies its checkpoint filter.
            load_kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))

        self.name = name
        probe = _meta_model(name, **timm_kwargs)
        self.is_vit = is_plain_vit(probe)
        cfg = getattr(probe, "pretrained_cfg", None) or {}
        self.pixel_mean: tuple[float, ...] = tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.pixel_std: tuple[float, ...] = tuple(cfg.get("std", IMAGENET_DEFAULT_STD))
        self.vit_norm = vit_norm
        if self.is_vit:
            vit_kwargs = {"dynamic_img_size": True, **timm_kwargs}  # any multiple of the patch size
            with checked_timm_weights(name, checkpoint_path):
                model = timm.create_model(name, **load_kwargs, **vit_kwargs)
            depth = len(_feature_info_list(model))
            indices = list(out_indices) if out_indices is not None else default_vit_indices(depth)
            if any(not -depth <= i < depth for i in indices):
                raise ValueError(f"{name!r} has {depth} blocks; out_indices {indices} out of range")
            indices = [i % depth for i in indices]
            # Drop blocks after the last tapped one and the classifier (not the norm if we use it).
            model.prune_intermediate_layers(indices, prune_norm=not vit_norm, prune_head=True)
            width = int(_feature_info_list(model)[0]["num_chs"])
            patch = model.patch_embed.patch_size
            patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
            if patch[0] != patch[1]:
                raise ValueError(f"{name!r}: only square patches are supported, got {patch}")
            self.out_indices = indices
            self.channels = [width] * len(indices)
            self.reductions = [int(patch[0])] * len(indices)
            self.input_multiple = int(patch[0])
        else:
            n_stages = len(_feature_info_list(probe))
            indices = (
                list(out_indices) if out_indices is not None else list(range(max(0, n_stages - 4), n_stages))
            )
            with checked_timm_weights(name, checkpoint_path):
                model = timm.create_model(
                    name, features_only=True, out_indices=tuple(indices), **load_kwargs, **timm_kwargs
                )
            self.out_indices = list(model.feature_info.out_indices)
            self.channels = [int(c) for c in model.feature_info.channels()]
            self.reductions = [int(r) for r in model.feature_info.reduction()]
            # Inputs a multiple of the coarsest stride give exact /r_i maps (no ceil rounding).
            self.input_multiple = max(32, max(self.reductions))
        self.model = model

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError unless ``x`` is ``(B, 3, H, W)`` with H, W multiples of ``input_multiple``."""
        if x.ndim != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.input_multiple
        if h % m or w % m:
            raise ValueError(
                f"{self.name}: input size {h}x{w} is not a multiple of {m}; resize or pad to a multiple "
                f"of {m} (e.g. {max(m, round(h / m) * m)}x{max(m, round(w / m) * m)})"
            )

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x (B, 3, H, W)`` normalised → list of ``(B, C_i, H / r_i, W / r_i)``."""
        self.check_input(x)
        if self.is_vit:
            return list(
                self.model.forward_intermediates(
                    x,
                    indices=self.out_indices,
                    norm=self.vit_norm,
                    output_fmt="NCHW",
                    intermediates_only=True,
                )
            )
        return list(self.model(x))
