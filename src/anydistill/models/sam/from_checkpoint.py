"""Build the SAM that fits a checkpoint: :func:`load_sam_checkpoint` (architecture from the tensor shapes,
weights loaded without a second copy); the key mapping and state-dict reading are in :mod:`.checkpoint`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anydistill.errors import DataError
from anydistill.models.sam import zoo
from anydistill.models.sam.checkpoint import (
    SAM_SIZES,
    _check_and_load,
    _describe,
    _infer,
    anydistill_to_official,
    infer_decoder_config,
    infer_vit_config,
    official_to_anydistill,
    read_sam_state_dict,
    state_dict_layout,
    vit_size_name,
)

__all__ = ["load_sam_checkpoint"]


def _normalise_type(model_type: str | None) -> str | None:
    if model_type is None:
        return None
    t = model_type.lower().removeprefix("sam_")
    return {"default": "vit_h"}.get(t, t)


def _build_assigned(build: Callable[[], nn.Module], state: dict[str, Tensor], path: Path) -> nn.Module:
    """Build on the meta device (no init, no memory) and take the checkpoint's tensors as parameters:
    a 2.5 GB ViT-H loads without a second copy."""
    with torch.device("meta"):
        model = build()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    _check_and_load(model, state, path, assign=True)
    model.pixel_mean = torch.tensor(model._pixel_mean_values).view(-1, 1, 1)
    model.pixel_std = torch.tensor(model._pixel_std_values).view(-1, 1, 1)
    named = [*model.named_parameters(), *model.named_buffers()]
    leftover = [n for n, t in named if t.is_meta and n not in state]
    if leftover:  # a part with state outside the state dict: build it for real instead
        model = build()
        _check_and_load(model, state, path)
    return model.eval()


def load_sam_checkpoint(path: str | Path, model_type: str | None = None, **overrides: Any) -> nn.Module:
    """A :class:`~anydistill.models.sam.sam.Sam` built to fit the checkpoint in ``path``, weights loaded.

    Args:
        path: an official segment-anything ``.pth`` (a plain state dict), or an anydistill SAM
            state dict / Lightning checkpoint (``sam_vit_*``, ``sam_tiny``, ``sam_small``).
        model_type: ``None`` (detect from the tensor shapes), ``"vit_b"``/``"vit_l"``/``"vit_h"``
            (``"default"`` = vit_h; a file of another size raises a DataError saying which size it
            holds), or a student builder name (``"sam_tiny"``/``"tiny"``, ``"sam_small"``).
        **overrides: builder overrides; needed where shapes do not tell: ``decoder_num_heads`` (8),
            and for students ``img_size`` (1024) and ``backbone`` (when not a registered student's).

    Raises:
        DataError: file missing, unreadable, not a SAM state dict, or not of ``model_type``.
    """
    path = Path(path)
    state = read_sam_state_dict(path)
    want = _normalise_type(model_type)
    layout = state_dict_layout(state)
    cfg = _infer(infer_decoder_config, state, path)
    if layout in ("official", "vit"):
        official = state if layout == "official" else anydistill_to_official(state)
        vit = _infer(infer_vit_config, official, path)
        size = vit_size_name(vit)
        if want is not None and want != size:
            if want not in SAM_SIZES:
                raise DataError(
                    path, f"holds a {_describe(vit)} SAM checkpoint, not a {model_type!r} student"
                )
            raise DataError(path, f"holds a {_describe(vit)} SAM checkpoint, not {want}")
        builder = getattr(zoo, f"sam_{size or 'vit_b'}")
        kwargs = {**cfg, **vit, **overrides}
        ours = official_to_anydistill(official)
        return _build_assigned(lambda: builder(**kwargs), ours, path)

    # An anydistill student: try the registered students (or the one asked for) on the meta device.
    if want in SAM_SIZES:
        raise DataError(path, f"holds an anydistill SAM student (CNN image encoder), not a {want} ViT")
    names = [f"sam_{want}"] if want is not None else list(zoo.SAM_STUDENTS)
    for name in names:
        if name not in zoo.SAM_STUDENTS and not hasattr(zoo, name):
            raise ValueError(
                f"unknown SAM model_type {model_type!r}; known: {', '.join((*SAM_SIZES, *zoo.SAM_STUDENTS))}"
            )
        builder = getattr(zoo, name)
        kwargs = {**cfg, **overrides}
        with torch.device("meta"):
            probe = builder(**kwargs).state_dict()
        if set(probe) == set(state) and all(probe[k].shape == state[k].shape for k in probe):
            return _build_assigned(lambda b=builder, kw=kwargs: b(**kw), state, path)
    if want is not None or "backbone" in overrides:
        # Build it for real to report the first mismatch clearly.
        model = getattr(zoo, names[0])(**{**cfg, **overrides})
        _check_and_load(model, state, path)
        return model
    raise DataError(
        path,
        f"is an anydistill SAM student whose image encoder matches none of {list(zoo.SAM_STUDENTS)}; "
        "pass model_type= and backbone=",
    )
