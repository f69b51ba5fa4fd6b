"""Frozen semantic encoders (DINOv2 and any timm model): images → patch-feature maps.

Depth Anything aligns its student's features with a frozen DINOv2 encoder's; these adapters supply
those targets as ``features(images01 (B, 3, H, W)) -> (B, C, h, w)`` with ``h = H' / patch``,
``w = W' / patch``, where ``(H', W')`` is the working size: the input's own size rounded to a multiple
of the patch size (or, with ``image_size``, scaled so its long side is ``image_size``), aspect kept,
antialiased bilinear, never padded (the adapter's ``preprocess``). The features are the last block's
patch tokens after the final norm, class/register tokens dropped. (Upstream image processors centre-crop
for classification, which a dense encoder must not do, so only their normalisation constants are taken.)

``forward_intermediates`` (timm's API, :class:`~anydistill.teachers.base.Teacher`) taps every block of
a ViT / DINOv2 (patch tokens after the final norm, as Depth Anything taps DINOv2) and every stage of a
CNN; the deepest tap is always the map ``features`` returns.
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
from anydistill.preprocess import Preprocess
from anydistill.teachers.base import Teacher
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
    """Shared part: ``preprocess`` (mean/std, working size), ``taps = encoder(preprocess(x))``.

    Subclasses set ``multiple`` (patch size or coarsest stride), ``feature_dim``, ``feature_stride``,
    their taps' ``tap_channels``/``tap_reductions`` (the last ones ``feature_dim``/``feature_stride``),
    and implement :meth:`_encode_intermediates` (normalised ``(B, 3, H', W')`` → maps
    ``(B, C_i, H' / s_i, W' / s_i)``). :meth:`encode` is the deepest map. The ``pixel_mean``/``pixel_std``
    buffers hold the normalisation too: they are part of the fingerprint (``preprocess`` has the same values).
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
        self._mean = tuple(float(v) for v in pixel_mean)
        self._std = tuple(float(v) for v in pixel_std)
        self.tap_channels: list[int] = []
        self.tap_reductions: list[int] = []
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def preprocess(self) -> Preprocess:  # type: ignore[override]
        """Keep-aspect, antialiased bilinear resize, each side a multiple of ``multiple`` (long side
        ``image_size``: ``"long_side_multiple"``; else the input's own scale: ``"nearest_multiple"``),
        no padding, then the encoder's mean/std (on [0, 1])."""
        return Preprocess(
            size=self.image_size or self.multiple, mean=self._mean, std=self._std,
            resize="nearest_multiple" if self.image_size is None else "long_side_multiple", pad="none",
            multiple=self.multiple, interpolation="bilinear", antialias=True,
        )  # fmt: skip

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each tap of :meth:`forward_intermediates` (the last is ``feature_dim``)."""
        return list(self.tap_channels)

    @property
    def feature_reductions(self) -> list[int]:
        """Stride of each tap relative to the working size (the last is ``feature_stride``)."""
        return list(self.tap_reductions)

    def _forward_intermediates(
        self, images01: Tensor, take: list[int], final: bool
    ) -> tuple[Tensor | None, list[Tensor]]:
        x = self.preprocess(images01)  # (B, 3, H', W') normalised
        return self._encode_intermediates(x, take, final)

    def encode(self, x: Tensor) -> Tensor:
        """Normalised ``(B, 3, H', W')`` → the deepest map ``(B, feature_dim, H' / s, W' / s)``."""
        return self._encode_intermediates(x, [len(self.tap_channels) - 1], final=False)[1][-1]

    def _encode_intermediates(
        self, x: Tensor, take: list[int], final: bool
    ) -> tuple[Tensor | None, list[Tensor]]:
        """Normalised ``(B, 3, H', W')`` → (the deepest map if ``final`` else None, the taps ``take``
        (ascending tap indices) as maps ``(B, C_i, H' / s_i, W' / s_i)``)."""
        raise NotImplementedError


class TimmEncoder(FrozenEncoder):
    """Any timm model as a frozen encoder, e.g. ``vit_small_patch14_dinov2`` with local weights.

    Structure: ViTs: ``forward_features(x) (B, P + h * w, C)`` (final norm applied) → drop the
    ``num_prefix_tokens`` → ``(B, C, h, w)``; CNNs: ``forward_features(x)`` is already ``(B, C, h, w)``.

    Taps (timm's ``forward_intermediates`` and ``feature_info``): ViTs: every block, final norm applied
    (timm's ``norm=True``), the last one being ``forward_features``' map; CNNs: every stage, the deepest
    one replaced by ``forward_features(x)`` (the last stage, through the head conv/norm some timm CNNs
    such as EfficientNet put there: ``num_features`` channels). A timm model without
    ``forward_intermediates`` has one tap, ``forward_features``.

    Args:
        name: a timm model name.
        checkpoint_path: a local weights file (timm/Hugging Face ``timm/...`` format, or one timm's
            checkpoint filter converts, e.g. the original DINOv2 ``.pth``); None = random init (tests; the
            spec ``timm:<name>@random``).
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
        self._set_taps()
        self.name = name
        self._freeze({"timm_name": name, "timm_kwargs": kwargs, "image_size": image_size})
        self.to(device)

    def _set_taps(self) -> None:
        """``tap_channels``/``tap_reductions`` from timm's ``feature_info``; the deepest tap is
        ``forward_features``' map. One tap (that map) without ``forward_intermediates``."""
        info = _feature_info_dicts(self.model)
        self._timm_taps = (
            hasattr(self.model, "forward_intermediates")
            and bool(info)
            and int(info[-1]["reduction"]) == self.feature_stride
        )
        if not self._timm_taps:
            self.tap_channels, self.tap_reductions = [self.feature_dim], [self.feature_stride]
            return
        self.tap_channels = [int(i["num_chs"]) for i in info[:-1]] + [self.feature_dim]
        self.tap_reductions = [int(i["reduction"]) for i in info]

    def _encode_intermediates(
        self, x: Tensor, take: list[int], final: bool
    ) -> tuple[Tensor | None, list[Tensor]]:
        if not self._timm_taps:
            out = self._to_map(self.model.forward_features(x), x)  # (B, C, h, w)
            return (out if final else None), [out]
        deepest = take[-1] == len(self.tap_channels) - 1
        run_to_end = final or (deepest and not self.is_vit)  # a CNN's deepest tap is timm's final output
        out = self.model.forward_intermediates(
            x,
            indices=take,
            norm=self.is_vit,  # ViTs: the final norm on every tap, as forward_features applies it
            stop_early=not run_to_end,
            output_fmt="NCHW",
            intermediates_only=not run_to_end,
        )
        if not run_to_end:
            return None, list(out)
        head, maps = out[0], list(out[1])
        head = self._to_map(head, x)  # (B, feature_dim, h, w)
        if deepest:
            maps[-1] = head  # ViT: the same values; CNN: forward_features' map
        return (head if final else None), maps

    def _to_map(self, out: Tensor, x: Tensor) -> Tensor:
        """timm's final output → ``(B, C, h, w)``: ViT tokens ``(B, P + h * w, C)`` re-laid out, CNN as is."""
        if not self.is_vit:
            return out
        grid = (x.shape[-2] // self.multiple, x.shape[-1] // self.multiple)
        return tokens_to_map(out, self.num_prefix_tokens, grid)  # (B, C, h, w)


class HFDinov2Encoder(FrozenEncoder):
    """DINOv2 (with or without registers) from a local ``transformers`` folder.

    Structure: ``Dinov2Model(x).last_hidden_state (B, 1 + R + h * w, C)`` (final LayerNorm applied) →
    drop the class token and the ``R`` register tokens → ``(B, C, h, w)``. Taps: every layer's output
    through that final LayerNorm (``hidden_states[1:]``), the last being ``last_hidden_state``.

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
        self.tap_channels = [self.feature_dim] * int(self.model.config.num_hidden_layers)
        self.tap_reductions = [self.multiple] * int(self.model.config.num_hidden_layers)
        self._freeze({"model_config": stable_config(config), "image_size": image_size})
        self.to(device)

    def _encode_intermediates(
        self, x: Tensor, take: list[int], final: bool
    ) -> tuple[Tensor | None, list[Tensor]]:
        """Taps: every layer's tokens through the final LayerNorm (the last is ``last_hidden_state``)."""
        out = self.model(pixel_values=x, output_hidden_states=True)
        layers = out.hidden_states[1:]  # [(B, 1 + R + h * w, C)] per layer, pre-LayerNorm ([0]: embeddings)
        grid = (x.shape[-2] // self.multiple, x.shape[-1] // self.multiple)
        last = len(layers) - 1

        def tap(i: int) -> Tensor:
            tokens = out.last_hidden_state if i == last else self.model.layernorm(layers[i])
            return tokens_to_map(tokens, self.num_prefix_tokens, grid)  # (B, C, h, w)

        return (tap(last) if final else None), [tap(i) for i in take]


def _feature_info_dicts(model: nn.Module) -> list[dict[str, Any]]:
    """timm's ``feature_info`` (a list of dicts, or a ``FeatureInfo``) as a list of dicts."""
    info = getattr(model, "feature_info", None) or []
    return list(info) if isinstance(info, list) else list(info.info)


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
