"""Frozen semantic encoders (DINOv2 and any timm model): images → patch-feature maps.

Depth Anything aligns its student's features with a frozen DINOv2 encoder's; these adapters supply
those targets as ``features(images01 (B, 3, H, W)) -> (B, C, h, w)`` with ``h = H' / patch``,
``w = W' / patch``, where ``(H', W')`` is the working size: the input's own size rounded to a multiple
of the patch size (or, with ``image_size``, scaled so its long side is ``image_size``), aspect kept,
antialiased bilinear, never padded. The features are the last block's patch tokens after the final
norm, class/register tokens dropped. (Upstream image processors centre-crop for classification, which
a dense encoder must not do, so only their normalisation constants are taken.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from anydistill.errors import DataError
from anydistill.teachers.base import Teacher, fit_to_multiple, resize
from anydistill.teachers.hf_utils import from_pretrained, read_config, require_transformers, stable_config

DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


def tokens_to_map(tokens: Tensor, num_prefix: int, grid: tuple[int, int]) -> Tensor:
    """ViT tokens ``(B, P + h * w, C)`` → patch map ``(B, C, h, w)`` (the ``P`` prefix tokens dropped)."""
    b, n, c = tokens.shape
    h, w = grid
    if n != num_prefix + h * w:
        raise ValueError(f"{n} tokens do not make {num_prefix} prefix tokens + a {h}x{w} grid")
    patches = tokens[:, num_prefix:]  # (B, h * w, C)
    return patches.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, h, w)


class FrozenEncoder(Teacher):
    """Shared part: normalisation buffers, working size, ``features = encode(normalize(resize(x)))``.

    Subclasses set ``multiple`` (patch size or coarsest stride), ``feature_dim``, ``feature_stride``
    and implement :meth:`encode` (normalised ``(B, 3, H', W')`` → ``(B, C, H' / s, W' / s)``).
    """

    task = "features"
    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self, pixel_mean: Sequence[float], pixel_std: Sequence[float], image_size: int | None
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.multiple = 1
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1))

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the encoder sees for an ``height x width`` input."""
        return fit_to_multiple(height, width, self.multiple, self.image_size)

    def _features(self, images01: Tensor) -> Tensor:
        x = resize(images01, self.working_size(*images01.shape[-2:]))  # (B, 3, H', W')
        return self.encode((x - self.pixel_mean) / self.pixel_std)  # (B, C, h, w)

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class TimmEncoder(FrozenEncoder):
    """Any timm model as a frozen encoder, e.g. ``vit_small_patch14_dinov2`` with local weights.

    Structure: ViTs: ``forward_features(x) (B, P + h * w, C)`` (final norm applied) → drop the
    ``num_prefix_tokens`` → ``(B, C, h, w)``; CNNs: ``forward_features(x)`` is already ``(B, C, h, w)``.

    Args:
        name: a timm model name.
        checkpoint_path: a local weights file (timm/Hugging Face ``timm/...`` format, or one timm's
            checkpoint filter converts, e.g. the original DINOv2 ``.pth``); None = random init (tests).
        image_size: working long side (default: the input's own size rounded to the patch size).
        device: where to load it.
        **timm_kwargs: for ``timm.create_model`` (e.g. ``img_size``, the native position-embedding grid).
    """

    def __init__(
        self,
        name: str,
        checkpoint_path: str | Path | None = None,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
        **timm_kwargs: Any,
    ) -> None:
        try:
            with torch.device("meta"):  # weightless probe: pre-training constants and model kind
                probe = timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise DataError(None, f"timm model {name!r}: {exc}") from None
        cfg = getattr(probe, "pretrained_cfg", None) or {}
        super().__init__(
            cfg.get("mean", IMAGENET_DEFAULT_MEAN), cfg.get("std", IMAGENET_DEFAULT_STD), image_size
        )
        self.is_vit = hasattr(probe, "patch_embed") and hasattr(probe, "num_prefix_tokens")
        kwargs: dict[str, Any] = {"num_classes": 0, **timm_kwargs}
        if self.is_vit:
            kwargs.setdefault("dynamic_img_size", True)  # any multiple of the patch size
        load: dict[str, Any] = {"pretrained": False}
        if checkpoint_path is not None:
            path = Path(checkpoint_path)
            if not path.is_file():
                raise DataError(path, f"weights file for timm model {name!r} not found")
            if path.stat().st_size == 0:
                raise DataError(path, "weights file is empty (0 bytes)")
            # timm reads the file instead of its hub entry and applies its checkpoint filter.
            load = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
        try:
            self.model: nn.Module = timm.create_model(name, **load, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure while reading weights is a bad user file
            raise DataError(
                checkpoint_path, f"cannot load into {name!r}: {type(exc).__name__}: {exc}"
            ) from None
        if self.is_vit:
            patch = self.model.patch_embed.patch_size
            self.multiple = int(patch if isinstance(patch, int) else patch[0])
            self.num_prefix_tokens = int(self.model.num_prefix_tokens)
            self.feature_stride = self.multiple
        else:
            self.feature_stride = int(self.model.feature_info[-1]["reduction"])
            self.multiple = max(32, self.feature_stride)
        self.feature_dim = int(self.model.num_features)  # channels of forward_features (timm convention)
        self.name = name
        self._freeze({"timm_name": name, "timm_kwargs": kwargs, "image_size": image_size})
        self.to(device)

    def encode(self, x: Tensor) -> Tensor:
        out = self.model.forward_features(x)  # ViT: (B, P + h * w, C); CNN: (B, C, h, w)
        if not self.is_vit:
            return out
        grid = (x.shape[-2] // self.multiple, x.shape[-1] // self.multiple)
        return tokens_to_map(out, self.num_prefix_tokens, grid)  # (B, C, h, w)


class HFDinov2Encoder(FrozenEncoder):
    """DINOv2 (with or without registers) from a local ``transformers`` folder.

    Structure: ``Dinov2Model(x).last_hidden_state (B, 1 + R + h * w, C)`` (final LayerNorm applied) →
    drop the class token and the ``R`` register tokens → ``(B, C, h, w)``.

    Args:
        folder: a folder with ``config.json`` (model_type ``dinov2`` or ``dinov2_with_registers``) and
            weights; mean/std come from its ``preprocessor_config.json`` when present (ImageNet else).
        image_size: working long side (default: the input's own size rounded to the patch size).
        device: where to load it.
    """

    def __init__(
        self, folder: str | Path, image_size: int | None = None, device: str | torch.device = "cpu"
    ) -> None:
        folder = Path(folder)
        config = read_config(folder)
        if config.get("model_type") not in DINOV2_MODEL_TYPES:
            raise DataError(
                folder / "config.json",
                f"model_type is {config.get('model_type')!r}, expected one of {DINOV2_MODEL_TYPES}",
            )
        mean, std = _processor_mean_std(folder)
        super().__init__(mean, std, image_size)
        transformers = require_transformers()
        self.model = from_pretrained(transformers.AutoModel, folder)
        patch = self.model.config.patch_size
        self.multiple = int(patch if isinstance(patch, int) else patch[0])
        self.num_prefix_tokens = 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)
        self.feature_dim = int(self.model.config.hidden_size)
        self.feature_stride = self.multiple
        self._freeze({"model_config": stable_config(config), "image_size": image_size})
        self.to(device)

    def encode(self, x: Tensor) -> Tensor:
        tokens = self.model(pixel_values=x).last_hidden_state  # (B, 1 + R + h * w, C)
        grid = (x.shape[-2] // self.multiple, x.shape[-1] // self.multiple)
        return tokens_to_map(tokens, self.num_prefix_tokens, grid)  # (B, C, h, w)


def _processor_mean_std(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``image_mean``/``image_std`` of the folder's ``preprocessor_config.json`` (ImageNet's if absent)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    mean = tuple(float(v) for v in cfg.get("image_mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in cfg.get("image_std", IMAGENET_DEFAULT_STD))
    if len(mean) != 3 or len(std) != 3:
        raise DataError(path, f"expected 3-channel image_mean/image_std, got {mean}, {std}")
    return mean, std
