"""The teacher protocol: a frozen model that maps a [0, 1] image batch to targets at the input's size.

Every adapter (anydistill checkpoint, Hugging Face Depth Anything, DINOv2 / timm encoders) is a
:class:`Teacher`: an ``nn.Module`` that is always frozen (``requires_grad=False``, stays in ``eval()``
even when a parent calls ``.train()``) and owns its pre-processing, like torchvision weights carry
their transforms. Callers hand it ``images01 (B, 3, H, W)`` float in [0, 1], NOT normalised, and get:

* ``task == "depth"``: ``predict -> (B, 1, H, W)`` relative disparity (inverse depth up to scale and
  shift, larger = nearer), the output of Depth Anything's relative models;
* ``task == "semantic"``: ``predict -> (B, K, H, W)`` logits;
* ``features -> (B, C, h, w)`` patch-feature maps (``C = feature_dim``, ``h ≈ H_work / feature_stride``)
  from teachers that have an encoder to share (``feature_dim is not None``); ``task == "features"``
  teachers (frozen semantic encoders) have only this.

Resizing keeps the aspect ratio and rounds each side to the model's multiple (patch size or stride);
nothing is padded, so there are no padding artefacts. :meth:`Teacher.predict_many` batches images of
different sizes by grouping equal sizes.

``fingerprint`` is a sha256 over the adapter's config (its pre-processing constants, architecture) and
every weight's bytes, computed once when the adapter is built; a pseudo-label cache stores it to tell
one teacher from another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TeacherTask = Literal["depth", "semantic", "features"]


def state_dict_sha256(state: Mapping[str, Tensor], config: Mapping[str, Any] | None = None) -> str:
    """sha256 over ``config`` (JSON, sorted keys) and each tensor's name, dtype, shape and raw bytes.

    Keys are visited in sorted order so the digest does not depend on module registration order.
    """
    h = hashlib.sha256()
    h.update(json.dumps(dict(config or {}), sort_keys=True, default=str).encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous().reshape(-1)  # (N,) raw storage of any dtype
        h.update(f"\0{key}\0{t.dtype}\0{tuple(state[key].shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())  # bytes of any dtype (bf16 too)
    return h.hexdigest()


def fit_to_multiple(height: int, width: int, multiple: int, long_side: int | None = None) -> tuple[int, int]:
    """A keep-aspect size whose sides are multiples of ``multiple``.

    ``long_side=None`` keeps the input's scale (each side rounded to the nearest multiple); otherwise
    the image is scaled so its long side is ``long_side``, then each side rounded. Never below
    ``multiple``.
    """
    scale = 1.0 if long_side is None else long_side / max(height, width)
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )


def resize(x: Tensor, size: Sequence[int], mode: str = "bilinear", antialias: bool = True) -> Tensor:
    """``(B, C, H, W) -> (B, C, size[0], size[1])``; a no-op at the same size.

    ``antialias`` (bilinear/bicubic only) low-pass filters when shrinking, like PIL and torchvision do.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    smooth = mode in ("bilinear", "bicubic")
    return F.interpolate(
        x, size=size, mode=mode, align_corners=False if smooth else None, antialias=antialias and smooth
    )


def check_images(images01: Tensor) -> None:
    """Raise a ValueError unless ``images01`` is a float ``(B, 3, H, W)`` batch."""
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"expected an RGB batch (B, 3, H, W) in [0, 1], got shape {tuple(images01.shape)}")
    if not images01.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images01.dtype} (divide uint8 by 255)")


class Teacher(nn.Module):
    """A frozen model with its own pre-processing (see the module docstring for the protocol).

    Subclasses build their network, then call :meth:`_freeze` with their config; they implement
    :meth:`_predict` (and :meth:`_features` when they have features to share). Outputs are float32 on
    the teacher's device.

    ``predict``/``features`` run under ``torch.no_grad()`` rather than ``inference_mode()`` on purpose:
    their outputs are loss targets, and inference-mode tensors cannot be saved for backward when a
    teacher runs inside a training step.
    """

    task: TeacherTask
    feature_dim: int | None = None
    feature_stride: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self._fingerprint: str | None = None
        self.config: dict[str, Any] = {}

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """sha256 hex digest of the adapter's config + weights, fixed when the teacher was built."""
        if self._fingerprint is None:
            raise RuntimeError(f"{type(self).__name__} did not call _freeze() at the end of __init__")
        return self._fingerprint

    def _freeze(self, config: Mapping[str, Any]) -> None:
        """Freeze all parameters, switch to eval, record ``config`` and the fingerprint (call once)."""
        self.requires_grad_(False)
        self.eval()
        self.config = {"adapter": type(self).__name__, "task": self.task, **config}
        self._fingerprint = state_dict_sha256(self.state_dict(), self.config)

    def train(self, mode: bool = True) -> Teacher:
        """Teachers stay in eval mode (dropout off, norms frozen) whatever a parent module asks."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    # ------------------------------------------------------------------ protocol
    @torch.no_grad()
    def predict(self, images01: Tensor) -> Tensor:
        """``images01 (B, 3, H, W)`` in [0, 1] → disparity ``(B, 1, H, W)`` or logits ``(B, K, H, W)``."""
        if self.task == "features":
            raise TypeError(f"{type(self).__name__} is a feature encoder: it has features(), not predict()")
        check_images(images01)
        out = self._predict(images01.to(self.device, self.dtype)).float()
        if out.shape[0] != images01.shape[0] or out.shape[-2:] != images01.shape[-2:]:  # adapter bug guard
            raise RuntimeError(
                f"{type(self).__name__} returned {tuple(out.shape)} for {tuple(images01.shape)}"
            )
        return out

    @torch.no_grad()
    def features(self, images01: Tensor) -> Tensor:
        """``images01 (B, 3, H, W)`` in [0, 1] → patch features ``(B, feature_dim, h, w)``."""
        if self.feature_dim is None:
            raise TypeError(f"{type(self).__name__} has no feature encoder to share (feature_dim is None)")
        check_images(images01)
        return self._features(images01.to(self.device, self.dtype)).float()

    def _predict(self, images01: Tensor) -> Tensor:
        raise NotImplementedError

    def _features(self, images01: Tensor) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ batching
    def predict_many(self, images: Sequence[Tensor], batch_size: int = 8) -> list[Tensor]:
        """``[(3, H_i, W_i)]`` → ``[(C, H_i, W_i)]`` in the same order; equal sizes share a batch."""
        return _grouped(images, batch_size, self.predict)

    def features_many(self, images: Sequence[Tensor], batch_size: int = 8) -> list[Tensor]:
        """``[(3, H_i, W_i)]`` → ``[(C, h_i, w_i)]`` in the same order; equal sizes share a batch."""
        return _grouped(images, batch_size, self.features)

    def extra_repr(self) -> str:
        return f"task={self.task!r}, fingerprint={(self._fingerprint or '?')[:12]}"


def _grouped(images: Sequence[Tensor], batch_size: int, fn: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Apply a batch function to images of mixed sizes without padding: group by size, keep order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    out: list[Tensor | None] = [None] * len(images)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            result = fn(torch.stack([images[i] for i in chunk]))  # (b, C, h, w)
            for i, r in zip(chunk, result, strict=True):
                out[i] = r
    return [o for o in out if o is not None]
