"""Run a training job from a :class:`~anydistill.config.TrainConfig` with Lightning.

A run folder gets: ``config.yaml`` (the resolved config), ``checkpoints/best.ckpt`` and
``checkpoints/last.ckpt`` (Lightning writes them through an fsspec transaction: a temporary file
moved into place, so a kill never leaves a torn checkpoint), CSV and TensorBoard logs under
``logs/``, ``val_grid.png`` (input / prediction / target for a few validation images) and
``metrics.json``. Starting the same run again resumes from ``last.ckpt``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from anydistill.config import TrainConfig, save_config
from anydistill.data.datamodule import ClassInfo, SupervisedDataModule, class_info
from anydistill.errors import ConfigError
from anydistill.losses import align_scale_shift
from anydistill.methods.supervised import SupervisedModule, depth_to_disparity
from anydistill.viz import colorize_depth, colorize_mask, default_palette, image_grid, save_png

MONITOR = {"depth": ("val/delta1", "max"), "semantic": ("val/miou", "max"), "promptable": ("val/miou@1", "max")}


@dataclass
class TrainResult:
    """What a finished run left behind."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, float]


def to_uint8(image01: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] → (H, W, 3) uint8."""
    return (image01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def prediction_tiles(
    task: str, image01: torch.Tensor, pred: torch.Tensor, sample: dict[str, Any], classes: ClassInfo
) -> list[np.ndarray]:
    """Input / prediction / target tiles for one sample (prediction of shape (C, H, W))."""
    rgb = to_uint8(image01)
    if task == "depth":
        valid = sample["depth_valid"][None]
        target = depth_to_disparity(sample["depth"][None], valid)
        scale, shift = align_scale_shift(pred[None], target, valid)
        aligned = (pred[None] * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1))[0, 0].cpu().numpy()
        tgt = target[0, 0].cpu().numpy()
        v = valid[0, 0].cpu().numpy()
        lo, hi = (np.percentile(tgt[v], [2, 98]) if v.any() else (0.0, 1.0))
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
        rows = [prediction_tiles(module.task, images[i], preds[i], samples[i], self.classes) for i in range(len(samples))]
        save_png(image_grid(rows, titles=["input", "prediction", "target"]), self.path)


class StoreConfig(Callback):
    """Puts the resolved config into every checkpoint, so ``load_student`` knows the image size."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg.to_dict()

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["anydistill_config"] = self.cfg


def _find_resume(ckpt_dir: Path) -> Path | None:
    last = ckpt_dir / "last.ckpt"
    return last if last.is_file() else None


def module_kwargs(cfg: TrainConfig, classes: ClassInfo) -> dict[str, Any]:
    """The :class:`SupervisedModule` arguments a config describes (shared by every method)."""
    return dict(
        task=cfg.task,
        model_name=cfg.model.name,
        model_kwargs=dict(cfg.model.kwargs),
        num_classes=classes.num_classes if cfg.task == "semantic" else None,
        loss=vars(cfg.loss).copy(),
        optim=vars(cfg.optim).copy(),
        ignore_index=classes.ignore_index,
        class_names=classes.names or None,
        class_colors=classes.colors or None,
    )


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) the supervised run described by ``cfg``; return where its outputs are."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.task == "promptable":
        return _train_promptable(cfg)
    classes = class_info(cfg.data)
    module = SupervisedModule(**module_kwargs(cfg, classes))
    datamodule = SupervisedDataModule(cfg.data, cfg.task, input_multiple=module.model.input_multiple)
    return fit(cfg, module, datamodule, classes)


