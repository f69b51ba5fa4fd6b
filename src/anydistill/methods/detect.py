"""Supervised training of an object-detection student on boxes (``task=detect``).

The detector (:mod:`anydistill.models.detection`: torchvision's RetinaNet, FCOS, Faster R-CNN or Mask
R-CNN over a timm backbone) computes its own losses from the targets; the step sums them (torchvision's
weighting: RetinaNet classification + box regression, both normalised by the number of positive
anchors). A RetinaNet student's classification loss is the config's ``detect.classification_loss``
(:mod:`anydistill.losses.detection`: focal, or cross-entropy with or without hard-negative mining, for
the focal-loss ablation). Validation runs the detector's own post-processing (score threshold, NMS,
top-100) and COCO box mAP in the source images' pixels (:mod:`anydistill.eval.detection`);
``best.ckpt`` is chosen on ``val/map``.

Distillation (``anydistill distill``, method ``detect_distill``), autodistill's loop done as the rest of
this toolkit does it: the box teacher labels the unlabeled images once (``anydistill pseudo-label --task
detect``: batched, sharded, resumable, every detection down to a low score), and the student trains on
:class:`PseudoBoxes` (score threshold and class-wise NMS chosen here, at training time) under strong
perturbations, with the labeled images beside them; validation on labeled images, as above.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset
from torchvision.ops import batched_nms
from torchvision.transforms import v2

from anydistill.cache import PseudoLabelDataset
from anydistill.cache.masks import rle_arrays_to_masks
from anydistill.config import DetectConfig, OptimConfig, TrainConfig
from anydistill.data.classes import ClassInfo
from anydistill.data.datamodule import DetectionDataModule
from anydistill.data.detection import DetectionDataset, DetectionRecord
from anydistill.errors import ConfigError, DataError
from anydistill.eval.detection import DETECTION_KEYS, DetectionMetrics
from anydistill.loading import model_record
from anydistill.losses.detection import DenseClassificationLoss
from anydistill.methods.base import MethodRun, register_method
from anydistill.models import build_model, list_models
from anydistill.models.detection import DetectionModel
from anydistill.optim import build_optimizer, build_scheduler

__all__ = [
    "DetectionDistillDataModule",
    "DetectionModule",
    "PseudoBoxes",
    "build_detection_distill",
    "build_detection_method",
    "strong_perturbation",
]


class DetectionModule(L.LightningModule):
    """LightningModule for ``task=detect`` on :func:`~anydistill.data.detection.collate_detection`
    batches (``image`` uint8 ``(B, 3, S, S)``, ``targets`` a list of B dicts ``boxes (N, 4)``, ``labels
    (N,)``, ``iscrowd (N,)``, ``scale (B, 2)``).

    Args:
        model_name: a detection model of the zoo (``det_tiny``, ``det_small``, ``det_tiny_fcos``, …).
        model_kwargs: builder overrides.
        class_names: the K class names (labels ``0 … K-1``).
        image_size: the detector's input size (the data's longest side).
        detect: the loss choice (``classification_loss``, ``focal_alpha``, ``focal_gamma``, ``neg_pos_ratio``).
        optim: optimiser and schedule.
    """

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict[str, Any] | None,
        class_names: list[str],
        image_size: int,
        detect: DetectConfig | None = None,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__()
        detect = detect or DetectConfig()
        self.optim_cfg = optim or OptimConfig()
        self.save_hyperparameters({
            "model_name": model_name, "model_kwargs": dict(model_kwargs or {}), "class_names": list(class_names),
            "image_size": int(image_size), "detect": asdict(detect), "optim": asdict(self.optim_cfg),
        })  # fmt: skip
        self.classes = ClassInfo(list(class_names))
        kwargs = {**dict(model_kwargs or {}), "num_classes": len(class_names), "input_size": int(image_size)}
        try:
            model = build_model(model_name, **kwargs)
        except TypeError as exc:
            ours = ", ".join(n for n in list_models() if n.startswith("det_"))
            raise ConfigError(
                f"model.name={model_name!r} with model.kwargs={model_kwargs}: not a detection model, or a kwarg "
                f"it does not take ({exc}); task=detect takes {ours}"
            ) from None
        if not isinstance(model, DetectionModel):
            ours = ", ".join(n for n in list_models() if n.startswith("det_"))
            raise ConfigError(f"model.name={model_name!r} is not a detection model; task=detect takes {ours}")
        self.model = model
        if model.arch == "retinanet":
            if detect.classification_loss != "focal" or (detect.focal_alpha, detect.focal_gamma) != (
                0.25,
                2.0,
            ):
                model.set_classification_loss(DenseClassificationLoss(
                    detect.classification_loss, detect.focal_alpha, detect.focal_gamma, detect.neg_pos_ratio))  # fmt: skip
        elif detect.classification_loss != "focal":
            raise ConfigError(
                f"detect.classification_loss={detect.classification_loss!r} is for retinanet students, not {model.arch}"
            )
        self.val_metrics = DetectionMetrics(masks=self.needs_masks)

    @property
    def needs_masks(self) -> bool:
        """Whether the student learns instance masks (Mask R-CNN): its data must carry them."""
        return self.model.arch == "mask_rcnn"

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        """``images`` uint8 or [0, 1] ``(B, 3, S, S)`` → per image ``boxes``, ``scores``, ``labels`` (eval)."""
        return self.model(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.model(batch["image"], batch["targets"])
        total = sum(losses.values())
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=bs)
        self.log("train/loss", total.detach(), batch_size=bs)
        self.log("loss", total.detach(), prog_bar=True, logger=False, batch_size=bs)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(self.model(batch["image"]), batch)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        keys = [*DETECTION_KEYS, *(f"mask_{k}" for k in DETECTION_KEYS if self.needs_masks)]
        self.log_dict({f"val/{k}": values[k] for k in keys}, sync_dist=True)
        self.log("map", values["map"], prog_bar=True, logger=False)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW, the backbone at ``lr · backbone_lr_mult``; warm-up + cosine over the run."""
        optimizer = build_optimizer(self, self.optim_cfg, encoder=self.model.backbone)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1000
        scheduler, _ = build_scheduler(optimizer, self.optim_cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def model_record(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild the student (builder, pre-processing, class names)."""
        kwargs = {**self.hparams["model_kwargs"], "input_size": self.hparams["image_size"]}
        arch = {
            "model_name": self.hparams["model_name"],
            "model_kwargs": kwargs,
            "num_classes": len(self.classes.names),
        }
        return model_record("detect", self.model.preprocess_spec(), arch, self.classes)


@register_method("detect", verbs=("train",), tasks=("detect",))
def build_detection_method(cfg: TrainConfig) -> MethodRun:
    """Supervised training of a detection student on boxes (toyworld or a COCO JSON)."""
    d = cfg.detect
    datamodule = DetectionDataModule(cfg.data, d.min_area, d.color_jitter, d.coco_json, d.val_coco_json)
    name = (
        cfg.model.name if cfg.model.name != "depth_tiny" else "det_tiny"
    )  # the config's default model is depth's
    module = DetectionModule(name, cfg.model.kwargs, datamodule.classes, cfg.data.image_size, d, cfg.optim)
    if module.needs_masks:  # the classes come from the data, the need for masks from the model
        datamodule = DetectionDataModule(
            cfg.data, d.min_area, d.color_jitter, d.coco_json, d.val_coco_json, masks=True
        )
    return MethodRun(module, datamodule, "val/map", "max")


# ------------------------------------------------------------------------------------- distillation
class PseudoBoxes:
    """A box teacher's cached detections as detection records: score ≥ ``score``, class-wise NMS at IoU
    ``nms`` (torchvision's ``batched_nms``), teacher labels renamed to the student's classes by name
    (detections of classes the student does not have are dropped). A box-and-mask teacher's cached masks
    (COCO RLE) come with the kept boxes, decoded only when the student asks for masks.

    Args:
        cache: a :class:`~anydistill.cache.PseudoLabelDataset` over a ``task=detect`` cache.
        classes: the student's class names.
        score, nms: the thresholds (applied here, at training time).

    Raises:
        DataError: the cache is not a box teacher's, or none of its classes is one of ``classes``.
    """

    def __init__(
        self, cache: PseudoLabelDataset, classes: list[str], score: float = 0.3, nms: float = 0.5
    ) -> None:
        manifest = cache.manifest
        root = Path(manifest.image_root)
        if manifest.task != "detect":
            raise DataError(
                root, f"distill.cache holds a {manifest.task!r} teacher's targets, not boxes (task=detect)"
            )
        teacher = list(manifest.classes or [])
        shared = [c for c in teacher if c in classes]
        if not shared:
            raise DataError(
                root, f"the box teacher's classes {teacher} share none with the student's {classes}"
            )
        self.lut = torch.tensor([classes.index(c) if c in classes else -1 for c in teacher], dtype=torch.long)
        self.cache, self.score, self.nms = cache, float(score), float(nms)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> DetectionRecord:
        sample = self.cache[index]
        boxes = torch.from_numpy(sample["boxes"]).reshape(-1, 4)  # (N, 4)
        scores = torch.from_numpy(sample["scores"]).reshape(-1)  # (N,)
        labels = self.lut[torch.from_numpy(sample["labels"]).reshape(-1)]  # (N,) student labels, -1: none
        keep = (
            (scores >= self.score) & (labels >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        )
        index = torch.nonzero(keep).flatten()  # (n,) rows of the cache's arrays
        kept = batched_nms(boxes[index], scores[index], labels[index], self.nms)
        index = index[kept].numpy()
        decode = None
        if "mask_rle" in sample:
            rle, lengths, hw = sample["mask_rle"], sample["mask_rle_lengths"], sample["image"].shape[:2]

            def decode(rows: np.ndarray) -> np.ndarray:
                return rle_arrays_to_masks(rle, lengths, hw, index[rows])

        return DetectionRecord(sample["image"], str(sample["id"]), boxes[index].numpy(), labels[index].numpy(),
                               decode_masks=decode)  # fmt: skip

    @property
    def has_masks(self) -> bool:
        """Whether the teacher cached instance masks."""
        return "mask_rle" in self.cache.manifest.targets


def strong_perturbation(color_jitter: float = 0.4) -> v2.Compose:
    """The unlabeled images' perturbation (Depth Anything's, without CutMix): flip, colour jitter with
    probability 0.8 (twice the labeled images' strength) and a Gaussian blur with probability 0.5."""
    return v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(2 * color_jitter, 2 * color_jitter, 2 * color_jitter, color_jitter / 2)], p=0.8),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.5),
    ])  # fmt: skip


