"""One loader for every promptable (SAM-structured) model a user can point at.

* an official segment-anything ``.pth`` (``sam_vit_b_01ec64.pth`` …) or an anydistill SAM state dict:
  :func:`anydistill.models.sam.load_sam_checkpoint` (size detected from the tensor shapes);
* an anydistill training checkpoint (``best.ckpt`` of ``anydistill train task=promptable`` or of
  ``anydistill distill task=promptable``): the model is rebuilt from the config stored in the
  checkpoint (model name, its kwargs, ``data.image_size``) and its ``model.*`` weights loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from anydistill.errors import ConfigError, DataError
from anydistill.inference import read_checkpoint

__all__ = ["build_promptable_model", "load_promptable", "read_promptable_config"]


def read_promptable_config(path: str | Path) -> Any | None:
    """The :class:`~anydistill.config.TrainConfig` stored in an anydistill ``.ckpt`` (None otherwise)."""
    from anydistill.config import config_from_dict

    path = Path(path)
    if path.suffix != ".ckpt":
        return None
    ckpt = read_checkpoint(path)
    return config_from_dict(ckpt["anydistill_config"]) if "anydistill_config" in ckpt else None


def load_promptable(path: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """A SAM-structured model (:class:`~anydistill.models.sam.Sam`) from ``path``, in eval mode.

    Raises:
        DataError: missing, truncated or foreign file; an anydistill checkpoint of another task.
    """
    from anydistill.models import build_model
    from anydistill.models.sam import load_sam_checkpoint

    path = Path(path)
    if path.suffix != ".ckpt":
        return load_sam_checkpoint(path, **overrides).to(device).eval()
    ckpt = read_checkpoint(path)
    if "anydistill_config" not in ckpt or "state_dict" not in ckpt:
        return load_sam_checkpoint(path, **overrides).to(device).eval()
    from anydistill.config import config_from_dict

    cfg = config_from_dict(ckpt["anydistill_config"])
    if cfg.task != "promptable":
        raise DataError(path, f"is a {cfg.task!r} checkpoint, not a promptable (SAM) model")
    if cfg.prompt.init_checkpoint:
        # Fine-tuned from another checkpoint (e.g. an official .pth): its architecture is the
        # checkpoint's, not model.name's; the shapes in the state dict describe it.
        from anydistill.models.sam import load_sam_checkpoint

        return load_sam_checkpoint(path, **{"img_size": cfg.data.image_size, **overrides}).to(device).eval()
    kwargs = {"img_size": cfg.data.image_size, **dict(cfg.model.kwargs), **overrides}
    model = build_model(sam_model_name(cfg), **kwargs)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(path, f"weights do not match the model its config describes ({first})") from None
    return model.to(device).eval()


def sam_model_name(cfg: Any) -> str:
    """``model.name`` for a promptable config: the default SAM student when left at the config's
    default (a depth model), else it must be a SAM-structured model.

    Raises:
        ConfigError: ``model.name`` is not a registered SAM model.
    """
    from anydistill.config import ModelConfig
    from anydistill.models import list_models
    from anydistill.models.sam import DEFAULT_SAM_STUDENT

    name = cfg.model.name
    if name == ModelConfig().name:
        return DEFAULT_SAM_STUDENT
    sam_models = [n for n in list_models() if n.startswith("sam_")]
    if name not in sam_models:
        raise ConfigError(f"model.name={name!r} is not a promptable model; task=promptable takes one of {sam_models}")
    return name


def build_promptable_model(cfg: Any) -> nn.Module:
    """The model a ``task=promptable`` config trains: ``prompt.init_checkpoint`` when set (an official
    SAM ``.pth``, e.g. to fine-tune with a frozen encoder, or an anydistill checkpoint), else
    ``build_model(model.name, img_size=data.image_size, **model.kwargs)``.

    Raises:
        ConfigError: the checkpoint's input size differs from ``data.image_size``.
    """
    from anydistill.models import build_model

    if cfg.prompt.init_checkpoint:
        model = load_promptable(cfg.prompt.init_checkpoint)
    else:
        model = build_model(sam_model_name(cfg), **{"img_size": cfg.data.image_size, **dict(cfg.model.kwargs)})
    if int(model.image_encoder.img_size) != cfg.data.image_size:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} but the model's image encoder takes "
            f"{model.image_encoder.img_size}² inputs; set data.image_size={model.image_encoder.img_size}"
        )
    return model
