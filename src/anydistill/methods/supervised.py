"""Supervised training of a depth or semantic-segmentation student (the labeled half of every recipe).

Depth follows Depth Anything's relative-depth training: the model predicts affine-invariant
*disparity*; the target is ``1 / depth`` on valid pixels; the loss is the scale-and-shift-invariant
loss plus multi-scale gradient matching (MiDaS). Semantic segmentation uses cross-entropy with an
ignore index (+ optional dice).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from anydistill.config import LossConfig, OptimConfig, TrainConfig
from anydistill.data.classes import ClassInfo, class_info
from anydistill.data.datamodule import SupervisedDataModule
from anydistill.errors import ConfigError, DataError
from anydistill.eval.metrics import DepthMetrics, SegmentationMetrics
from anydistill.loading import model_record
from anydistill.losses import (
    GradientMatchingLoss,
    ScaleShiftInvariantLoss,
    SegmentationCrossEntropy,
    SoftmaxDiceLoss,
    depth_to_disparity,
)
from anydistill.methods.base import MethodRun, register_method
from anydistill.methods.grid import PredictionGrid
from anydistill.models import DepthModel, SegmentationModel, build_model, list_models
from anydistill.optim import build_optimizer, build_scheduler


class SupervisedModule(L.LightningModule):
    """LightningModule for ``task in {"depth", "semantic"}`` on labeled batches.

    Args:
        task: "depth" or "semantic".
        model_name: a name from the model zoo.
        model_kwargs: builder overrides (e.g. ``{"backbone": "resnet18"}``).
        num_classes: classes for "semantic".
        loss: loss weights and settings.
        optim: optimiser and schedule.
        ignore_index: label ignored by the segmentation loss and metrics.
        class_names, class_colors: optional, stored with the checkpoint for reports and predictions.
        eval_size: the long side predictions are made at (stored in the checkpoint's pre-processing).
    """

    def __init__(
        self,
        task: str,
        model_name: str,
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        loss: LossConfig | None = None,
        optim: OptimConfig | None = None,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
        eval_size: int = 256,
    ) -> None:
        super().__init__()
        loss = loss or LossConfig()
        self.optim_cfg = optim or OptimConfig()
        # Plain data only (checkpoints are read weights-only): the typed sections as dicts.
        self.save_hyperparameters(
            {
                "task": task, "model_name": model_name, "model_kwargs": dict(model_kwargs or {}),
                "num_classes": num_classes, "loss": asdict(loss), "optim": asdict(self.optim_cfg),
                "ignore_index": ignore_index, "class_names": class_names, "class_colors": class_colors,
                "eval_size": eval_size,
            }
        )  # fmt: skip
        self.task = task
        self.classes = ClassInfo(list(class_names or []), [list(c) for c in class_colors or []], ignore_index)
        self.eval_size = eval_size
        kwargs = dict(model_kwargs or {})
        if task == "semantic":
            if not num_classes:
                raise ValueError("semantic segmentation needs num_classes")
            kwargs["num_classes"] = num_classes
        self.model: nn.Module = _build_for_task(task, model_name, kwargs, dict(model_kwargs or {}))
        if task == "depth":
            self.ssi = ScaleShiftInvariantLoss(alignment=loss.ssi_alignment, trim=loss.ssi_trim)
            self.grad = GradientMatchingLoss(scales=loss.gradient_scales)
            self.w_ssi = loss.ssi_weight
            self.w_grad = loss.gradient_weight
            self.val_metrics = DepthMetrics()
        elif task == "semantic":
            self.ce = SegmentationCrossEntropy(
                ignore_index=ignore_index, label_smoothing=loss.label_smoothing
            )
            self.dice = SoftmaxDiceLoss(ignore_index=ignore_index)
            self.w_ce = loss.ce_weight
            self.w_dice = loss.dice_weight
            self.val_metrics = SegmentationMetrics(num_classes=num_classes, ignore_index=ignore_index)
        else:
            raise ValueError(f"unknown task {task!r}")

    # ------------------------------------------------------------------ forward
    def forward(self, image01: Tensor) -> Tensor:
        """``image01`` (B, 3, H, W) in [0, 1] → disparity (B, 1, H, W) or logits (B, K, H, W)."""
        return self.model(self.model.normalize(image01))

    # ------------------------------------------------------------------ losses
    def compute_loss(self, pred: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.task == "depth":
            valid = batch["depth_valid"]
            target = depth_to_disparity(batch["depth"], valid)
            parts = {
                "ssi": self.ssi(pred, target, valid),
                "grad": self.grad(pred, target, valid) if self.w_grad > 0 else pred.new_zeros(()),
            }
            total = self.w_ssi * parts["ssi"] + self.w_grad * parts["grad"]
        else:
            target = batch["semantic"]
            parts = {
                "ce": self.ce(pred, target),
                "dice": self.dice(pred, target) if self.w_dice > 0 else pred.new_zeros(()),
            }
            total = self.w_ce * parts["ce"] + self.w_dice * parts["dice"]
        return {"loss": total, **parts}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        pred = self(batch["image"])
        losses = self.compute_loss(pred, batch)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=bs)
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False, batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        pred = self(batch["image"])
        losses = self.compute_loss(pred, batch)
        self.log("val/loss", losses["loss"], batch_size=batch["image"].shape[0], sync_dist=True)
        self.update_metrics(pred, batch)

    def update_metrics(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        if self.task == "depth":
            self.val_metrics.update(pred, batch["depth"], batch["depth_valid"])
        else:
            self.val_metrics.update(pred.argmax(1), batch["semantic"])

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        scalars = {f"val/{k}": v for k, v in values.items() if torch.as_tensor(v).numel() == 1}
        self.log_dict(scalars, prog_bar=False, sync_dist=True)
        key = "val/delta1" if self.task == "depth" else "val/miou"
        if key in scalars:
            self.log(key.split("/")[1], scalars[key], prog_bar=True, logger=False)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over this module (the model and any learned loss parts, e.g. a feature projection), the
        backbone at ``lr · backbone_lr_mult``; warm-up + cosine over the run (:mod:`anydistill.optim`)."""
        optimizer = build_optimizer(self, self.optim_cfg, encoder=getattr(self.model, "backbone", None))
        # inf when only a time budget bounds the run: build_scheduler then waits for ScheduleLength's estimate
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1000
        scheduler, _ = build_scheduler(optimizer, self.optim_cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint description
    def model_record(self) -> dict[str, Any]:
        """What :func:`anydistill.loading.load_model` rebuilds the student from (stored in checkpoints)."""
        arch = {k: self.hparams[k] for k in ("model_name", "model_kwargs", "num_classes")}
        return model_record(self.task, self.model.preprocess_spec(self.eval_size), arch, self.classes)


def _build_for_task(task: str, name: str, kwargs: dict[str, Any], user_kwargs: dict[str, Any]) -> nn.Module:
    """``build_model(name, **kwargs)``, refused in one line when it is not a model of ``task`` (a
    ``seg_*`` model for depth, a ``sam_*`` one for either) or ``model.kwargs`` does not fit its builder."""
    kinds = {"depth": (DepthModel, "depth_"), "semantic": (SegmentationModel, "seg_")}
    kind, prefix = kinds.get(task, (nn.Module, ""))
    ours = ", ".join(n for n in list_models() if n.startswith(prefix))
    try:
        model = build_model(name, **kwargs)
    except TypeError as exc:  # an argument its builder does not take: a model of another task, a bad kwarg
        raise ConfigError(
            f"model.name={name!r} with model.kwargs={user_kwargs}: {exc}; task={task} takes {ours}"
        ) from None
    if not isinstance(model, kind):
        raise ConfigError(f"model.name={name!r} is not a {task} model; task={task} takes {ours}")
    return model


def module_args(cfg: TrainConfig, classes: ClassInfo) -> dict[str, Any]:
    """The :class:`SupervisedModule` arguments a config describes (shared by the dense methods).

    Raises:
        DataError: ``task=semantic`` on a folder without ``classes.json`` (the class count is unknown).
    """
    if cfg.task == "semantic" and not classes.num_classes:
        raise DataError(
            Path(cfg.data.train_root or ".") / "classes.json",
            'task=semantic needs the class table: {"classes": [{"id": 0, "name": "..."}, ...]}',
        )
    return dict(
        task=cfg.task,
        model_name=cfg.model.name,
        model_kwargs=dict(cfg.model.kwargs),
        num_classes=classes.num_classes if cfg.task == "semantic" else None,
        loss=cfg.loss,
        optim=cfg.optim,
        ignore_index=classes.ignore_index,
        class_names=classes.names or None,
        class_colors=classes.colors or None,
        eval_size=cfg.data.eval_size or cfg.data.image_size,
    )


#: The validation metric that picks ``best.ckpt`` for each dense task.
DENSE_MONITOR = {"depth": "val/delta1", "semantic": "val/miou"}


def dense_callbacks(cfg: TrainConfig, classes: ClassInfo) -> list[Any]:
    """The validation picture (``val_grid.png``) of the dense methods."""
    return [PredictionGrid(Path(cfg.run_dir) / "val_grid.png", cfg.trainer.grid_images, classes)]


@register_method("supervised", verbs=("train",), tasks=("depth", "semantic"))
def build_supervised(cfg: TrainConfig) -> MethodRun:
    """Supervised training of a depth or semantic student on labeled images."""
    classes = class_info(cfg.data)
    module = SupervisedModule(**module_args(cfg, classes))
    datamodule = SupervisedDataModule(cfg.data, cfg.task, input_multiple=module.model.input_multiple)
    return MethodRun(module, datamodule, DENSE_MONITOR[cfg.task], "max", dense_callbacks(cfg, classes))
