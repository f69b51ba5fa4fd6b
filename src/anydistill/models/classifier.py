"""Image classifiers: any timm model with a ``K``-way head, normalisation buffers and a fixed input size.

:class:`TimmClassifier` is the student of ``task: classify`` (``anydistill train``/``distill``) and what
an anydistill classify checkpoint rebuilds (:func:`build_classifier`, from the timm name and ``K``).
As the dense task models, ``forward`` takes an already normalised batch; ``normalize`` turns a [0, 1]
batch into it with the ``pixel_mean``/``pixel_std`` buffers (the backbone's pre-training statistics by
default: CIFAR-10's for ``resnet*_cifar``), so the constants travel with the weights.

Shapes: ``x (B, 3, S, S)`` normalised → ``forward`` logits ``(B, K)``; ``forward_embedding`` the pooled
pre-logits features ``(B, D)`` (``D = num_features``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from anydistill.checkpoints import read_state_dict
from anydistill.errors import ConfigError, DataError
from anydistill.models.zoo import load_model_weights
from anydistill.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

__all__ = ["DEFAULT_CLASSIFY_STUDENT", "TimmClassifier", "build_classifier", "classifier_key"]

#: The student of ``task: classify`` when ``model.name`` is left at the (dense) default.
DEFAULT_CLASSIFY_STUDENT = "resnet18_cifar"


def classifier_key(model: nn.Module) -> str:
    """The state-dict prefix of a timm model's classifier (``pretrained_cfg["classifier"]``: ``"fc"``,
    ``"head"``, ``"head.fc"``, ...)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    key = cfg.get("classifier") or "fc"
    return str(key[0] if isinstance(key, list | tuple) else key)


def _create(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``; a patch model (ViT, DeiT, ...) given no ``img_size`` is built with
    ``dynamic_img_size`` (position embeddings interpolated), so it runs at the data's size (e.g. 32² CIFAR
    images, not its 224²) instead of failing at the first step."""
    if "img_size" not in kwargs and "dynamic_img_size" not in kwargs:
        try:
            return timm.create_model(name, num_classes=num_classes, dynamic_img_size=True, **kwargs)
        except TypeError:  # a model without the option (CNNs): built as it is
            pass
    return timm.create_model(name, num_classes=num_classes, **kwargs)


class TimmClassifier(nn.Module):
    """A timm classifier with its normalisation: ``x (B, 3, S, S)`` normalised → logits ``(B, K)``.

    Args:
        backbone: a timm model name (``resnet18_cifar``, ``resnet18``, ``vit_tiny_patch16_224``, ...).
        num_classes: ``K``.
        backbone_kwargs: for ``timm.create_model`` (``img_size`` for ViTs, ``drop_rate``, ...).
        backbone_checkpoint_path: a local timm weights file to start from (its classifier, if any, is
            dropped when its shape is not ``(K, D)``); nothing is downloaded.
        pixel_mean, pixel_std: the normalisation (default: the backbone's ``pretrained_cfg``).

    Raises:
        ConfigError: an unknown timm name or a keyword its builder refuses.
        DataError: a weights file that is missing, unreadable or does not fit (beyond the classifier).
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        backbone_kwargs: dict[str, Any] | None = None,
        backbone_checkpoint_path: str | Path | None = None,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"a classifier needs num_classes >= 2, got {num_classes!r}")
        self.name = backbone
        self.num_classes = num_classes
        self.timm_kwargs = dict(backbone_kwargs or {})
        try:
            self.model: nn.Module = _create(backbone, num_classes, self.timm_kwargs)
        except (RuntimeError, TypeError) as exc:  # timm: "Unknown model (...)", a bad keyword
            raise ConfigError(f"model.name={backbone!r}: {str(exc).splitlines()[0]}") from None
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean = tuple(pixel_mean or cfg.get("mean", IMAGENET_MEAN))
        std = tuple(pixel_std or cfg.get("std", IMAGENET_STD))
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        self._multiple = int(patch if isinstance(patch, int) else patch[0]) if patch is not None else 1
        if backbone_checkpoint_path is not None:
            self._load_backbone(Path(backbone_checkpoint_path))

    def _load_backbone(self, path: Path) -> None:
        """Load timm weights from ``path``; the classifier is kept only when its shape fits."""
        state = dict(read_state_dict(path))
        own = self.model.state_dict()
        head = classifier_key(self.model) + "."
        state = {k: v for k, v in state.items() if not (k.startswith(head) and v.shape != own[k].shape)}
        missing = [k for k in own if k not in state and not k.startswith(head)]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise DataError(
                path,
                f"does not hold {self.name!r} weights: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                f"wrong shape {wrong[:3]}",
            )
        self.model.load_state_dict(state, strict=False)

    @property
    def input_multiple(self) -> int:
        """Input sides must be multiples of this (a ViT's patch size; 1 for CNNs)."""
        return self._multiple

    @property
    def num_features(self) -> int:
        """``D``, the width of :meth:`forward_embedding`."""
        return int(self.model.num_features)

    def normalize(self, image01: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] → ``(x − mean) / std``."""
        return (image01 - self.pixel_mean) / self.pixel_std

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``(B, 3, S, S)`` → logits ``(B, K)``."""
        return self.model(x)

    def forward_embedding(self, x: Tensor) -> Tensor:
        """Normalised ``(B, 3, S, S)`` → pooled pre-logits features ``(B, D)``."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def preprocess_spec(self, size: int) -> Preprocess:
        """Images resized to ``size x size`` (antialiased bilinear, aspect not kept; CIFAR-like data is
        square), then normalised with this model's mean/std."""
        return Preprocess(
            size=int(size), mean=tuple(self.pixel_mean.flatten().tolist()),
            std=tuple(self.pixel_std.flatten().tolist()), resize="fixed", pad="none",
            multiple=self.input_multiple, interpolation="bilinear", antialias=True,
        )  # fmt: skip


def build_classifier(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    backbone_checkpoint_path: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
    **timm_kwargs: Any,
) -> TimmClassifier:
    """The timm classifier ``name`` with ``num_classes`` outputs (``task: classify``'s ``model.name`` and
    ``model.kwargs``): ``pretrained`` + ``backbone_checkpoint_path`` starts from those local timm weights,
    ``checkpoint_path`` loads a whole :class:`TimmClassifier` state dict; other keywords go to
    ``timm.create_model`` (``drop_rate``, ``img_size``, ...)."""
    if pretrained and backbone_checkpoint_path is None:
        raise ConfigError(
            "model.kwargs.pretrained: needs model.kwargs.backbone_checkpoint_path (a local timm weights "
            "file); nothing is downloaded"
        )
    model = TimmClassifier(
        name,
        num_classes,
        timm_kwargs,
        backbone_checkpoint_path if pretrained else None,
        pixel_mean,
        pixel_std,
    )
    if checkpoint_path is not None:
        load_model_weights(model, checkpoint_path)
    return model
