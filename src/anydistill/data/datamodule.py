"""Build train/val datasets and loaders from a :class:`~anydistill.config.DataConfig`.

Two sources share every code path after loading: the procedural ``toyworld`` (rendered on the fly,
nothing on disk) and a user ``folder`` in the format of DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from anydistill.config import DataConfig
from anydistill.data.classes import ClassInfo, class_info
from anydistill.data.detection import (
    CocoDetection,
    DetectionDataset,
    ToyWorldDetection,
    collate_detection,
    detection_train_transform,
)
from anydistill.data.folder import FolderDataset
from anydistill.data.instances import (
    CocoInstances,
    FolderInstances,
    InstanceDataset,
    ToyWorldInstances,
    collate_instances,
)
from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET, ToyWorldDataset
from anydistill.data.transforms import collate_samples, eval_transforms, train_transforms
from anydistill.errors import ConfigError


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic hold-out split of ``range(n)``; at least one validation item when ``val_fraction > 0``."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_fraction <= 0 else max(1, round(n * val_fraction))
    if n_val >= n:
        raise ConfigError(f"data.val_fraction={val_fraction} leaves no training images out of {n}")
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def folder_dataset(cfg: DataConfig, root: str | Path, task: str, transform) -> FolderDataset:
    return FolderDataset(
        root,
        task=task,
        transform=transform,
        depth_scale=cfg.depth_scale,
        on_missing_label=cfg.on_missing_label,
        on_bad_image=cfg.on_bad_image,
        on_bad_class=cfg.on_bad_class,
    )


class SupervisedDataModule(L.LightningDataModule):
    """Labeled train/val data for ``task`` ("depth" or "semantic").

    Args:
        cfg: the data section of the config.
        task: which targets the samples must carry.
        input_multiple: the model's required input multiple (patch size or max stride).
    """

    def __init__(self, cfg: DataConfig, task: str, input_multiple: int = 32) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        size, eval_size = cfg.image_size, cfg.eval_size or cfg.image_size
        for key, value in (("image_size", size), ("eval_size", eval_size)):
            if value % input_multiple:
                raise ConfigError(
                    f"data.{key}={value} must be a multiple of the model's input multiple {input_multiple}"
                )
        self.train_tf = train_transforms(size, input_multiple, scale=tuple(cfg.crop_scale), hflip=cfg.hflip)
        self.eval_tf = eval_transforms(eval_size, input_multiple)
        self.train_set, self.val_set = self._build()
        self.classes = self._classes()

    def _build(self) -> tuple[Dataset, Dataset]:
        cfg = self.cfg
        eval_size = cfg.eval_size or cfg.image_size
        if cfg.source == "toyworld":
            train = ToyWorldDataset(
                cfg.train_domain, cfg.image_size, cfg.train_count, seed=cfg.seed, transform=self.train_tf
            )
            val = ToyWorldDataset(
                cfg.val_domain,
                eval_size,
                cfg.val_count,
                seed=cfg.seed + TOYWORLD_HELDOUT_SEED_OFFSET,
                transform=self.eval_tf,
            )
            return train, val
        train_full = folder_dataset(cfg, cfg.train_root, self.task, self.train_tf)
        if cfg.val_root:
            return train_full, folder_dataset(cfg, cfg.val_root, self.task, self.eval_tf)
        val_full = folder_dataset(cfg, cfg.train_root, self.task, self.eval_tf)
        train_idx, val_idx = split_indices(len(train_full), cfg.val_fraction, cfg.seed)
        return Subset(train_full, train_idx), Subset(val_full, val_idx)

    def _classes(self) -> ClassInfo:
        return class_info(self.cfg)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) >= self.cfg.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_samples,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class InstanceDataModule(L.LightningDataModule):
    """Images with object instances for promptable segmentation (``task=promptable``).

    Sources: ``toyworld`` (instance ids rendered on the fly), a ``folder`` (``instances/`` PNGs beside
    ``images/``) or ``coco`` (``prompt.coco_json`` over images in ``data.train_root``). Images are resized
    to longest side ``image_size`` (the model's ``img_size``) and padded, SAM's pre-processing; the
    validation subset of objects is fixed, so validation metrics are comparable across epochs.

    Args:
        cfg: the data section of the config.
        max_instances: most objects per training image; ``val_instances`` per validation image.
        min_area: smallest object, in pixels at the input size.
        coco_json, val_coco_json: COCO instance files (``cfg.source == "coco"``).
    """

    def __init__(
        self, cfg: DataConfig, max_instances: int = 8, min_area: int = 64, val_instances: int = 8,
        coco_json: str | None = None, val_coco_json: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.max_instances, self.min_area, self.val_instances = max_instances, min_area, val_instances
        self.coco_json, self.val_coco_json = coco_json, val_coco_json
        self.train_set, self.val_set = self._build()

    def _sources(self) -> tuple[Sequence, Sequence]:
        cfg = self.cfg
        if cfg.source == "toyworld":
            train = ToyWorldInstances(cfg.train_domain, cfg.image_size, cfg.train_count, seed=cfg.seed)
            val = ToyWorldInstances(
                cfg.val_domain, cfg.eval_size or cfg.image_size, cfg.val_count,
                seed=cfg.seed + TOYWORLD_HELDOUT_SEED_OFFSET,
            )  # fmt: skip
            return train, val
        if cfg.source == "coco":
            if not self.coco_json:
                raise ConfigError("prompt.coco_json: required when data.source is 'coco'")
            train = CocoInstances(self.coco_json, cfg.train_root)
            if self.val_coco_json:
                return train, CocoInstances(self.val_coco_json, cfg.val_root or cfg.train_root)
        else:
            train = FolderInstances(cfg.train_root, cfg.on_missing_label, cfg.on_bad_image)
            if cfg.val_root:
                return train, FolderInstances(cfg.val_root, cfg.on_missing_label, cfg.on_bad_image)
        train_idx, val_idx = split_indices(len(train), cfg.val_fraction, cfg.seed)
        return Subset(train, train_idx), Subset(train, val_idx)

    def _build(self) -> tuple[Dataset, Dataset]:
        train_src, val_src = self._sources()
        size, seed = self.cfg.image_size, self.cfg.seed
        train = InstanceDataset(
            train_src, size, self.max_instances, self.min_area, sampling="random", seed=seed
        )
        val = InstanceDataset(val_src, size, self.val_instances, self.min_area, sampling="fixed", seed=seed)
        return train, val

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, num_workers=workers,
            collate_fn=collate_instances, drop_last=shuffle and len(dataset) > self.cfg.batch_size,
            persistent_workers=workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class DetectionDataModule(L.LightningDataModule):
    """Images with class-labelled boxes for object detection (``task=detect``).

    Sources: ``toyworld`` (exact boxes of every object of at least ``min_area`` visible pixels, rendered
    on the fly; train ``train_domain``, validation ``val_domain`` from the held-out seed) or ``coco``
    (``coco_json`` over images in ``data.train_root``; ``val_coco_json`` over ``data.val_root``, else a
    deterministic ``val_fraction`` of the training images). Images are resized to longest side
    ``image_size``, the training ones flipped (``hflip``) and colour-jittered (``color_jitter``), and
    batches padded bottom/right to a square (:func:`~anydistill.data.detection.collate_detection`).
    With ``masks`` (a Mask R-CNN student) every item carries its instance masks too (toyworld's exact
    ones; the COCO annotations' ``segmentation``, which every non-crowd annotation must then have).

    Attributes: ``classes`` (names in label order), ``train_set``, ``val_set``.
    """

    def __init__(
        self, cfg: DataConfig, min_area: int = 16, color_jitter: float = 0.4,
        coco_json: str | None = None, val_coco_json: str | None = None, masks: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.min_area, self.color_jitter = min_area, color_jitter
        self.coco_json, self.val_coco_json = coco_json, val_coco_json
        self.masks = masks
        train_src, val_src, self.classes = self._sources()
        augment = detection_train_transform(flip=0.5 if cfg.hflip else 0.0, color_jitter=color_jitter)
        self.train_set = DetectionDataset(train_src, cfg.image_size, augment=augment, masks=masks)
        self.val_set = DetectionDataset(val_src, cfg.eval_size or cfg.image_size, masks=masks)

    def _sources(self) -> tuple[Sequence, Sequence, list[str]]:
        cfg = self.cfg
        if cfg.source == "toyworld":
            train = ToyWorldDetection(
                cfg.train_domain, cfg.image_size, cfg.train_count, cfg.seed, min_area=self.min_area
            )
            val = ToyWorldDetection(
                cfg.val_domain, cfg.eval_size or cfg.image_size, cfg.val_count,
                seed=cfg.seed + TOYWORLD_HELDOUT_SEED_OFFSET, min_area=self.min_area,
            )  # fmt: skip
            return train, val, list(ToyWorldDetection.classes)
        if cfg.source != "coco":
            raise ConfigError("data.source: task=detect reads toyworld or a COCO JSON (data.source=coco)")
        if not self.coco_json:
            raise ConfigError("detect.coco_json: required when data.source is 'coco'")
        on_missing = "skip" if cfg.on_bad_image == "skip" else "error"
        train = CocoDetection(
            self.coco_json, cfg.train_root, on_missing_image=on_missing, with_masks=self.masks
        )
        if self.val_coco_json:
            val = CocoDetection(
                self.val_coco_json, cfg.val_root or cfg.train_root, on_missing_image=on_missing,
                with_masks=self.masks,
            )  # fmt: skip
            if val.classes != train.classes:
                raise ConfigError(
                    f"detect.val_coco_json: its categories {val.classes} differ from detect.coco_json's {train.classes}"
                )
            return train, val, list(train.classes)
        train_idx, val_idx = split_indices(len(train), cfg.val_fraction, cfg.seed)
        return Subset(train, train_idx), Subset(train, val_idx), list(train.classes)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, num_workers=workers,
            collate_fn=collate_detection, drop_last=shuffle and len(dataset) > self.cfg.batch_size,
            persistent_workers=workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
