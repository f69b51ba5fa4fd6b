"""The data of ``task: classify``: train/val image sets with their transforms, and toyworld crops on disk.

- :func:`classify_train_transform` / :func:`classify_eval_transform`: torchvision v2 pipelines on the
  uint8 ``(3, H, W)`` image tensor → float32 ``(3, S, S)`` in [0, 1] (the model normalises). Training:
  for small images (``S <= 64``, CIFAR's regime) resize to ``S x S``, zero-pad by ``S / 8`` and crop back
  (4 px at 32², He et al.'s CIFAR augmentation), for larger ones a random resized crop of
  ``crop_scale`` of the area; then a horizontal flip (``hflip``). Evaluation: resize to ``S x S``.
- :func:`classify_sets`: the labeled train and validation sets a :class:`~anydistill.config.DataConfig`
  describes: class folders (``train_root``; ``val_root``, else a ``val_fraction`` held out of
  ``train_root``) or toyworld object crops (``train_domain``/``val_domain``, held-out seeds for val).
  Classes are the train folder's sorted folder names (toyworld: :data:`OBJECT_CLASSES`); a validation
  folder holding a class the train folder lacks is a one-line error.
- :func:`write_class_folders`: a class-labelled dataset written as ``root/<class>/<index>.png`` (once;
  reused while its description matches), so toyworld crops can go through the file-based teacher pass.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from anydistill.config import DataConfig
from anydistill.data.classify import OBJECT_CLASSES, ClassFolderDataset, ToyWorldObjects
from anydistill.data.datamodule import split_indices
from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET
from anydistill.errors import ConfigError, DataError

__all__ = [
    "ClassifySets",
    "classify_eval_transform",
    "classify_sets",
    "classify_train_transform",
    "write_class_folders",
]

#: Images at most this size get CIFAR's pad-and-crop; larger ones a random resized crop.
SMALL_IMAGE = 64
_MARKER = ".anydistill_classes.json"


def classify_train_transform(
    size: int, crop_scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True
) -> v2.Compose:
    """uint8 ``(3, H, W)`` → augmented float32 ``(3, size, size)`` in [0, 1] (see the module docstring)."""
    if size <= SMALL_IMAGE:
        steps: list[Any] = [
            v2.Resize((size, size), antialias=True),
            v2.RandomCrop(size, padding=max(1, size // 8), fill=0, padding_mode="constant"),
        ]
    else:
        steps = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


def classify_eval_transform(size: int) -> v2.Compose:
    """uint8 ``(3, H, W)`` → float32 ``(3, size, size)`` in [0, 1]: an antialiased resize (the checkpoint's
    ``Preprocess``, resize ``"fixed"``)."""
    return v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])


@dataclass
class ClassifySets:
    """Labeled sets of a classify run: items ``{"image": float32 (3, S, S), "label": int64, "id": str}``.

    Attributes:
        train, val: the datasets (``val`` is None only when no validation was asked for).
        classes: class names; label ``k`` is ``classes[k]``.
        train_root: the folder the train items are read from (None for toyworld rendered on the fly).
    """

    train: Dataset
    val: Dataset | None
    classes: list[str]
    train_root: Path | None = None


def classify_sets(data: DataConfig, train_root: str | Path | None = None) -> ClassifySets:
    """The train/val sets ``data`` describes (module docstring); ``train_root`` overrides
    ``data.train_root`` (toyworld crops written to disk for the teacher pass: val stays toyworld).

    Raises:
        ConfigError: ``data.source=coco``, or no validation set (no ``val_root`` and ``val_fraction=0``
            with a folder).
        DataError: folders missing, empty, or a validation class the train folder lacks (naming it).
    """
    size = data.image_size
    train_tf = classify_train_transform(size, (data.crop_scale[0], data.crop_scale[1]), data.hflip)
    eval_tf = classify_eval_transform(size)
    policy: Any = data.on_bad_image
    if data.source == "toyworld":
        val = ToyWorldObjects(
            data.val_domain,
            size,
            data.val_count,
            seed=data.seed + TOYWORLD_HELDOUT_SEED_OFFSET,
            transform=eval_tf,
        )
        if train_root is None:
            train = ToyWorldObjects(
                data.train_domain, size, data.train_count, seed=data.seed, transform=train_tf
            )
            return ClassifySets(train, val, list(OBJECT_CLASSES))
        train = ClassFolderDataset(train_root, train_tf, classes=OBJECT_CLASSES, on_bad_image=policy)
        return ClassifySets(train, val, list(OBJECT_CLASSES), Path(train_root))
    if data.source != "folder":
        raise ConfigError(f"data.source: task=classify reads 'folder' or 'toyworld', got {data.source!r}")
    root = Path(train_root or data.train_root or "")
    train_set = ClassFolderDataset(root, train_tf, on_bad_image=policy)
    classes = list(train_set.classes)
    if data.val_root:
        val_set: Dataset = ClassFolderDataset(data.val_root, eval_tf, classes=classes, on_bad_image=policy)
        return ClassifySets(train_set, val_set, classes, root)
    if data.val_fraction <= 0:
        raise ConfigError(
            "data.val_root: task=classify needs a validation set (data.val_root, or data.val_fraction > 0)"
        )
    train_idx, val_idx = split_indices(len(train_set), data.val_fraction, data.seed)
    held_out = ClassFolderDataset(root, eval_tf, classes=classes, on_bad_image=policy)
    return ClassifySets(Subset(train_set, train_idx), Subset(held_out, val_idx), classes, root)


def write_class_folders(
    dataset: Dataset, classes: list[str], root: str | Path, describe: dict[str, Any]
) -> Path:
    """Write ``dataset`` (items ``{"image": uint8 (3, H, W), "label": int}``) as ``root/<class>/<i>.png``.

    Done once: a folder whose marker holds the same ``describe`` (what the items are a function of, e.g.
    the toyworld domain, seed, count and size) is reused as it is. The folder is written beside ``root``
    and renamed into place, so a killed write leaves no half folder.

    Returns:
        ``root``.
    """
    root = Path(root)
    marker = root / _MARKER
    wanted = {"classes": list(classes), **describe}
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                return root
        except (OSError, json.JSONDecodeError):
            pass
    if root.parent.is_dir():
        for stale in root.parent.glob(f"{root.name}.tmp-*"):  # left by a killed write
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    n = len(dataset)  # type: ignore[arg-type]
    width = max(6, len(str(n)))
    for i in range(n):
        item = dataset[i]
        image = item["image"]
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3:
            raise DataError(
                root, "write_class_folders needs uint8 (3, H, W) images (a dataset without transform)"
            )
        folder = tmp / classes[int(item["label"])]
        folder.mkdir(parents=True, exist_ok=True)
        array = np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # (H, W, 3)
        Image.fromarray(array).save(folder / f"{i:0{width}d}.png")
    (tmp / _MARKER).write_text(json.dumps(wanted))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root
