"""Build train/val datasets and loaders from a :class:`~anydistill.config.DataConfig`.

Two sources share every code path after loading: the procedural ``toyworld`` (rendered on the fly,
nothing on disk) and a user ``folder`` in the format of DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from anydistill.config import DataConfig, DistillConfig, PromptConfig
from anydistill.data.folder import FolderDataset
from anydistill.data.io import read_classes
from anydistill.data.toyworld import ToyWorldDataset, class_table
from anydistill.data.transforms import collate_samples, eval_transforms, train_transforms
from anydistill.errors import ConfigError

# The validation/test split of toyworld uses seeds far from any training seed, so no scene repeats.
TOYWORLD_HELDOUT_SEED_OFFSET = 10_000


@dataclass
class ClassInfo:
    """Names and colours of the semantic classes (from toyworld or ``classes.json``)."""

    names: list[str] = field(default_factory=list)
    colors: list[list[int]] = field(default_factory=list)
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def from_table(cls, table: list[dict], ignore_index: int = 255) -> ClassInfo:
        """From the ``classes.json`` layout: ``[{"id", "name", "color"}, ...]`` (ids must be 0..K-1)."""
        table = sorted(table, key=lambda c: c["id"])
        ids = [c["id"] for c in table]
        if ids != list(range(len(ids))):
            raise ConfigError(f"class ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        return cls([c["name"] for c in table], [list(c.get("color", [0, 0, 0])) for c in table], ignore_index)


def class_info(cfg: DataConfig) -> ClassInfo:
    """The class table of the configured data: toyworld's, or the train folder's ``classes.json``."""
    if cfg.source == "toyworld":
        return ClassInfo.from_table(class_table())
    table = read_classes(Path(cfg.train_root))
    if not table:
        return ClassInfo()
    return ClassInfo.from_table(table["classes"], ignore_index=table.get("ignore_index", 255))


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
                raise ConfigError(f"data.{key}={value} must be a multiple of the model's input multiple {input_multiple}")
        self.train_tf = train_transforms(size, input_multiple, scale=tuple(cfg.crop_scale), hflip=cfg.hflip)
        self.eval_tf = eval_transforms(eval_size, input_multiple)
        self.train_set, self.val_set = self._build()
        self.classes = self._classes()

    def _build(self) -> tuple[Dataset, Dataset]:
        cfg = self.cfg
        eval_size = cfg.eval_size or cfg.image_size
        if cfg.source == "toyworld":
            train = ToyWorldDataset(cfg.train_domain, cfg.image_size, cfg.train_count, seed=cfg.seed, transform=self.train_tf)
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


class DistillDataModule(SupervisedDataModule):
    """Labeled batches (as :class:`SupervisedDataModule`) plus pseudo-labeled batches from the
    teacher-pass cache, ``distill.unlabeled_ratio`` times larger (Depth Anything: 1:2).

    ``train_dataloader`` returns a Lightning ``CombinedLoader`` yielding
    ``{"labeled": batch, "unlabeled": batch}`` (``max_size_cycle``: an epoch is the longer of the
    two; the shorter one cycles). The unlabeled samples carry the teacher's ``disparity`` (depth) or
    ``logits`` (semantic) through the same joint transforms as labels.
    """

    def __init__(self, cfg: DataConfig, distill: DistillConfig, task: str, input_multiple: int = 32) -> None:
        super().__init__(cfg, task, input_multiple)
        from anydistill.cache import PseudoLabelDataset

        self.distill = distill
        self.unlabeled_set = PseudoLabelDataset(distill.cache, transform=self.train_tf)

    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader

        workers = self.cfg.num_workers
        loaders = {
            "unlabeled": DataLoader(
                self.unlabeled_set,
                batch_size=self.cfg.batch_size * self.distill.unlabeled_ratio,
                shuffle=True,
                drop_last=len(self.unlabeled_set) >= self.cfg.batch_size * self.distill.unlabeled_ratio,
                num_workers=workers,
                persistent_workers=workers > 0,
                collate_fn=collate_samples,
            )
        }
        if self.distill.use_labeled:
            loaders["labeled"] = super().train_dataloader()
        return CombinedLoader(loaders, mode="max_size_cycle")


class InstanceDataModule(L.LightningDataModule):
    """Images with object instances for promptable segmentation (``task=promptable``).

    Sources: ``toyworld`` (instance ids rendered on the fly), a ``folder`` (``instances/`` PNGs beside
    ``images/``) or ``coco`` (``prompt.coco_json`` over images in ``data.train_root``). Images are resized
    to longest side ``image_size`` (the model's ``img_size``) and padded, SAM's pre-processing; the
    validation subset of objects is fixed, so validation metrics are comparable across epochs.

    Args:
        cfg: the data section of the config.
        prompt: the prompt section (``max_instances``, ``min_area``, ``coco_json``, ``val_coco_json``,
            ``val_instances``).
    """

    def __init__(self, cfg: DataConfig, prompt: PromptConfig) -> None:
        super().__init__()
        self.cfg, self.prompt = cfg, prompt
        self.train_set, self.val_set = self._build()

    def _sources(self) -> tuple[Sequence, Sequence]:
        from anydistill.data.instances import CocoInstances, FolderInstances, ToyWorldInstances

        cfg, prompt = self.cfg, self.prompt
        if cfg.source == "toyworld":
            train = ToyWorldInstances(cfg.train_domain, cfg.image_size, cfg.train_count, seed=cfg.seed)
            val = ToyWorldInstances(
                cfg.val_domain, cfg.eval_size or cfg.image_size, cfg.val_count,
                seed=cfg.seed + TOYWORLD_HELDOUT_SEED_OFFSET,
            )  # fmt: skip
            return train, val
        if cfg.source == "coco":
            train = CocoInstances(prompt.coco_json, cfg.train_root)
            if prompt.val_coco_json:
                return train, CocoInstances(prompt.val_coco_json, cfg.val_root or cfg.train_root)
        else:
            train = FolderInstances(cfg.train_root, cfg.on_missing_label, cfg.on_bad_image)
            if cfg.val_root:
                return train, FolderInstances(cfg.val_root, cfg.on_missing_label, cfg.on_bad_image)
        train_idx, val_idx = split_indices(len(train), cfg.val_fraction, cfg.seed)
        return Subset(train, train_idx), Subset(train, val_idx)

    def _build(self) -> tuple[Dataset, Dataset]:
        from anydistill.data.instances import InstanceDataset

        train_src, val_src = self._sources()
        p, size = self.prompt, self.cfg.image_size
        train = InstanceDataset(train_src, size, p.max_instances, p.min_area, sampling="random", seed=self.cfg.seed)
        val = InstanceDataset(val_src, size, p.val_instances, p.min_area, sampling="fixed", seed=self.cfg.seed)
        return train, val

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        from anydistill.data.instances import collate_instances

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


class SamInputTransform:
    """A pseudo-label-cache sample → SAM's input frame: ``image`` uint8 ``(3, S, S)`` (longest side ``S``,
    zero-padded), ``input_size`` ``(2,)``, ``feat`` float ``(C, S/16, S/16)`` (the cached teacher
    embedding), ``id``. Picklable, for DataLoader workers."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: dict) -> dict:
        import torch

        from anydistill.data.instances import resize_longest_side

        image, _, (h, w) = resize_longest_side(sample["image"], np.zeros((0, 1, 1), bool), self.size)
        return {
            "image": image,
            "input_size": torch.tensor([h, w]),
            "feat": torch.from_numpy(sample["feat"]),
            "id": sample["id"],
        }


class SamDistillDataModule(InstanceDataModule):
    """Unlabeled images + cached SAM teacher embeddings (``distill.cache``) for training; validation on
    labeled instances (as :class:`InstanceDataModule`) by the interactive protocol."""

    def __init__(
        self, cfg: DataConfig, prompt: PromptConfig, cache: str, teacher_fingerprint: str | None = None
    ) -> None:
        from anydistill.cache import PseudoLabelDataset

        super().__init__(cfg, prompt)
        self.unlabeled = PseudoLabelDataset(
            cache, transform=SamInputTransform(cfg.image_size), teacher_fingerprint=teacher_fingerprint, features=True
        )

    def train_dataloader(self) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            self.unlabeled, batch_size=self.cfg.batch_size, shuffle=True, num_workers=workers,
            drop_last=len(self.unlabeled) > self.cfg.batch_size, persistent_workers=workers > 0,
        )  # fmt: skip
