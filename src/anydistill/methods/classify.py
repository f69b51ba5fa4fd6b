"""Image classification (``task: classify``): a timm classifier student trained on labeled images, with
or without a teacher's cached logits (the ``kd`` method, :mod:`anydistill.methods.kd`, adds them).

``anydistill train --task classify``: cross-entropy with ``loss.label_smoothing`` on class-folder images
(or toyworld object crops) under the standard augmentation (:mod:`anydistill.data.classify_sets`:
pad-and-crop + flip at CIFAR sizes, a random resized crop + flip above); validation top-1 (``val/top1``)
chooses ``best.ckpt``, top-5 is logged beside it (when there are 5 classes or more).

One training step of :class:`ClassifyModule` (``B`` labeled images, ``B_u`` unlabeled ones with KD):

1. soft targets ``q = softmax(z_t / T)`` from the cached teacher logits ``z_t (B, K)``, labels as
   one-hot ``y (B, K)``;
2. CutMix with probability ``classify.cutmix_p`` per image (partner: the previous image of the batch, ``roll(1)``): the
   pasted box's area fraction ``λ`` mixes ``q`` and ``y`` as it mixes the pixels;
3. labeled and unlabeled images go through the student in one batch ``(B + B_u, 3, S, S)`` → ``(B + B_u, K)``;
4. ``L = [α · T² · KL(q ‖ p_T) + (1 − α) · CE(z, ỹ)]_labeled + w_u · [T² · KL(q ‖ p_T)]_unlabeled``
   (:func:`~anydistill.losses.classify_kd.classification_kd_loss`; without a teacher, ``CE`` alone).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from anydistill.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from anydistill.data.classes import ClassInfo
from anydistill.data.classify_sets import ClassifySets, classify_sets
from anydistill.data.perturb import CutMix
from anydistill.errors import ConfigError
from anydistill.loading import model_record
from anydistill.losses.classify_kd import ClassificationKDLoss, soft_targets
from anydistill.methods.base import MethodRun, register_method
from anydistill.models import DEFAULT_CLASSIFY_STUDENT, build_classifier, list_models
from anydistill.optim import build_optimizer, build_scheduler

__all__ = ["ClassifyDataModule", "ClassifyModule", "classify_model_name", "classify_module"]

#: CutMix box areas for classification (Yun et al. draw λ ~ U(0, 1); the ends are no mix at all).
CUTMIX_AREA = (0.05, 0.95)


def classify_model_name(name: str) -> str:
    """The timm classifier ``model.name`` means for ``task: classify``: :data:`DEFAULT_CLASSIFY_STUDENT`
    when left at the config's (dense) default, else a timm model name.

    Raises:
        ConfigError: a dense zoo model, or a name timm does not know.
    """
    if name == ModelConfig().name:
        return DEFAULT_CLASSIFY_STUDENT
    if name in list_models():
        raise ConfigError(
            f"model.name={name!r} is a dense model; task=classify takes a timm classifier name "
            f"(e.g. {DEFAULT_CLASSIFY_STUDENT}, resnet18, mobilenetv4_conv_small)"
        )
    if not timm.is_model(name):
        raise ConfigError(f"model.name={name!r}: not a timm model name (timm.list_models() lists them)")
    return name


class ClassifyModule(L.LightningModule):
    """A timm classifier student; batches of labeled (and optionally unlabeled) images (module docstring).

    Batches: ``{"image": float (B, 3, S, S) in [0, 1], "label": int64 (B,), "teacher"?: (B, K) logits}``,
    or with unlabeled images ``{"labeled": that, "unlabeled": {"image", "teacher"}}``.

    Args:
        model_name: a timm model name.
        classes: the class names (``K`` of them; stored in the checkpoint).
        model_kwargs: :func:`~anydistill.models.build_classifier` keywords (``pretrained``,
            ``backbone_checkpoint_path``, timm keywords).
        optim: optimiser and schedule.
        image_size: ``S``, stored in the checkpoint's pre-processing.
        label_smoothing: ``ε`` of the cross-entropy.
        temperature, alpha: ``T`` and ``α`` of the KD term (used when batches carry teacher logits).
        unlabeled_weight: ``w_u``.
        cutmix_p: probability of CutMix per image (0: off).
    """

    def __init__(
        self,
        model_name: str,
        classes: list[str],
        model_kwargs: dict[str, Any] | None = None,
        optim: OptimConfig | None = None,
        image_size: int = 32,
        label_smoothing: float = 0.0,
        temperature: float = 4.0,
        alpha: float = 0.9,
        unlabeled_weight: float = 1.0,
        cutmix_p: float = 0.0,
    ) -> None:
        super().__init__()
        self.optim_cfg = optim or OptimConfig()
        self.save_hyperparameters(
            {"task": "classify", "model_name": model_name, "model_kwargs": dict(model_kwargs or {}),
             "num_classes": len(classes), "class_names": list(classes), "optim": asdict(self.optim_cfg),
             "image_size": image_size, "label_smoothing": label_smoothing, "temperature": temperature,
             "alpha": alpha, "unlabeled_weight": unlabeled_weight, "cutmix_p": cutmix_p}
        )  # fmt: skip
        self.classes = list(classes)
        self.num_classes = len(classes)
        self.image_size = image_size
        self.model = build_classifier(model_name, self.num_classes, **dict(model_kwargs or {}))
        self.loss = ClassificationKDLoss(temperature, alpha, label_smoothing)
        self.unlabeled_weight = unlabeled_weight
        self.cutmix = CutMix(p=cutmix_p, area=CUTMIX_AREA) if cutmix_p > 0 else None
        self.val_top1 = MulticlassAccuracy(num_classes=self.num_classes, top_k=1, average="micro")
        self.top5 = self.num_classes > 5  # with 5 classes top-5 is always 1
        self.val_top5 = MulticlassAccuracy(
            num_classes=self.num_classes, top_k=min(5, self.num_classes), average="micro"
        )

    def forward(self, image01: Tensor) -> Tensor:
        """``image01 (B, 3, S, S)`` in [0, 1] → logits ``(B, K)``."""
        return self.model(self.model.normalize(image01))

    # ------------------------------------------------------------------ targets
    def _targets(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(image (B, 3, S, S), q (B, K) or None, y (B, K) or None)``, CutMixed when on."""
        image = batch["image"]
        q = soft_targets(batch["teacher"], self.loss.temperature) if "teacher" in batch else None
        y = F.one_hot(batch["label"], self.num_classes).float() if "label" in batch else None  # (B, K)
        if self.cutmix is not None:
            b, _, h, w = image.shape
            mask = self.cutmix.sample_boxes(b, h, w, device=image.device)  # (B, 1, H, W)
            lam = mask.float().mean(dim=(1, 2, 3))[:, None]  # (B, 1): area pasted from the partner
            image = self.cutmix.mix(image, image.roll(1, dims=0), mask)  # partner = the next image
            q = None if q is None else (1 - lam) * q + lam * q.roll(1, dims=0)  # (B, K)
            y = None if y is None else (1 - lam) * y + lam * y.roll(1, dims=0)  # (B, K)
        return image, q, y

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labeled = batch.get("labeled", batch)
        unlabeled = batch.get("unlabeled")
        image, q, y = self._targets(labeled)
        n = image.shape[0]
        if unlabeled is not None:
            image_u, q_u, _ = self._targets(unlabeled)
            image = torch.cat([image, image_u])  # (B + B_u, 3, S, S): one pass, one set of BN statistics
        logits = self(image)  # (B + B_u, K)
        logs: dict[str, Tensor] = {}
        total = self.loss(logits[:n], q, y)
        logs["train/labeled"] = total.detach()
        if unlabeled is not None:
            kd_u = self.loss(logits[n:], q_u, None)  # KD alone
            logs["train/unlabeled_kd"] = kd_u.detach()
            total = total + self.unlabeled_weight * kd_u
        logs["train/loss"] = total.detach()
        self.log_dict(logs, batch_size=n)
        self.log("loss", total.detach(), prog_bar=True, logger=False, batch_size=n)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"]).float()  # (B, K)
        label = batch["label"]
        n = label.shape[0]
        self.log("val/loss", F.cross_entropy(logits, label), batch_size=n, sync_dist=True)
        self.val_top1(logits, label)
        self.log("val/top1", self.val_top1, batch_size=n)
        self.log("top1", self.val_top1, prog_bar=True, logger=False, batch_size=n)
        if self.top5:
            self.val_top5(logits, label)
            self.log("val/top5", self.val_top5, batch_size=n)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self, self.optim_cfg)
        # inf when only a time budget bounds the run: build_scheduler then waits for ScheduleLength's estimate
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1000
        scheduler, _ = build_scheduler(optimizer, self.optim_cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint description
    def model_record(self) -> dict[str, Any]:
        """What :func:`anydistill.loading.load_model` rebuilds the classifier from."""
        arch = {k: self.hparams[k] for k in ("model_name", "model_kwargs", "num_classes")}
        return model_record(
            "classify", self.model.preprocess_spec(self.image_size), arch, ClassInfo(self.classes)
        )


class ClassifyDataModule(L.LightningDataModule):
    """Labeled batches (+ unlabeled ones ``unlabeled_ratio`` times larger, through a ``CombinedLoader``
    yielding ``{"labeled", "unlabeled"}``, ``max_size_cycle``) and the validation set.

    Args:
        data: the data section (``batch_size``, ``num_workers``).
        train, val: labeled datasets (items ``{"image", "label", "id"}``, plus ``"teacher"`` for KD).
        unlabeled: optional unlabeled dataset (items ``{"image", "teacher", "id"}``).
        unlabeled_ratio: unlabeled batch size / labeled batch size.
    """

    def __init__(
        self, data: DataConfig, train: Dataset, val: Dataset | None, unlabeled: Dataset | None = None,
        unlabeled_ratio: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.data, self.train_set, self.val_set = data, train, val
        self.unlabeled_set, self.unlabeled_ratio = unlabeled, unlabeled_ratio

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        workers = self.data.num_workers
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=train, drop_last=train and len(dataset) >= batch_size,  # type: ignore[arg-type]
            num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        labeled = self._loader(self.train_set, self.data.batch_size, True)
        if self.unlabeled_set is None:
            return labeled
        unlabeled = self._loader(self.unlabeled_set, self.data.batch_size * self.unlabeled_ratio, True)
        return CombinedLoader({"labeled": labeled, "unlabeled": unlabeled}, mode="max_size_cycle")

    def val_dataloader(self) -> list[DataLoader]:
        return [] if self.val_set is None else [self._loader(self.val_set, self.data.batch_size, False)]


def classify_module(cfg: TrainConfig, classes: list[str]) -> ClassifyModule:
    """The :class:`ClassifyModule` a config describes (``model.*``, ``loss.label_smoothing``,
    ``classify.*``, ``distill.unlabeled_weight``)."""
    c = cfg.classify
    return ClassifyModule(
        classify_model_name(cfg.model.name), classes, dict(cfg.model.kwargs), cfg.optim, cfg.data.image_size,
        cfg.loss.label_smoothing, c.temperature, c.alpha, cfg.distill.unlabeled_weight, c.cutmix_p,
    )  # fmt: skip


@register_method("classify", verbs=("train",), tasks=("classify",))
def build_classify(cfg: TrainConfig) -> MethodRun:
    """Supervised image classification: a timm classifier, cross-entropy, validation top-1 / top-5."""
    classify_model_name(cfg.model.name)  # a bad name fails before the data is listed
    sets: ClassifySets = classify_sets(cfg.data)
    module = classify_module(cfg, sets.classes)
    return MethodRun(module, ClassifyDataModule(cfg.data, sets.train, sets.val), "val/top1", "max")
