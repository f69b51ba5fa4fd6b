"""What the self-supervised methods share (``anydistill pretrain``): the data, the kNN monitor, the
optimiser, the checkpoint record and the export of the pre-trained backbone.

Each method (:mod:`~anydistill.methods.simclr`, :mod:`~anydistill.methods.moco`,
:mod:`~anydistill.methods.dino`, :mod:`~anydistill.methods.mae`) subclasses
:class:`SelfSupervisedModule` with its views, heads and loss (``ssl_loss``); this module holds no loss.

Data: unlabeled images (``data.source=folder``: every image under ``data.train_root``, class folders or
not; ``toyworld``: object crops rendered on the fly, their labels unused) turned into the method's views
in the loader workers. Validation, once per ``trainer.val_every_n_epochs``:

- with labeled sets (``pretrain.knn_train`` + ``knn_val`` class folders; toyworld's object crops, whose
  labels are the object kinds), DINO's weighted kNN (k = ``knn_k``, T = ``knn_temperature``) of the
  frozen embedding: top-1 on ``knn_val`` with ``knn_train`` as the memory bank, ``val/knn_top1``
  chooses ``best.ckpt`` (as lightly's benchmarks' kNN callback);
- otherwise the method's own loss on a held-out ``data.val_fraction`` of the images (``val/loss``).

After the run, :func:`export_backbone` writes ``backbone.pth`` (timm weights of the best checkpoint's
encoder) into the run folder: ``train model.kwargs.backbone=<name> model.kwargs.pretrained=true
model.kwargs.backbone_checkpoint_path=<run>/backbone.pth`` starts a student from it, and
``distill.frozen_encoder=timm:<name>@<run>/backbone.pth`` aligns to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from anydistill.checkpoints import read_checkpoint
from anydistill.config import DataConfig, OptimConfig, PretrainConfig, TrainConfig
from anydistill.data.classify import ClassFolderDataset, ToyWorldObjects, UnlabeledImages
from anydistill.data.datamodule import split_indices
from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET
from anydistill.data.views import collate_views
from anydistill.errors import ConfigError, DataError, warn
from anydistill.eval.features import knn_predict, topk_accuracy
from anydistill.eval.protocols import EvalCrops
from anydistill.methods.base import MethodRun
from anydistill.models.ssl_heads import EmbeddingEncoder
from anydistill.optim import build_optimizer, build_scheduler

__all__ = [
    "PretrainDataModule",
    "SelfSupervisedModule",
    "build_encoder",
    "check_encoder",
    "export_backbone",
    "ssl_run",
    "BACKBONE_FILE",
]

BACKBONE_FILE = "backbone.pth"


def check_encoder(p: PretrainConfig, image_size: int) -> tuple[EmbeddingEncoder, dict[str, Any]]:
    """The encoder ``p.backbone`` on the ``meta`` device (its kind, width and normalisation) and the timm
    arguments to build it with for ``image_size`` inputs (ViTs: ``img_size``, ``dynamic_img_size``).

    Raises:
        ConfigError: an unknown timm name, or a ViT patch size that does not divide ``image_size``.
    """
    kwargs = dict(p.backbone_kwargs)
    try:
        probe = EmbeddingEncoder.probe(p.backbone, **kwargs)
    except (RuntimeError, TypeError) as exc:  # timm: "Unknown model (...)", a bad keyword
        raise ConfigError(f"pretrain.backbone: {p.backbone!r}: {exc}") from None
    if probe.is_vit:
        kwargs.setdefault("img_size", image_size)
        kwargs.setdefault("dynamic_img_size", True)
        patch = probe.patch_size
        if patch and image_size % patch:
            raise ConfigError(
                f"data.image_size={image_size} is not a multiple of {p.backbone}'s patch size {patch}; "
                f"use {max(patch, round(image_size / patch) * patch)}"
            )
    return probe, kwargs


def build_encoder(p: PretrainConfig, image_size: int) -> EmbeddingEncoder:
    """The timm ``p.backbone`` as a pooled-embedding encoder for ``image_size`` inputs
    (:func:`check_encoder`'s checks first)."""
    _, kwargs = check_encoder(p, image_size)
    return EmbeddingEncoder(p.backbone, **kwargs)


def ssl_run(
    cfg: TrainConfig, module_cls: type[SelfSupervisedModule], views: Callable[..., Any], min_batch: int = 2,
    min_loss_batch: int = 1,
) -> MethodRun:  # fmt: skip
    """The :class:`~anydistill.methods.base.MethodRun` of a self-supervised method: its module, the
    pre-training data with its views (``views(cfg, mean, std)``), the kNN monitor (``val/knn_top1``, max)
    or the held-out loss (``val/loss``, min), and the backbone export. Everything that can be checked
    without building the model is checked first (encoder name and patch, data, batch sizes): ``min_batch``
    is the smallest training batch the method learns from (per device), ``min_loss_batch`` the smallest
    batch its loss is defined on in eval mode (SimCLR's NT-Xent: 2)."""
    probe, _ = check_encoder(cfg.pretrain, cfg.data.image_size)
    mean, std = probe.pixel_mean, probe.pixel_std
    transform = views(cfg, mean, std)
    on_device = None
    if cfg.pretrain.device_augment and hasattr(transform, "crops"):
        # The loader only crops and flips (uint8); colour jitter, grey, blur, solarisation and
        # normalisation run on the batch, on the training device (kornia, per-sample parameters).
        transform, on_device = transform.crops(), transform.batched()
    datamodule = PretrainDataModule(cfg.data, cfg.pretrain, transform, mean, std, min_batch, min_loss_batch)
    knn = datamodule.knn_sets is not None
    module = module_cls(cfg, knn_monitor=knn)
    module.device_views = on_device
    monitor, mode = ("val/knn_top1", "max") if knn else ("val/loss", "min")
    return MethodRun(module, datamodule, monitor, mode, exports=[export_backbone])


#: Below this :func:`embedding_spread` at the end of a run, the embedding has collapsed: a warning says so.
COLLAPSED_SPREAD = 0.05


def embedding_spread(h: Tensor) -> Tensor:
    """How spread out a batch of embeddings is: ``sqrt(D) · mean_d std_b(ĥ_{b,d})`` with ``ĥ = h / ‖h‖``,
    ``h (B, D)`` → a detached scalar: about 1 for directions spread uniformly on the sphere, 0 when every
    image maps to the same direction (the collapse self-supervised training can fall into; lightly's
    ``std_of_l2_normalized``, the collapse criterion of SimSiam, Chen & He 2021, §4.1)."""
    with torch.no_grad():
        z = torch.nn.functional.normalize(h.detach().float(), dim=1)  # (B, D)
        return z.std(dim=0).mean() * z.shape[1] ** 0.5


class SelfSupervisedModule(L.LightningModule):
    """Base of the self-supervised LightningModules: subclasses set ``self.encoder`` (the backbone
    whose embedding is evaluated and exported) and implement :meth:`ssl_loss`.

    Batches: ``{"views": [V tensors (B, 3, h_v, w_v)], ...}`` for training and loss validation; for kNN
    validation ``{"image": (B, 3, S, S), "label": (B,)}`` from two loaders (0: memory bank, 1: queries).
    """

    #: The embedding the kNN monitor and the export use; DINO overrides it with its teacher.
    def embedding_encoder(self) -> EmbeddingEncoder:
        return self.encoder

    def __init__(self, cfg: TrainConfig, knn_monitor: bool) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"method": cfg.method, "pretrain": asdict(cfg.pretrain), "optim": asdict(cfg.optim),
             "image_size": cfg.data.image_size}
        )  # fmt: skip
        self.pretrain_cfg: PretrainConfig = cfg.pretrain
        self.optim_cfg: OptimConfig = cfg.optim
        self.image_size = cfg.data.image_size
        self.knn_monitor = knn_monitor
        self._bank: list[tuple[Tensor, Tensor]] = []
        self._queries: list[tuple[Tensor, Tensor]] = []
        #: ``pretrain.device_augment``: the views' photometric part, applied to each batch on its device
        #: (a plain attribute, not a sub-module: it holds no weights and stays out of checkpoints).
        self.device_views: Any = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.device_views is not None and isinstance(batch, dict) and "views" in batch:
            views = self.device_views.to(batch["views"][0].device)
            batch["views"] = views(batch["views"])
        return batch

    # ------------------------------------------------------------------ the method's part
    def ssl_loss(self, views: list[Tensor]) -> dict[str, Tensor]:
        """``{"loss": scalar, ...other logged terms}`` for a batch of views."""
        raise NotImplementedError

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.ssl_loss(batch["views"])
        n = batch["views"][0].shape[0]
        if "embedding_spread" in out:
            self.last_spread = float(out["embedding_spread"])
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, batch_size=n)
        self.log("loss", out["loss"].detach(), prog_bar=True, logger=False, batch_size=n)
        return out["loss"]

    def on_train_end(self) -> None:
        """Say so when the embedding has collapsed (:func:`embedding_spread` of the last training batch)."""
        spread = getattr(self, "last_spread", None)
        if spread is not None and spread < COLLAPSED_SPREAD and self.trainer.is_global_zero:
            warn(
                f"the embedding collapsed (spread {spread:.3f} of 1 at the last step: every image maps to "
                "nearly the same direction), so the backbone is no better than random; lower optim.lr, or "
                "use the method's usual optimizer (SimCLR / MoCo: optim.optimizer=sgd optim.lr=0.06, "
                "optim.weight_decay=5e-4), or train longer with a warm-up"
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.knn_monitor:
            out = self.ssl_loss(batch["views"])
            self.log("val/loss", out["loss"], batch_size=batch["views"][0].shape[0], sync_dist=True)
            return
        features = self.embedding_encoder()(batch["image"]).float()  # (B, D)
        (self._bank if dataloader_idx == 0 else self._queries).append((features, batch["label"]))

    def on_validation_epoch_end(self) -> None:
        if not self.knn_monitor:
            return
        bank, queries = self._bank, self._queries
        self._bank, self._queries = [], []
        if not bank or not queries:
            return
        bank_f, bank_y = self._gather_labeled(bank)
        query_f, query_y = self._gather_labeled(queries)
        num_classes = int(max(bank_y.max(), query_y.max())) + 1
        scores = knn_predict(  # k at most the bank's size (a small labeled set)
            bank_f, bank_y, query_f, num_classes, k=min(self.pretrain_cfg.knn_k, bank_f.shape[0]),
            temperature=self.pretrain_cfg.knn_temperature,
        )  # fmt: skip
        acc = topk_accuracy(scores, query_y, ks=(1, 5) if num_classes > 5 else (1,))
        self.log_dict({f"val/knn_{k}": float(v) for k, v in acc.items()}, rank_zero_only=True)
        self.log("knn", float(acc["top1"]), prog_bar=True, logger=False, rank_zero_only=True)

    def _gather_labeled(self, pairs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """This rank's ``(features (b, D), labels (b,))`` batches → every rank's, ``(N, D)`` and ``(N,)``.

        Under DDP, ``all_gather`` stacks the ranks' tensors as ``(W, n, ...)`` (the distributed sampler gives
        every rank the same count ``n``, padding with repeats), flattened to ``(W · n, ...)``; on one device
        the tensors are this rank's, concatenated."""
        features = torch.cat([f for f, _ in pairs])  # (n, D)
        labels = torch.cat([y for _, y in pairs])  # (n,)
        if self._trainer is None or self.trainer.world_size == 1:
            return features, labels
        return self.all_gather(features).flatten(0, 1), self.all_gather(labels).flatten(0, 1)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self, self.optim_cfg)
        # inf when only a time budget bounds the run: build_scheduler then waits for ScheduleLength's estimate
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1000
        scheduler, _ = build_scheduler(optimizer, self.optim_cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def total_steps(self) -> int:
        """The run's optimizer steps (for momentum schedules); 1000 outside a Trainer."""
        if self._trainer is None:
            return 1000
        total = self.trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) and total >= 1 else 10**9

    # ------------------------------------------------------------------ checkpoint description
    def model_record(self) -> dict[str, Any]:
        enc = self.embedding_encoder()
        return {
            "format": 1,
            "task": "embed",
            "arch": {
                "backbone": enc.name,
                "backbone_kwargs": dict(enc.timm_kwargs),
                "encoder_prefix": self.encoder_prefix(),
            },  # fmt: skip
            "preprocess": {"mean": list(enc.pixel_mean), "std": list(enc.pixel_std), "size": self.image_size},
            "classes": {},
        }

    def encoder_prefix(self) -> str:
        """Where the exported encoder's weights sit in the module's ``state_dict`` (``"encoder."``)."""
        return "encoder."


def export_backbone(best_checkpoint: Path, run_dir: Path) -> Path:
    """Write the timm weights of the encoder in ``best_checkpoint`` to ``run_dir/backbone.pth``
    (atomically) and return the path."""
    ckpt = read_checkpoint(best_checkpoint)
    record = ckpt.get("anydistill_model") or {}
    arch = record.get("arch") or {}
    prefix = str(arch.get("encoder_prefix", "encoder.")) + "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise DataError(best_checkpoint, f"holds no encoder weights under {prefix!r}")
    out = run_dir / BACKBONE_FILE
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    return out


# ---------------------------------------------------------------------------------------------- data
class _Views(Dataset):
    """Items of ``base`` (``{"image": uint8 (3, H, W), ...}``) with the image replaced by its ``views``."""

    def __init__(self, base: Dataset, views: Any) -> None:
        self.base, self.views = base, views

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        item["image"] = self.views(item["image"])  # a list of views (collate_views stacks them)
        item.pop("label", None)  # self-supervised: labels unused (and absent from unlabeled sets)
        return item


class PretrainDataModule(L.LightningDataModule):
    """Unlabeled images as views for training; labeled sets (kNN monitor) or held-out views for validation.

    Args:
        data: the data section (``source`` toyworld or folder, ``train_root``, ``image_size``, ``batch_size``,
            ``num_workers``, ``val_fraction``, ``train_count``/``val_count`` for toyworld).
        pretrain: the pre-training section (``knn_train``/``knn_val``, ``knn_count``).
        views: the method's view transform (uint8 ``(3, H, W)`` → list of views).
        mean, std: the encoder's normalisation, for the kNN sets.
        min_batch: the smallest training batch the method can learn from, per device (NT-Xent needs 2,
            and so does BatchNorm1d in a head).
        min_loss_batch: the smallest batch the method's loss is defined on (validation on held-out images).

    Batches: training batches are full (``drop_last``) when a device's share of the training images holds
    one, else that share is the one batch of every epoch, so an epoch is never empty; the last batch of the
    held-out loss is left out when smaller than ``min_loss_batch``. A device's share is ``⌈N / world⌉``
    (Lightning's ``DistributedSampler`` pads the shares to one length).

    Raises:
        DataError: fewer training images than ``min_batch``.
        ConfigError: a batch (``data.batch_size``, or the whole training set when smaller) under
            ``min_batch``; fewer held-out images than ``min_loss_batch`` (``data.val_fraction``); under
            DDP, a device's share of the training images under ``min_batch`` (when the loader is made).
    """

    def __init__(
        self, data: DataConfig, pretrain: PretrainConfig, views: Any, mean: tuple[float, ...],
        std: tuple[float, ...], min_batch: int = 2, min_loss_batch: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.data, self.pretrain, self.views = data, pretrain, views
        self.mean, self.std = mean, std
        self.min_batch, self.min_loss_batch = min_batch, min_loss_batch
        unlabeled = self._unlabeled()
        self.knn_sets = self._knn_sets()
        if self.knn_sets is None:
            train_idx, val_idx = split_indices(len(unlabeled), data.val_fraction, data.seed)
            self.train_set: Dataset = _Views(Subset(unlabeled, train_idx), views)
            self.val_sets: list[Dataset] = [_Views(Subset(unlabeled, val_idx), views)] if val_idx else []
        else:
            self.train_set = _Views(unlabeled, views)
            self.val_sets = list(self.knn_sets)
        n = len(self.train_set)  # type: ignore[arg-type]
        if n < max(min_batch, 1):
            raise DataError(
                data.train_root or "toyworld",
                f"{n} training image(s); this method needs at least {min_batch}",
            )
        if min(data.batch_size, n) < min_batch:
            raise ConfigError(
                f"data.batch_size={data.batch_size}: this method compares the images of a batch with each "
                f"other and needs at least {min_batch} per batch"
            )
        held_out = len(self.val_sets[0]) if self.knn_sets is None and self.val_sets else None  # type: ignore[arg-type]
        if held_out is not None and held_out < min_loss_batch:
            raise ConfigError(
                f"data.val_fraction={data.val_fraction} holds out {held_out} of {len(unlabeled)} images "  # type: ignore[arg-type]
                f"to validate on, but this method's loss compares the images of a batch and needs at least "
                f"{min_loss_batch}: hold out more, set data.val_fraction=0 (no validation), or give labeled "
                "pretrain.knn_train and pretrain.knn_val (kNN validation)"
            )

    def _unlabeled(self) -> Dataset:
        d = self.data
        if d.source == "toyworld":
            return ToyWorldObjects(d.train_domain, d.image_size, d.train_count, seed=d.seed)
        if d.source != "folder" or not d.train_root:
            raise ConfigError(
                "data.source: pre-training reads toyworld or a folder of images (data.train_root)"
            )
        return UnlabeledImages(d.train_root)

    def _knn_sets(self) -> tuple[Dataset, Dataset] | None:
        p, d = self.pretrain, self.data
        if d.source == "toyworld" and not (p.knn_train or p.knn_val):
            bank = ToyWorldObjects(d.train_domain, d.image_size, p.knn_count, seed=d.seed + 1)
            query = ToyWorldObjects(
                d.val_domain, d.image_size, d.val_count, seed=d.seed + TOYWORLD_HELDOUT_SEED_OFFSET
            )
        elif p.knn_train or p.knn_val:
            if not (p.knn_train and p.knn_val):
                raise ConfigError("pretrain.knn_train and pretrain.knn_val: give both (or neither)")
            bank = ClassFolderDataset(p.knn_train)
            query = ClassFolderDataset(p.knn_val, classes=bank.classes)
        else:
            return None
        size = d.image_size
        return EvalCrops(bank, size, self.mean, self.std), EvalCrops(query, size, self.mean, self.std)

    def _world(self) -> int:
        """Processes sharing the data: the attached Trainer's world size, else 1."""
        trainer = getattr(self, "trainer", None)
        return max(1, int(trainer.world_size)) if trainer is not None else 1

    def _loader(self, dataset: Dataset, train: bool, collate: Any) -> DataLoader:
        world, batch = self._world(), self.data.batch_size
        share = math.ceil(len(dataset) / world)  # type: ignore[arg-type]  # this device's images
        if train:
            if min(batch, share) < self.min_batch:
                raise ConfigError(
                    f"data.batch_size={batch} on {world} devices: each device gets {share} of the "
                    f"{len(dataset)} training images, fewer than the {self.min_batch} this method needs per "  # type: ignore[arg-type]
                    "batch; use fewer devices or more images"
                )
            drop_last = share >= batch  # full batches; a share smaller than a batch is one batch, never none
        else:
            last = share % batch
            drop_last = self.knn_sets is None and share > batch and 0 < last < self.min_loss_batch
        workers = self.data.num_workers
        return DataLoader(
            dataset, batch_size=batch, shuffle=train, drop_last=drop_last, num_workers=workers,
            persistent_workers=workers > 0, collate_fn=collate,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, collate_views)

    def val_dataloader(self) -> list[DataLoader]:
        collate = None if self.knn_sets is not None else collate_views
        return [self._loader(ds, False, collate) for ds in self.val_sets]
