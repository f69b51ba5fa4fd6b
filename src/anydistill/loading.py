"""The loading layer: one loader from a model file to a ready model with its pre-processing, task and class table.

:func:`load_model` reads what :func:`anydistill.checkpoints.detect_kind` recognises as a model file:

* an anydistill training checkpoint (``best.ckpt``/``last.ckpt`` of any method): the network is rebuilt
  from the checkpoint's model record (``anydistill_model``: builder name and arguments, task,
  :class:`~anydistill.preprocess.Preprocess`, class table), or, for checkpoints written before the
  record existed, from Lightning's ``hyper_parameters`` and the stored config; its ``model.*`` weights
  are loaded strictly;
* a segment-anything ``.pth`` (or an anydistill SAM state dict): size detected from the tensor shapes.

Nothing here imports Lightning: loading a student for inference is torch + timm only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anydistill.checkpoints import CONFIG_KEY, MODEL_RECORD_KEY, checkpoint_task, read_checkpoint
from anydistill.config import ModelConfig, TrainConfig, config_from_dict
from anydistill.data.classes import ClassInfo
from anydistill.errors import AnydistillError, ConfigError, DataError
from anydistill.models.classifier import build_classifier
from anydistill.models.sam import DEFAULT_SAM_STUDENT, load_sam_checkpoint
from anydistill.models.zoo import build_model, list_models
from anydistill.preprocess import Preprocess

__all__ = ["LoadedModel", "load_model", "model_record", "resolve_device", "sam_model_name"]

#: The builder arguments a dense student's record (and old checkpoints' hyper-parameters) hold.
DENSE_ARCH_KEYS = ("model_name", "model_kwargs", "num_classes")


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode) and what is needed to use it.

    Attributes:
        model: the network; ``forward`` takes the normalised, padded input ``preprocess`` makes.
        task: ``"depth"``, ``"semantic"``, ``"promptable"`` or ``"classify"``.
        preprocess: how images become its input (stored with the weights).
        classes: class names / colours / ignore index (semantic; names only for classify; empty otherwise).
        config: the training config stored in the checkpoint (``None`` for foreign files).
        record: the model record (builder name and arguments) it was rebuilt from.
        path: the file it came from.
    """

    model: nn.Module
    task: str
    preprocess: Preprocess
    classes: ClassInfo = field(default_factory=ClassInfo)
    config: TrainConfig | None = None
    record: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def image_size(self) -> int:
        """The long side the model was trained / evaluated at (``preprocess.size``)."""
        return int(self.preprocess.size)


def sam_model_name(name: str, default_name: str) -> str:
    """The SAM builder a promptable config's ``model.name`` means: the default SAM student when it was
    left at the config's (dense) default ``default_name``; else it must be a registered ``sam_*`` model.

    Raises:
        AnydistillError: ``name`` is not a registered SAM model.
    """
    if name == default_name:
        return DEFAULT_SAM_STUDENT
    sam_models = [n for n in list_models() if n.startswith("sam_")]
    if name not in sam_models:
        raise ConfigError(
            f"model.name={name!r} is not a promptable model; task=promptable takes one of {sam_models}"
        )
    return name