def distill(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) a student with the Depth Anything recipe: labeled data + the teacher-pass
    cache ``cfg.distill.cache``, perturbations, CutMix and optional feature alignment."""
    from anydistill.data.datamodule import DistillDataModule
    from anydistill.methods.distill import DistillModule

    if not cfg.distill.cache:
        raise ConfigError("distill.cache: the teacher-pass cache folder is required (make it with anydistill pseudo-label)")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.task == "promptable":
        return _distill_promptable(cfg)
    classes = class_info(cfg.data)
    frozen = None
    if cfg.distill.feature_align:
        if not cfg.distill.frozen_encoder:
            raise ConfigError("distill.frozen_encoder: required when distill.feature_align is true")
        from anydistill.teachers import load_teacher

        frozen = load_teacher(cfg.distill.frozen_encoder)
        if frozen.feature_dim is None:
            raise ConfigError(f"distill.frozen_encoder: {cfg.distill.frozen_encoder} provides no features to align to")
    module = DistillModule(distill=vars(cfg.distill).copy(), frozen_encoder=frozen, **module_kwargs(cfg, classes))
    datamodule = DistillDataModule(cfg.data, cfg.distill, cfg.task, input_multiple=module.model.input_multiple)
    return fit(cfg, module, datamodule, classes)


def _promptable_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    p = cfg.prompt
    return dict(
        optim=vars(cfg.optim).copy(),
        loss=dict(
            focal_weight=p.focal_weight, dice_weight=p.dice_weight, iou_weight=p.iou_weight,
            iou_supervision=p.iou_supervision,
        ),
        num_rounds=p.num_rounds,
        refine_rounds=p.refine_rounds,
        p_box=p.p_box,
        box_noise_std=p.box_noise_std,
        box_noise_max=p.box_noise_max,
        multimask_first_round=p.multimask_first_round,
        multimask_box=p.multimask_box,
        detach_mask_prompt=p.detach_mask_prompt,
        loss_resolution=p.loss_resolution,
        val_max_clicks=p.val_max_clicks,
        val_instances=p.val_instances,
    )


def _train_promptable(cfg: TrainConfig) -> TrainResult:
    """SAM's simulated interactive training (:class:`~anydistill.methods.promptable.PromptableModule`)."""
    from anydistill.data.datamodule import InstanceDataModule
    from anydistill.methods.promptable import PromptableModule
    from anydistill.promptable.loading import build_promptable_model

    model = build_promptable_model(cfg)
    module = PromptableModule(model, freeze_image_encoder=cfg.prompt.freeze_image_encoder, **_promptable_kwargs(cfg))
    return fit(cfg, module, InstanceDataModule(cfg.data, cfg.prompt), ClassInfo())


def _distill_promptable(cfg: TrainConfig) -> TrainResult:
    """MobileSAM-style encoder distillation: ``model.name``'s image encoder regresses the cached
    embeddings of ``prompt.teacher``, whose prompt encoder and mask decoder the student takes over."""
    from anydistill.data.datamodule import SamDistillDataModule
    from anydistill.methods.sam_distill import SamEncoderDistillModule
    from anydistill.models import build_model
    from anydistill.promptable.loading import sam_model_name
    from anydistill.teachers.sam import SamTeacher

    p = cfg.prompt
    if not p.teacher:
        raise ConfigError("prompt.teacher: the SAM checkpoint whose embeddings are cached is required")
    teacher = SamTeacher(p.teacher)  # its fingerprint must be the cache's
    if teacher.img_size != cfg.data.image_size:
        raise ConfigError(f"data.image_size={cfg.data.image_size} must equal the teacher's input size {teacher.img_size}")
    datamodule = SamDistillDataModule(cfg.data, p, cfg.distill.cache, teacher_fingerprint=teacher.fingerprint)
    student = build_model(sam_model_name(cfg), **{"img_size": teacher.img_size, **dict(cfg.model.kwargs)})
    for part in ("prompt_encoder", "mask_decoder"):
        getattr(student, part).load_state_dict(getattr(teacher.model, part).state_dict())
    del teacher
    module = SamEncoderDistillModule(
        student, embed_weight=p.embed_weight, mask_weight=p.mask_weight, mask_points=p.mask_points,
        mask_rounds=p.mask_rounds, finetune_decoder=p.finetune_decoder, **_promptable_kwargs(cfg),
    )  # fmt: skip
    return fit(cfg, module, datamodule, ClassInfo())


