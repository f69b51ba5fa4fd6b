"""Run a training job from a :class:`~anydistill.config.TrainConfig` with Lightning.

A run folder gets: ``config.yaml`` (the resolved config), ``checkpoints/best.ckpt`` and
``checkpoints/last.ckpt`` (every save is atomic in the checkpoint folder itself, see
:mod:`anydistill.checkpoint_io`: a kill or a full disk leaves the previous file whole), CSV and
TensorBoard logs under ``logs/``, ``val_grid.png`` (input / prediction / target for a few validation
images) and ``metrics.json``. Starting the same run again resumes from ``last.ckpt``; one that cannot
be read (torn by a save from before atomic saves, or damaged since) is set aside as ``last.ckpt.torn``
with a one-line warning, and the run resumes from ``best.ckpt``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from anydistill.checkpoint_io import AtomicCheckpointIO, atomic_copy, remove_stale_temporaries
from anydistill.checkpoints import CONFIG_KEY, MODEL_RECORD_KEY, read_checkpoint
from anydistill.config import TrainConfig, save_config
from anydistill.data.outputs import make_output_folder
from anydistill.errors import ConfigError, DataError, warn
from anydistill.methods import MethodRun, default_method, get_method
from anydistill.optim_callbacks import ScheduleLength


@dataclass
class TrainResult:
    """What a finished run left behind."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, float]


class StoreConfig(Callback):
    """Puts the resolved config and the module's model record (builder, pre-processing, class table; see
    :mod:`anydistill.loading`) into every checkpoint, so the checkpoint describes itself."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg.to_dict()

    def on_save_checkpoint(
        self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.cfg
        record = getattr(module, "model_record", None)
        if callable(record):
            checkpoint[MODEL_RECORD_KEY] = record()


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint ``path`` cannot be resumed from (empty, truncated, corrupt, not plain data), or
    ``None`` when it reads.

    It is read whole, weights-only, with :func:`~anydistill.checkpoints.read_checkpoint`: the same test as
    Lightning's own resume (``torch.load`` with torch's default ``weights_only=True``), so a file that
    passes here resumes. Measured on warm
    caches with one thread: 0.14 s for a ViT-S student with its AdamW state (286 MiB), 0.7 s for a ViT-B
    (1 GiB), once per start, against 0.3 s / 1.9 s for each save; Lightning then reads the same file from
    the page cache. Only checking that the zip is complete (its central directory, 3 ms) would catch
    truncation but not a damaged or refused pickle, which would then fail the resume itself.
    """
    try:
        read_checkpoint(path)
    except DataError as exc:
        return exc.problem
    return None


def _set_aside(path: Path) -> Path:
    """Rename the unreadable ``path`` to ``<name>.torn`` (``.torn-N`` when taken); return its new path."""
    target, n = path.with_name(f"{path.name}.torn"), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.torn-{n}")
    os.replace(path, target)
    return target


def _find_resume(ckpt_dir: Path) -> Path | None:
    """The checkpoint a (re)started run resumes from: ``last.ckpt``, else ``best.ckpt``, else ``None``.

    Before training starts nothing writes into ``ckpt_dir``, so the temporary files a killed save left are
    removed, and a ``last.ckpt`` or ``best.ckpt`` that cannot be read (:func:`checkpoint_problem`) is
    renamed ``*.torn`` (kept for inspection) with one warning line on stderr saying what the run does
    instead: resume from the other checkpoint if that one reads, else start from scratch. A torn
    ``best.ckpt`` beside a good ``last.ckpt`` is set aside too, as the run's final validation would load it.
    Only the launching process (rank 0) removes or renames; other ranks make the same choice read-only.
    """
    writer = rank_zero_only.rank == 0
    if writer:
        remove_stale_temporaries(ckpt_dir)
    last, best = ckpt_dir / "last.ckpt", ckpt_dir / "best.ckpt"
    problems = {path: checkpoint_problem(path) for path in (last, best) if path.is_file()}
    good = [path for path, problem in problems.items() if problem is None]
    resume = good[0] if good else None
    for path, problem in problems.items():
        if problem is None or not writer:
            continue
        aside = _set_aside(path)
        if resume is not None:
            then = f"resuming from {resume.name}"
        elif path == last and best in problems:
            then = f"starting from scratch ({best.name} is unreadable too)"
        else:
            then = "starting from scratch"
        warn(f"{path} is unreadable ({problem}); set aside as {aside.name}, {then}")
    return resume


def resolve_method(cfg: TrainConfig, verb: str = "train") -> TrainConfig:
    """``cfg`` with ``method`` set: the configured one, else the default for the CLI ``verb`` and ``task``."""
    name = cfg.method or default_method(verb, cfg.task)
    get_method(name)  # an unknown name fails here, before anything is written
    return replace(cfg, method=name)


