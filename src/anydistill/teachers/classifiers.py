"""Image classifiers as teachers (``task == "classify"``): ``predict(images01 (B, 3, H, W)) -> (B, K)`` logits.

Three adapters, each owning its pre-processing (a :class:`~anydistill.preprocess.Preprocess`):

* :class:`AnydistillClassifierTeacher`: an anydistill ``task: classify`` checkpoint, with the
  pre-processing and class names stored in it;
* :class:`TimmClassifierTeacher`: ``timm:<name>@<weights file>``; ``K`` is read from the shape of the
  weights' classifier (``pretrained_cfg["classifier"]``: ``fc.weight`` ``(K, D)`` for ResNets); the
  timm model's mean/std; by default the input's own size (rounded to a ViT's patch size), as a
  classifier trained on 32² CIFAR images expects them;
* :class:`HFClassifierTeacher`: a local ``transformers`` folder with an image-classification head
  (``AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)``), with its image
  processor's size, resample filter and normalisation (``preprocessor_config.json``; without one, the
  config's ``image_size`` and ImageNet's statistics). A ``{"shortest_edge": S}`` processor resizes to
  ``S x S`` here, exact for square images. Processors with steps this adapter does not reproduce (a
  centre crop to another size than the resize, ConvNeXt's ``crop_pct``, MobileViT's BGR order) are
  refused with a message, not run without them.

Class order: logit ``i`` is the teacher's class ``i``. ``class_names`` holds the teacher's own names when it
has them (the checkpoint's class table, the config's ``id2label`` unless it is the generic ``LABEL_i``),
else None; the classify recipe reorders the logits to the student's classes when the names are a
permutation of them, and otherwise assumes index ``i`` = the student's class ``i`` (sorted class folders).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from anydistill.checkpoints import read_state_dict
from anydistill.errors import DataError, warn
from anydistill.loading import load_model
from anydistill.models.classifier import classifier_key
from anydistill.preprocess import Preprocess
from anydistill.teachers.base import Teacher, check_images
from anydistill.teachers.hf_utils import from_pretrained, read_config, require_transformers, stable_config

__all__ = [
    "AnydistillClassifierTeacher",
    "ClassifierTeacher",
    "HFClassifierTeacher",
    "TimmClassifierTeacher",
    "is_hf_classifier",
]

# PIL resampling codes → torch interpolate modes (transformers maps NEAREST to NEAREST_EXACT).
_RESAMPLE = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


class ClassifierTeacher(Teacher):
    """A frozen classifier: ``predict(images01 (B, 3, H, W) in [0, 1]) -> logits (B, num_classes)``.

    Subclasses set ``preprocess``, ``num_classes`` and ``class_names`` and implement ``_predict``
    (``images01`` on the teacher's device → ``(B, K)``), then call ``_freeze``. No features to share.
    """

    task = "classify"
    num_classes: int
    class_names: list[str] | None = None

    @torch.no_grad()
    def predict(self, images01: Tensor) -> Tensor:
        """``images01 (B, 3, H, W)`` in [0, 1] → logits ``(B, K)`` (float32, on the teacher's device)."""
        check_images(images01)
        out = self._predict(images01.to(self.device, self.dtype)).float()
        if tuple(out.shape) != (images01.shape[0], self.num_classes):  # adapter bug guard
            raise RuntimeError(
                f"{type(self).__name__} returned {tuple(out.shape)} for {tuple(images01.shape)}; expected "
                f"({images01.shape[0]}, {self.num_classes})"
            )
        return out

    def _predict(self, images01: Tensor) -> Tensor:
        return self.model(self.preprocess(images01))  # (B, K)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, " + super().extra_repr()


def _own_size(multiple: int, mean: Any, std: Any) -> Preprocess:
    """The input's own size, each side rounded to ``multiple`` (no resize for a CNN), then mean/std."""
    return Preprocess(
        size=multiple, mean=tuple(mean), std=tuple(std), resize="nearest_multiple", pad="none",
        multiple=multiple, interpolation="bilinear", antialias=True,
    )  # fmt: skip


def _fixed_size(size: int, multiple: int, mean: Any, std: Any, interpolation: str = "bilinear") -> Preprocess:
    """Resize to ``size x size`` (aspect not kept), then mean/std."""
    return Preprocess(
        size=int(size), mean=tuple(mean), std=tuple(std), resize="fixed", pad="none", multiple=multiple,
        interpolation=interpolation, antialias=True,
    )  # fmt: skip


class AnydistillClassifierTeacher(ClassifierTeacher):
    """An anydistill ``task: classify`` checkpoint (``best.ckpt``) as a teacher.

    Args:
        checkpoint_path: the checkpoint.
        image_size: the side images are resized to (default: the one stored in the checkpoint).
        device: where to load it.
    """

    def __init__(
        self, checkpoint_path: str | Path, image_size: int | None = None, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__()
        loaded = load_model(checkpoint_path, device="cpu")
        if loaded.task != "classify":
            raise DataError(
                checkpoint_path, f"is a {loaded.task!r} model; a classify teacher must be a classifier"
            )
        self.model = loaded.model
        self.num_classes = int(loaded.record["arch"]["num_classes"])
        self.class_names = list(loaded.classes.names) or None
        self.preprocess = loaded.preprocess.with_size(image_size) if image_size else loaded.preprocess
        self._freeze({"model": loaded.record["arch"], "preprocess": self.preprocess.to_dict(),
                      "classes": self.class_names})  # fmt: skip
        self.to(device)


class TimmClassifierTeacher(ClassifierTeacher):
    """A timm classifier with local weights (``timm:<name>@<weights file>``) as a teacher.

    Args:
        name: the timm model name.
        checkpoint_path: a weights file holding the classifier (``.pth``/``.safetensors``, timm layout; timm's
            checkpoint filter is applied); ``None`` (``timm:<name>@random``) needs ``num_classes`` (tests).
        num_classes: the expected ``K`` (checked against the weights when both are given).
        image_size: resize to ``image_size x image_size`` (default: the input's own size).
        device: where to load it.
        **timm_kwargs: for ``timm.create_model``.

    Raises:
        DataError: unknown timm name, missing/unreadable weights, weights without the classifier, or
            weights that do not fit the model.
    """

    def __init__(
        self,
        name: str,
        checkpoint_path: str | Path | None = None,
        num_classes: int | None = None,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        try:
            with torch.device("meta"):  # weightless probe: classifier name, normalisation, patch size
                probe = timm.create_model(name, pretrained=False, **timm_kwargs)
        except (RuntimeError, TypeError) as exc:  # timm: "Unknown model (...)"
            raise DataError(None, f"timm model {name!r}: {str(exc).splitlines()[0]}") from None
        head = classifier_key(probe)
        kwargs: dict[str, Any] = dict(timm_kwargs)
        if hasattr(probe, "patch_embed") and hasattr(probe, "num_prefix_tokens"):
            kwargs.setdefault("dynamic_img_size", True)  # any multiple of the patch size
        patch = getattr(getattr(probe, "patch_embed", None), "patch_size", None)
        multiple = int(patch if isinstance(patch, int) else patch[0]) if patch is not None else 1
        if checkpoint_path is None:
            if not num_classes:
                raise DataError(None, f"timm:{name}@random: a random classifier teacher needs num_classes")
            self.model: nn.Module = timm.create_model(name, num_classes=int(num_classes), **kwargs)
        else:
            path = Path(checkpoint_path)
            found = read_state_dict(path).get(f"{head}.weight")
            if found is None or found.ndim != 2:
                raise DataError(
                    path,
                    f"holds no classifier for {name!r} ({head}.weight); a classify teacher needs its head",
                )
            if num_classes is not None and int(found.shape[0]) != int(num_classes):
                raise DataError(path, f"classifier has {found.shape[0]} classes, expected {num_classes}")
            num_classes = int(found.shape[0])
            overlay = {"file": str(path), "num_classes": num_classes}  # keep the head: the cfg's K is ours
            try:
                self.model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=num_classes, **kwargs
                )
            except Exception as exc:  # noqa: BLE001 - any failure while reading weights is a bad user file
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise DataError(path, f"cannot load into {name!r}: {type(exc).__name__}: {first}") from None
        self.num_classes = int(num_classes)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_DEFAULT_MEAN), cfg.get("std", IMAGENET_DEFAULT_STD)
        self.name = name
        self.preprocess = (
            _fixed_size(image_size, multiple, mean, std) if image_size else _own_size(multiple, mean, std)
        )
        self._freeze({"timm_name": name, "timm_kwargs": kwargs, "preprocess": self.preprocess.to_dict()})
        self.to(device)


def is_hf_classifier(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` describes a model with an image-classification head."""
    return any(str(a).endswith("ForImageClassification") for a in config.get("architectures") or [])


class HFClassifierTeacher(ClassifierTeacher):
    """A ``transformers`` image classifier from a local folder (``AutoModelForImageClassification``).

    Args:
        folder: ``config.json`` + weights (+ ``preprocessor_config.json``).
        image_size: resize to ``image_size x image_size`` instead of the processor's size.
        device: where to load it.

    Raises:
        DataError: a folder without a readable classifier (naming the file).
    """

    def __init__(
        self, folder: str | Path, image_size: int | None = None, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__()
        folder = Path(folder)
        config = read_config(folder)
        transformers = require_transformers()
        self.model = from_pretrained(transformers.AutoModelForImageClassification, folder)
        self.num_classes = int(self.model.config.num_labels)
        names = [str(self.model.config.id2label[i]) for i in range(self.num_classes)]
        generic = all(_GENERIC_LABEL.fullmatch(n) for n in names)
        self.class_names = None if generic else names
        patch = getattr(self.model.config, "patch_size", None)
        multiple = int(patch if isinstance(patch, int) else patch[0]) if patch else 1
        self.preprocess = _hf_preprocess(folder, config, multiple, image_size)
        self._freeze({"model_config": stable_config(config), "preprocess": self.preprocess.to_dict()})
        self.to(device)

    def _predict(self, images01: Tensor) -> Tensor:
        return self.model(pixel_values=self.preprocess(images01)).logits  # (B, K)


def _hf_preprocess(folder: Path, config: dict[str, Any], multiple: int, image_size: int | None) -> Preprocess:
    """The processor's resize + rescale + normalisation as a :class:`Preprocess` (module docstring)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        size = image_size or config.get("image_size")
        warn(f"{folder} has no preprocessor_config.json; ImageNet mean/std at {size or 'its own'} px")
        if not size:
            return _own_size(multiple, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        return _fixed_size(int(size), multiple, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    transformers = require_transformers()
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken user file
        raise DataError(path, f"cannot be read: {exc}") from None
    size = dict(getattr(proc, "size", None) or {})
    # Steps this adapter does not reproduce: refused by name rather than run without them (wrong logits).
    crop = dict(getattr(proc, "crop_size", None) or {})
    unsupported = []
    if getattr(proc, "do_center_crop", False) and crop and crop != size:
        unsupported.append(f"a centre crop to {crop} after resizing to {size}")
    crop_pct = getattr(proc, "crop_pct", None)
    if crop_pct not in (None, 1.0) and size.get("shortest_edge", 384) < 384:  # ConvNeXt's processor
        unsupported.append(f"crop_pct {crop_pct}")
    if getattr(proc, "do_flip_channel_order", False):
        unsupported.append("BGR channel order (do_flip_channel_order)")
    if unsupported:
        raise DataError(
            path, f"{type(proc).__name__} uses {' and '.join(unsupported)}, which the classify teacher does "
            "not reproduce yet; export the model's processor as a plain resize (size = crop size) to use it",
        )  # fmt: skip
    if image_size:
        side = int(image_size)
    elif size.get("height") and size.get("width"):
        if size["height"] != size["width"]:
            raise DataError(path, f"size {size['height']}x{size['width']} is not square; pass image_size")
        side = int(size["height"])
    elif size.get("shortest_edge"):
        side = int(size["shortest_edge"])
    else:
        raise DataError(path, f"expected size {{height, width}} or {{shortest_edge}}, got {size}")
    normalize = bool(getattr(proc, "do_normalize", True))
    mean = getattr(proc, "image_mean", None) or IMAGENET_DEFAULT_MEAN
    std = getattr(proc, "image_std", None) or IMAGENET_DEFAULT_STD
    resample = int(getattr(getattr(proc, "resample", 2), "value", getattr(proc, "resample", 2)))
    return Preprocess(
        size=side, mean=tuple(mean) if normalize else (0.0, 0.0, 0.0),
        std=tuple(std) if normalize else (1.0, 1.0, 1.0),
        input_range=1.0 if getattr(proc, "do_rescale", True) else 255.0,
        resize="fixed" if getattr(proc, "do_resize", True) else "none", pad="none", multiple=multiple,
        interpolation=_RESAMPLE.get(resample, "bilinear"), antialias=True, clamp=True,
    )  # fmt: skip