class DetectionDistillDataModule(DetectionDataModule):
    """The labeled detection data (:class:`DetectionDataModule`, validation included) plus the box
    teacher's pseudo-labeled images, in one shuffled training set."""

    def __init__(self, cfg: TrainConfig, masks: bool = False) -> None:
        d = cfg.detect
        super().__init__(cfg.data, d.min_area, d.color_jitter, d.coco_json, d.val_coco_json, masks=masks)
        if not cfg.distill.cache:
            raise ConfigError(
                "distill.cache: the box teacher's cache is required (make it with anydistill pseudo-label --task detect)"
            )
        pseudo = PseudoBoxes(
            PseudoLabelDataset(cfg.distill.cache), list(self.classes), d.pseudo_score, d.pseudo_nms
        )
        if masks and not pseudo.has_masks:
            raise DataError(
                cfg.distill.cache, "holds boxes but no masks, and a mask_rcnn student needs both: make the "
                "cache with anydistill pseudo-label --task detect --mask-teacher <SAM checkpoint>",
            )  # fmt: skip
        augment = strong_perturbation(d.color_jitter) if cfg.distill.perturb else self.train_set.augment
        unlabeled = DetectionDataset(pseudo, cfg.data.image_size, augment=augment, masks=masks)
        self.pseudo_set = unlabeled
        self.train_set = ConcatDataset([self.train_set, unlabeled]) if cfg.distill.use_labeled else unlabeled


@register_method("detect_distill", verbs=("distill",), tasks=("detect",))
def build_detection_distill(cfg: TrainConfig) -> MethodRun:
    """A detection student from a box teacher's cached boxes (plus the labeled images)."""
    datamodule = DetectionDistillDataModule(cfg)
    name = cfg.model.name if cfg.model.name != "depth_tiny" else "det_tiny"
    module = DetectionModule(
        name, cfg.model.kwargs, datamodule.classes, cfg.data.image_size, cfg.detect, cfg.optim
    )
    if module.needs_masks:  # a Mask R-CNN student: instance masks from the labeled data and the cache
        datamodule = DetectionDistillDataModule(cfg, masks=True)
    return MethodRun(module, datamodule, "val/map", "max")
