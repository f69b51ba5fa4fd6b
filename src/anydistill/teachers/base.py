"""The teacher protocol: a frozen model that maps a [0, 1] image batch to targets at the input's size.

Every adapter (anydistill checkpoint, Hugging Face Depth Anything, DINOv2 / timm encoders) is a
:class:`Teacher`: an ``nn.Module`` that is always frozen (``requires_grad=False``, stays in ``eval()``
even when a parent calls ``.train()``) and owns its pre-processing, like torchvision weights carry
their transforms. Callers hand it ``images01 (B, 3, H, W)`` float in [0, 1], NOT normalised, and get:

* ``task == "depth"``: ``predict -> (B, 1, H, W)`` relative disparity (inverse depth up to scale and
  shift, larger = nearer), the output of Depth Anything's relative models;
* ``task == "semantic"``: ``predict -> (B, K, H, W)`` logits;
* ``task == "classify"``: ``predict -> (B, K)`` logits, one vector per image
  (:mod:`anydistill.teachers.classifiers`);
* ``features -> (B, C, h, w)`` patch-feature maps (``C = feature_dim``, ``h ≈ H_work / feature_stride``)
  from teachers that have an encoder to share (``feature_dim is not None``); ``task == "features"``
  teachers (frozen semantic encoders) have only this.

Features follow timm's API, as the students' do (:mod:`anydistill.models.task_models`):
``forward_intermediates(images01, indices, output_fmt, intermediates_only=True)`` returns the selected
*taps* (``feature_channels``/``feature_reductions`` describe them; a teacher with one map has one tap),
``features`` is its deepest tap and ``forward_embedding`` that map's global average ``(B, C)``.

Each teacher's ``preprocess`` (a :class:`~anydistill.preprocess.Preprocess`) says how it resizes and
normalises, and is what it applies. The dense teachers and encoders keep the aspect ratio and round each
side to the model's multiple (patch size or stride), unpadded, so there are no padding artefacts; SAM
uses its own padded frame. :meth:`Teacher.predict_many` batches images of different sizes by grouping
equal sizes.

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

from anydistill.models.task_models import (
    FeatureIndices,
    check_output_fmt,
    format_taps,
    pooled_embedding,
    take_indices,
)
from anydistill.preprocess import Preprocess, multiple_shape

TeacherTask = Literal["depth", "semantic", "features", "classify"]


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
    """A keep-aspect size whose sides are multiples of ``multiple``:
    :func:`anydistill.preprocess.multiple_shape` (``Preprocess`` resize ``"long_side_multiple"``, or
    ``"nearest_multiple"`` with ``long_side=None``)."""
    return multiple_shape(height, width, multiple, long_side)


def resize(x: Tensor, size: Sequence[int], mode: str = "bilinear", antialias: bool = True) -> Tensor:
    """``(B, C, H, W) -> (B, C, size[0], size[1])``; a no-op at the same size (mapping outputs back;
    inputs go through the teacher's ``preprocess``).

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

    Subclasses build their network and set ``preprocess``, the :class:`~anydistill.preprocess.Preprocess`
    that turns ``images01`` into the network's input (and :meth:`working_size`), then call :meth:`_freeze`
    with their config (which must keep the keys earlier versions fingerprinted); they implement
    :meth:`_predict` (and, when they have features to share, :meth:`_features` for one map or
    :meth:`_forward_intermediates` plus ``feature_channels``/``feature_reductions`` for several).
    Outputs are float32 on the teacher's device.

    ``predict``/``features``/``forward_intermediates`` run under ``torch.no_grad()`` rather than ``inference_mode()`` on purpose:
    their outputs are loss targets, and inference-mode tensors cannot be saved for backward when a
    teacher runs inside a training step.
    """

    task: TeacherTask
    preprocess: Preprocess
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
    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """``(H_in, W_in)`` the network sees for an ``height x width`` input: ``preprocess.input_shape``."""
        return self.preprocess.input_shape(height, width)

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
        """``images01 (B, 3, H, W)`` in [0, 1] → patch features ``(B, feature_dim, h, w)``, the deepest
        tap: ``forward_intermediates(images01, indices=1)[-1]``."""
        return self.forward_intermediates(images01, indices=1, intermediates_only=True)[-1]

    # ------------------------------------------------------------------ features (timm's API)
    @property
    def feature_channels(self) -> list[int]:
        """Channels of each tap of :meth:`forward_intermediates`, shallow to deep (the last is
        ``feature_dim``): one tap by default, none without features."""
        return [] if self.feature_dim is None else [int(self.feature_dim)]

    @property
    def feature_reductions(self) -> list[int]:
        """Stride of each tap relative to the working size (the last is ``feature_stride``)."""
        return [] if self.feature_stride is None else [int(self.feature_stride)]

    @torch.no_grad()
    def forward_intermediates(
        self,
        images01: Tensor,
        indices: FeatureIndices = None,
        output_fmt: str = "NCHW",
        intermediates_only: bool = True,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """``images01 (B, 3, H, W)`` in [0, 1] → the selected feature maps, after the teacher's own
        pre-processing (the same as :meth:`features`').

        Args:
            images01: float RGB batch in [0, 1], NOT normalised.
            indices: taps to return (:func:`~anydistill.models.task_models.take_indices`): None = all,
                n = the last n, or tap indices (negative from the end).
            output_fmt: "NCHW" → ``(B, C_i, h_i, w_i)``; "NLC" → ``(B, h_i * w_i, C_i)``.
            intermediates_only: False also returns the final output: :meth:`predict`'s for depth and
                semantic teachers, the deepest map ``(B, feature_dim, h, w)`` for ``task == "features"``.

        Returns:
            ``[taps]`` or ``(final, [taps])``, float32 on the teacher's device.

        Raises:
            TypeError: the teacher has no features (``feature_dim is None``), as :meth:`features`.
        """
        if self.feature_dim is None:
            raise TypeError(f"{type(self).__name__} has no feature encoder to share (feature_dim is None)")
        check_images(images01)
        take = take_indices(len(self.feature_channels), indices)
        check_output_fmt(output_fmt)
        x = images01.to(self.device, self.dtype)
        final, maps = self._forward_intermediates(x, take, final=not intermediates_only)
        taps = format_taps([m.float() for m in maps], output_fmt)
        if intermediates_only:
            return taps
        if final is None:  # adapter bug guard
            raise RuntimeError(f"{type(self).__name__}._forward_intermediates returned no final output")
        return final.float(), taps

    @torch.no_grad()
    def forward_embedding(self, images01: Tensor) -> Tensor:
        """``images01 (B, 3, H, W)`` in [0, 1] → ``(B, feature_dim)``: the global average of :meth:`features`."""
        return pooled_embedding(self.features(images01))

    # ------------------------------------------------------------------ subclass hooks
    def _predict(self, images01: Tensor) -> Tensor:
        raise NotImplementedError

    def _features(self, images01: Tensor) -> Tensor:
        raise NotImplementedError

    def _forward_intermediates(
        self, images01: Tensor, take: list[int], final: bool
    ) -> tuple[Tensor | None, list[Tensor]]:
        """``images01`` (on the teacher's device and dtype) → (the final output if ``final`` else None,
        the taps ``take`` (ascending tap indices) as maps ``(B, C_i, h_i, w_i)``).

        Default, for a teacher with one map: ``[_features(images01)]``; its final output is that map for
        ``task == "features"``, else a second pass through :meth:`_predict`. Teachers with several taps
        override this.
        """
        maps = [self._features(images01)]  # [(B, feature_dim, h, w)]
        if not final:
            return None, maps
        return (maps[-1] if self.task == "features" else self._predict(images01)), maps

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