def model_record(
    task: str, preprocess: Preprocess, arch: dict[str, Any], classes: ClassInfo | None = None
) -> dict[str, Any]:
    """The plain-data description a training checkpoint stores under ``anydistill_model``.

    ``arch`` is ``{"model_name", "model_kwargs", "num_classes"}`` for dense students, ``{"model_name",
    "model_kwargs"}`` for SAM models built by name, or ``{"from_shapes": True}`` for SAMs whose
    architecture the state dict's shapes describe (fine-tuned from an official ``.pth``).
    """
    return {
        "format": 1,
        "task": task,
        "arch": dict(arch),
        "preprocess": preprocess.to_dict(),
        "classes": (classes or ClassInfo()).to_dict(),
    }


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (checked before anything is loaded onto it).

    Raises:
        ConfigError: not a device name (``"banana"``), or a CUDA / MPS device this machine does not have.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device {str(device)!r}: not a device name (cpu, cuda, cuda:1, mps, ...)"
        ) from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ConfigError(f"device {str(device)!r}: this machine has {count} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r}: MPS is not available on this machine")
    return resolved


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load an anydistill checkpoint or a segment-anything ``.pth`` for inference (eval mode).

    Raises:
        ConfigError: ``device`` is not a device this machine has (:func:`resolve_device`).
        DataError: missing, truncated or foreign file; weights that do not match their description.
    """
    device = resolve_device(device)
    path = Path(path)
    if path.suffix != ".ckpt":
        return _sam_file(path, device)
    ckpt = read_checkpoint(path)
    if "state_dict" not in ckpt or not (
        MODEL_RECORD_KEY in ckpt or "hyper_parameters" in ckpt or CONFIG_KEY in ckpt
    ):
        try:
            return _sam_file(path, device)  # a SAM state dict saved as .ckpt
        except DataError:
            raise DataError(
                path,
                "not an anydistill training checkpoint (no 'state_dict'/'hyper_parameters') nor a SAM state dict",
            ) from None
    config = _stored_config(ckpt, path)
    record = ckpt.get(MODEL_RECORD_KEY) or _legacy_record(ckpt, config, path)
    task = str(record["task"])
    # A legacy dense record names only the size: the spec comes from the model built below (built once).
    preprocess = Preprocess.from_dict(record["preprocess"]) if "size" not in record else None
    classes = ClassInfo.from_dict(record.get("classes"))
    arch = record["arch"]
    if arch.get("from_shapes"):
        model = load_sam_checkpoint(path, img_size=preprocess.size)
    else:
        model = _build(path, task, arch)
        state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise DataError(path, f"weights do not match the model its record describes ({first})") from None
    if preprocess is None:
        preprocess = model.preprocess_spec(int(record.pop("size")))
        record["preprocess"] = preprocess.to_dict()
    model.eval().to(device)
    return LoadedModel(model, task, preprocess, classes, config, record, path)


def _sam_file(path: Path, device: str | torch.device) -> LoadedModel:
    model = load_sam_checkpoint(path).to(device).eval()
    arch = {"from_shapes": True}
    return LoadedModel(
        model,
        "promptable",
        model.preprocess_spec(),
        ClassInfo(),
        None,
        {"task": "promptable", "arch": arch},
        path,
    )


def _build(path: Path, task: str, arch: dict[str, Any]) -> nn.Module:
    kwargs = dict(arch.get("model_kwargs") or {})
    if task == "classify":  # a timm classifier: model_name is the timm name
        for key in ("pretrained", "backbone_checkpoint_path", "checkpoint_path"):  # the weights follow
            kwargs.pop(key, None)
        try:
            return build_classifier(arch["model_name"], int(arch["num_classes"]), **kwargs)
        except (TypeError, KeyError, AnydistillError) as exc:
            raise DataError(path, f"checkpoint does not match its model description: {exc}") from None
    if task in ("semantic", "detect"):  # the number of classes is a builder argument of these models only
        kwargs["num_classes"] = arch["num_classes"]
    try:
        return build_model(arch["model_name"], **kwargs)
    except (TypeError, KeyError, AnydistillError) as exc:
        raise DataError(path, f"checkpoint does not match its model description: {exc}") from None


def _stored_config(ckpt: dict[str, Any], path: Path) -> TrainConfig | None:
    if CONFIG_KEY not in ckpt:
        return None
    try:
        return config_from_dict(ckpt[CONFIG_KEY])
    except AnydistillError:
        return None  # a config of a method this installation does not know: the record suffices


def _legacy_record(ckpt: dict[str, Any], config: TrainConfig | None, path: Path) -> dict[str, Any]:
    """The model record of a checkpoint written before records existed (hyper-parameters + config)."""
    task = checkpoint_task(ckpt)
    if task == "promptable":
        if config is None:
            raise DataError(path, "a promptable checkpoint without its config: cannot tell the model")
        size = config.data.image_size
        if config.prompt.init_checkpoint:
            arch: dict[str, Any] = {"from_shapes": True}
        else:
            name = sam_model_name(config.model.name, ModelConfig().name)
            arch = {"model_name": name, "model_kwargs": {"img_size": size, **dict(config.model.kwargs)}}
        return model_record("promptable", Preprocess.sam(size), arch)
    hp = ckpt.get("hyper_parameters") or {}
    if task not in ("depth", "semantic") or "model_name" not in hp:
        raise DataError(path, "not an anydistill training checkpoint (no model description)")
    arch = {k: hp.get(k) for k in DENSE_ARCH_KEYS}
    size = (config.data.eval_size or config.data.image_size) if config else 256
    classes = ClassInfo(
        list(hp.get("class_names") or []),
        list(hp.get("class_colors") or []),
        int(hp.get("ignore_index", 255)),
    )
    record = model_record(task, Preprocess(size=size), arch, classes)
    # the spec itself needs the model (its mean/std, input multiple): load_model derives it
    record["size"] = size
    return record
