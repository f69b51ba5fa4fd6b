"""``val_grid.png``: input / prediction / target tiles of a few validation images after every validation
(dense students: depth and semantic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from anydistill.data.classes import ClassInfo
from anydistill.losses import align_scale_shift, depth_to_disparity
from anydistill.viz import colorize_depth, colorize_mask, default_palette, image_grid, save_png


def to_uint8(image01: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] → (H, W, 3) uint8."""
    return (image01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def prediction_tiles(
    task: str, image01: torch.Tensor, pred: torch.Tensor, sample: dict[str, Any], classes: ClassInfo
) -> list[np.ndarray]:
    """Input / prediction / target tiles for one sample (prediction of shape (C, H, W)); depth is shown
    after the per-image scale-and-shift alignment the metrics use."""
    rgb = to_uint8(image01)
    if task == "depth":  # the two dense tasks draw different targets
        valid = sample["depth_valid"][None]
        target = depth_to_disparity(sample["depth"][None], valid)
        scale, shift = align_scale_shift(pred[None], target, valid)
        aligned = (pred[None] * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1))[0, 0].cpu().numpy()
        tgt = target[0, 0].cpu().numpy()
        v = valid[0, 0].cpu().numpy()
        lo, hi = np.percentile(tgt[v], [2, 98]) if v.any() else (0.0, 1.0)
        return [rgb, colorize_depth(aligned, None, lo, hi), colorize_depth(tgt, v, lo, hi)]
    palette = np.asarray(classes.colors, np.uint8) if classes.colors else default_palette(pred.shape[0])
    label = pred.argmax(0).cpu().numpy()
    return [rgb, colorize_mask(label, palette), colorize_mask(sample["semantic"].cpu().numpy(), palette)]


class PredictionGrid(Callback):
    """Writes ``val_grid.png`` (rows: input / prediction / target) after every validation."""

    def __init__(self, path: Path, count: int, classes: ClassInfo) -> None:
        self.path = Path(path)
        self.count = count
        self.classes = classes

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.count <= 0:
            return
        dataset = trainer.datamodule.val_set
        samples = [dataset[i] for i in range(min(self.count, len(dataset)))]
        images = torch.stack([s["image"] for s in samples]).to(module.device)
        preds = module(images).float()
        rows = [
            prediction_tiles(module.task, images[i], preds[i], samples[i], self.classes)
            for i in range(len(samples))
        ]
        save_png(image_grid(rows, titles=["input", "prediction", "target"]), self.path)