def trainer_strategy(cfg: TrainConfig, cuda_devices: int | None = None) -> str:
    """``trainer.strategy``, except that promptable training under DDP finds unused parameters.

    A promptable step leaves parameters without gradient by design: the box-corner embeddings when no
    object of the batch got a box, the mask-prompt encoder with ``num_rounds=1``, the three multimask
    output tokens when no round asks for three masks; plain DDP then fails ("Expected to have finished
    reduction in the prior iteration"). SAM 2's and SAM 3's trainers set ``find_unused_parameters: True``. ``"auto"``
    becomes DDP when Lightning would pick it: several nodes, or several CUDA devices with ``devices``
    auto / -1 / more than one.
    """
    strategy = cfg.trainer.strategy
    if cfg.task != "promptable" or strategy not in ("auto", "ddp", "ddp_spawn"):
        return strategy
    if strategy in ("ddp", "ddp_spawn"):
        return f"{strategy}_find_unused_parameters_true"
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if cfg.trainer.accelerator in ("auto", "gpu", "cuda") else 0
    devices = str(cfg.trainer.devices).strip()
    if devices in ("auto", "-1"):
        count = cuda_devices if cuda_devices > 0 else 1
    elif devices.startswith("[") or "," in devices:
        count = len([d for d in devices.strip("[]").split(",") if d.strip()])
    else:
        count = int(devices) if devices.isdigit() else 1
    multi = cfg.trainer.num_nodes > 1 or (cuda_devices > 0 and count > 1)
    return "ddp_find_unused_parameters_true" if multi else strategy


def fit(cfg: TrainConfig, module: L.LightningModule, datamodule: L.LightningDataModule, classes: ClassInfo) -> TrainResult:
    """The Lightning part shared by every method: run folder, checkpoints, logs, resume, final metrics."""
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    monitor, mode = MONITOR[cfg.task]
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1, save_last=True,
        enable_version_counter=False, auto_insert_metric_name=False,
    )  # fmt: skip
    # Both callbacks keep the one last.ckpt up to date (a version counter would make the step callback
    # write last-v1.ckpt once the other has written last.ckpt, and a resume would miss its saves).
    step_cb = ModelCheckpoint(
        dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
        enable_version_counter=False,
    )  # fmt: skip
    callbacks: list[Callback] = [best_cb, step_cb, StoreConfig(cfg)]
    if cfg.task in ("depth", "semantic"):
        callbacks.append(PredictionGrid(run_dir / "val_grid.png", cfg.trainer.grid_images, classes))
    if cfg.trainer.progress_bar:
        # In a terminal the bar redraws often; in a log file every redraw is kept, so redraw rarely.
        refresh = 1 if sys.stderr.isatty() else max(50, cfg.trainer.log_every_n_steps)
        callbacks.append(TQDMProgressBar(refresh_rate=refresh))
    # CSV logs get a version_N folder per session, so resuming never overwrites earlier logs.
    loggers = [
        CSVLogger(run_dir / "logs", name="csv"),
        TensorBoardLogger(run_dir / "logs", name="tensorboard", version="", default_hp_metric=False),
    ]
    max_time = None
    if cfg.trainer.max_time_minutes:
        max_time = {"minutes": cfg.trainer.max_time_minutes}
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=cfg.trainer.max_epochs,
        max_steps=cfg.trainer.max_steps,
        max_time=max_time,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=trainer_strategy(cfg),
        num_nodes=cfg.trainer.num_nodes,
        precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        check_val_every_n_epoch=cfg.trainer.val_every_n_epochs,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    resume = _find_resume(ckpt_dir)
    if resume is not None:
        print(f"anydistill: resuming {run_dir} from {resume}")
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    # A stop by max_steps/max_time can fall between checkpoints: save the final state, so a rerun
    # of a finished run does not redo its last steps. Not after a spawn launcher (ddp_spawn): this
    # process's trainer did not train (its step count is 0) and would overwrite the workers' last.ckpt.
    if trainer.global_step > 0 or not (ckpt_dir / "last.ckpt").exists():
        trainer.save_checkpoint(ckpt_dir / "last.ckpt")
    train_seconds = time.perf_counter() - start

    best = ckpt_dir / "best.ckpt"
    if not best_cb.best_model_path or not Path(best_cb.best_model_path).is_file():
        # No validation ran during fit (e.g. val_every_n_epochs beyond the run): the final state is
        # the best there is. Copy, never move: last.ckpt is what a rerun resumes from.
        tmp = best.with_suffix(".ckpt.tmp")
        shutil.copyfile(ckpt_dir / "last.ckpt", tmp)
        os.replace(tmp, best)
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=str(best), verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    summary = {
        "task": cfg.task,
        "model": cfg.model.name,
        "best_checkpoint": str(best),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_seconds_this_session": round(train_seconds, 2),
        "val": metrics,
    }
    _write_json_atomic(run_dir / "metrics.json", summary)
    return TrainResult(run_dir=run_dir, best_checkpoint=best, last_checkpoint=ckpt_dir / "last.ckpt", metrics=metrics)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
