"""Supervised training of a depth or semantic-segmentation student (the labeled half of every recipe).

Depth follows Depth Anything's relative-depth training: the model predicts affine-invariant
*disparity*; the target is ``1 / depth`` on valid pixels; the loss is the scale-and-shift-invariant
loss plus multi-scale gradient matching (MiDaS). Semantic segmentation uses cross-entropy with an
ignore index (+ optional dice).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from anydistill.eval.metrics import DepthMetrics, SegmentationMetrics
from anydistill.losses import (
    GradientMatchingLoss,
    ScaleShiftInvariantLoss,
    SegmentationCrossEntropy,
    SoftmaxDiceLoss,
)
from anydistill.models import build_model


def depth_to_disparity(depth: Tensor, valid: Tensor) -> Tensor:
    """``1 / depth`` on valid pixels, 0 elsewhere. Shapes ``(B, 1, H, W)``."""
    return torch.where(valid, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))


class SupervisedModule(L.LightningModule):
    """LightningModule for ``task in {"depth", "semantic"}`` on labeled batches.

    Args:
        task: "depth" or "semantic".
        model_name: a name from the model zoo.
        model_kwargs: builder overrides (e.g. ``{"backbone": "resnet18"}``).
        num_classes: classes for "semantic".
        loss: :class:`~anydistill.config.LossConfig` as a dict.
        optim: :class:`~anydistill.config.OptimConfig` as a dict.
        ignore_index: label ignored by the segmentation loss and metrics.
        class_names: optional names, stored with the checkpoint for reports and predictions.
    """

    def __init__(
        self,
        task: str,
        model_name: str,
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        loss: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        class_colors: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["frozen_encoder"])  # a subclass may be handed a frozen module
        loss = loss or {}
        self.optim_cfg = optim or {}
        self.task = task
        kwargs = dict(model_kwargs or {})
        if task == "semantic":
            if not num_classes:
                raise ValueError("semantic segmentation needs num_classes")
            kwargs["num_classes"] = num_classes
        self.model: nn.Module = build_model(model_name, **kwargs)
        if task == "depth":
            self.ssi = ScaleShiftInvariantLoss(
                alignment=loss.get("ssi_alignment", "median"), trim=loss.get("ssi_trim", 0.0)
            )
            self.grad = GradientMatchingLoss(scales=loss.get("gradient_scales", 4))
            self.w_ssi = loss.get("ssi_weight", 1.0)
            self.w_grad = loss.get("gradient_weight", 0.5)
            self.val_metrics = DepthMetrics()
        elif task == "semantic":
            self.ce = SegmentationCrossEntropy(
                ignore_index=ignore_index, label_smoothing=loss.get("label_smoothing", 0.0)
            )
            self.dice = SoftmaxDiceLoss(ignore_index=ignore_index)
            self.w_ce = loss.get("ce_weight", 1.0)
            self.w_dice = loss.get("dice_weight", 0.0)
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
        cfg = self.optim_cfg
        lr = cfg.get("lr", 2e-3)
        backbone = getattr(self.model, "backbone", None)
        backbone_params = {id(p) for p in backbone.parameters()} if backbone is not None else set()
        decay, no_decay, bb_decay, bb_no_decay = [], [], [], []
        for p in self.parameters():  # the model, and any learned loss parts (e.g. a feature projection)
            if not p.requires_grad:
                continue
            in_bb = id(p) in backbone_params
            if p.ndim <= 1:  # norms and biases get no weight decay (timm's param_groups_weight_decay rule)
                (bb_no_decay if in_bb else no_decay).append(p)
            else:
                (bb_decay if in_bb else decay).append(p)
        mult = cfg.get("backbone_lr_mult", 1.0)
        wd = cfg.get("weight_decay", 0.01)
        groups = [
            {"params": decay, "weight_decay": wd, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
            {"params": bb_decay, "weight_decay": wd, "lr": lr * mult},
            {"params": bb_no_decay, "weight_decay": 0.0, "lr": lr * mult},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1000
        warmup = min(cfg.get("warmup_steps", 50), max(total // 5, 1))
        min_ratio = cfg.get("min_lr_ratio", 0.01)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