#: Lightning's informational lines (accelerator summary, tips, "Loading `train_dataloader` ...") and the
#: warnings that say nothing a user can act on here: a run's own progress bar and logs say what matters.
_QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_NOISE = (
    r"`?isinstance\(treespec, LeafSpec\)",  # a deprecation inside Lightning itself
    r"The number of training batches .* is smaller than the logging interval",
    r"Found \d+ module\(s\) in eval mode",  # frozen teachers / encoders, by design
    r"Checkpoint directory .* exists and is not empty",  # a resumed run's own folder
    # A resumed run reaching its (raised) max_steps before its next validation: the best checkpoint's
    # callback has no fresh score to compare, keeps the restored best.ckpt, and says so twice.
    r"`ModelCheckpoint\(monitor=.*\)` could not find the monitored key",
    # Resuming from a checkpoint saved inside an epoch: the epoch goes on with a freshly shuffled order
    # (our loaders do not save their position); the step count and schedule resume exactly.
    r"You're resuming from a checkpoint that ended before the epoch ended",
    # Our self-supervised modules finish their views on the device in this hook, by design.
    r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a",
)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's banners and tips off, and its warnings that do not concern the user filtered, while a
    run trains; restored afterwards (a library user's own logging settings are left as they were)."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _NOISE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run(cfg: TrainConfig, verb: str = "train") -> TrainResult:
    """Train (or resume) the run ``cfg`` describes with its method; return where its outputs are."""
    cfg = resolve_method(cfg, verb)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    assert cfg.method is not None
    with quiet_lightning():
        return fit(cfg, get_method(cfg.method)(cfg))


def train(cfg: TrainConfig) -> TrainResult:
    """``anydistill train``: the method ``cfg`` names, by default ``supervised`` (depth / semantic) or
    ``promptable`` (SAM's simulated interactive training)."""
    return run(cfg, "train")


def distill(cfg: TrainConfig) -> TrainResult:
    """``anydistill distill``: the method ``cfg`` names, by default ``distill`` (the Depth Anything recipe
    over a teacher-pass cache) or ``sam_distill`` (MobileSAM encoder distillation) for ``task=promptable``."""
    return run(cfg, "distill")


def pretrain(cfg: TrainConfig) -> TrainResult:
    """``anydistill pretrain``: self-supervised pre-training (``task=embed``) with the method ``cfg`` names,
    by default ``simclr`` (also ``moco``, ``dino``, ``mae``); the run folder gets ``backbone.pth``."""
    return run(replace(cfg, task="embed"), "pretrain")


def trainer_strategy(cfg: TrainConfig, find_unused_parameters: bool, cuda_devices: int | None = None) -> str:
    """``trainer.strategy``, except that a method whose steps leave parameters without gradient by design
    (:attr:`MethodRun.find_unused_parameters`, e.g. promptable training: the box-corner embeddings when no
    object of the batch got a box) gets DDP with ``find_unused_parameters`` (plain DDP fails with
    "Expected to have finished reduction in the prior iteration"; SAM 2's and SAM 3's trainers set it).
    ``"auto"`` becomes that DDP when Lightning would pick DDP: several nodes, or several CUDA devices with
    ``devices`` auto / -1 / more than one.
    """
    strategy = cfg.trainer.strategy
    if not find_unused_parameters or strategy not in ("auto", "ddp", "ddp_spawn"):
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


def fit(cfg: TrainConfig, method_run: MethodRun) -> TrainResult:
    """The Lightning part shared by every method: run folder, checkpoints, logs, resume, final metrics."""
    module, datamodule = method_run.module, method_run.datamodule
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    make_output_folder(run_dir)  # a file there, or no permission: one line naming it
    save_config(cfg, run_dir / "config.yaml")

    monitor, mode = method_run.monitor, method_run.mode
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
    # ScheduleLength keeps the warm-up + cosine schedule's length right in step-, epoch- and time-budgeted
    # runs alike (a time budget re-estimates the total steps from the measured step time).
    callbacks: list[Callback] = [best_cb, step_cb, StoreConfig(cfg), ScheduleLength(), *method_run.callbacks]
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
    try:
        trainer = L.Trainer(
            default_root_dir=run_dir,
            max_epochs=cfg.trainer.max_epochs,
            max_steps=cfg.trainer.max_steps,
            max_time=max_time,
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            strategy=trainer_strategy(cfg, method_run.find_unused_parameters),
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
            # Every checkpoint save (both callbacks', the final one below) atomic in the checkpoint folder.
            plugins=[AtomicCheckpointIO()],
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:  # no GPU, an unknown accelerator
        t = cfg.trainer
        settings = f"accelerator={t.accelerator!r}, devices={t.devices!r}, strategy={t.strategy!r}, precision={t.precision!r}"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"trainer ({settings}): {first}") from None
    resume = _find_resume(ckpt_dir)
    if resume is not None:
        print(f"anydistill: resuming {run_dir} from {resume}")
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except SystemExit:
        # Lightning answers Ctrl-C with a graceful shutdown and sys.exit(1); say it as the CLI does
        # ("interrupted, a rerun resumes", exit 130) instead of a bare exit 1.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    # A stop by max_steps/max_time can fall between checkpoints: save the final state, so a rerun
    # of a finished run does not redo its last steps. Not after a spawn launcher (ddp_spawn): this
    # process's trainer did not train (its step count is 0) and would overwrite the workers' last.ckpt.
    if trainer.global_step > 0 or not (ckpt_dir / "last.ckpt").exists():
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)
    train_seconds = time.perf_counter() - start

    best = ckpt_dir / "best.ckpt"
    if not best_cb.best_model_path or not Path(best_cb.best_model_path).is_file():
        # No validation ran during fit (e.g. val_every_n_epochs beyond the run): the final state is
        # the best there is. Copy, never move: last.ckpt is what a rerun resumes from.
        atomic_copy(ckpt_dir / "last.ckpt", best)
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=str(best), verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        for export in method_run.exports:
            export(best, run_dir)
    summary = {
        "task": cfg.task,
        "method": cfg.method,
        "model": cfg.model.name,
        "best_checkpoint": str(best),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_seconds_this_session": round(train_seconds, 2),
        "val": metrics,
    }
    _write_json_atomic(run_dir / "metrics.json", summary)
    return TrainResult(
        run_dir=run_dir, best_checkpoint=best, last_checkpoint=ckpt_dir / "last.ckpt", metrics=metrics
    )


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
