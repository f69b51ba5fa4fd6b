"""What ``anydistill bench`` measures: a model from a checkpoint or a zoo name, with its input.

A *target* is the network's heavy forward pass on its own input frame: a depth or semantic model from
its normalised, padded ``(B, 3, S, S)`` input to its prediction; a promptable (SAM) model's image
encoder, ``(B, 3, S, S)`` → embedding (the part that runs once per image; the prompt decoder is
milliseconds, see benchmarks/bench_sam_latency.py); a Hugging Face Depth Anything folder (a teacher):
its ``DepthAnythingForDepthEstimation`` from ``pixel_values (B, 3, S, S)`` to ``predicted_depth``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from anydistill.checkpoints import detect_kind
from anydistill.errors import ConfigError, DataError
from anydistill.loading import LoadedModel, load_model
from anydistill.models.zoo import build_model, list_models
from anydistill.preprocess import Preprocess
from anydistill.teachers import load_teacher

__all__ = ["BenchTarget", "resolve_target"]

#: Input side of a zoo model benchmarked without ``--size``: Depth Anything's 518 (a multiple of 14).
DEFAULT_ZOO_SIZE = 518


@dataclass
class BenchTarget:
    """One model to measure.

    Attributes:
        name: the label in the table (the zoo name, or the checkpoint's file name).
        task: ``"depth"``, ``"semantic"`` or ``"promptable"``.
        loaded: the model, eval mode, with its pre-processing (``loaded.preprocess.size`` is the side).
        checkpoint: the anydistill / SAM file whose quality ``--data`` can measure (``None`` otherwise).
        note: why a target without ``checkpoint`` has no quality figure.
    """

    name: str
    task: str
    loaded: LoadedModel
    checkpoint: Path | None
    note: str = "random weights"

    @property
    def side(self) -> int:
        return int(self.loaded.preprocess.size)

    @property
    def module(self) -> nn.Module:
        """The module timed: the whole dense model, or a promptable model's image encoder."""
        model = self.loaded.model
        return model.image_encoder if self.task == "promptable" else model

    def example(self, batch: int, seed: int = 0) -> torch.Tensor:
        """A seeded normalised input ``(batch, 3, S, S)`` (values as a real image's after normalisation)."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, self.side, self.side, generator=generator)


def _task_of_zoo_name(name: str) -> str:
    if name.startswith("depth_"):
        return "depth"
    if name.startswith("seg_"):
        return "semantic"
    if name.startswith("sam_"):
        return "promptable"
    raise ConfigError(f"{name!r}: bench takes depth_*, seg_* and sam_* zoo models")


def _zoo_target(name: str, size: int | None) -> BenchTarget:
    task = _task_of_zoo_name(name)
    torch.manual_seed(0)  # random weights, the same every run
    model = build_model(name).eval()
    if task == "promptable":  # SAM's encoder is built for its own frame: --size is for dense models
        spec = model.preprocess_spec()
    else:
        multiple = int(model.input_multiple)
        side = size or -(-DEFAULT_ZOO_SIZE // multiple) * multiple
        spec = model.preprocess_spec(side)
    if spec.size % spec.multiple:
        raise ConfigError(f"--size {spec.size}: {name} needs a multiple of {spec.multiple}")
    loaded = LoadedModel(model=model, task=task, preprocess=spec, record={"arch": {"model_name": name}})
    return BenchTarget(name=name, task=task, loaded=loaded, checkpoint=None)


class _DepthAnythingNetwork(nn.Module):
    """A Hugging Face ``DepthAnythingForDepthEstimation`` as a plain module:
    ``pixel_values (B, 3, S, S)`` → ``predicted_depth (B, 1, S, S)`` (what the teacher runs per image)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).predicted_depth[:, None]


def _hf_teacher_target(path: Path, size: int | None) -> BenchTarget:
    teacher = load_teacher(path, image_size=size)
    side = int(teacher.settings["size"][0])
    spec = Preprocess(size=side, mean=teacher.preprocess.mean, std=teacher.preprocess.std, resize="long_side",
                      pad="square", multiple=14)  # fmt: skip
    if side % 14:
        raise ConfigError(f"--size {side}: Depth Anything needs a multiple of its patch size 14")
    loaded = LoadedModel(model=_DepthAnythingNetwork(teacher.model).eval(), task="depth", preprocess=spec,
                         path=path)  # fmt: skip
    return BenchTarget(name=path.name, task="depth", loaded=loaded, checkpoint=None,
                       note="a teacher folder: speed only (its quality: anydistill evaluate on a student)")  # fmt: skip


def resolve_target(spec: str, size: int | None = None) -> BenchTarget:
    """A zoo name (``depth_tiny``, ``sam_vit_b``, ...: random weights), a model file (anydistill
    checkpoint, segment-anything ``.pth``) or a Hugging Face Depth Anything folder (a teacher, speed
    only); ``size`` overrides the input side of a dense model.

    Raises:
        ConfigError: neither a zoo name nor an existing file; a size the model cannot take.
        DataError: the file cannot be loaded (:func:`anydistill.loading.load_model`).
    """
    if spec in list_models():
        return _zoo_target(spec, size)
    path = Path(spec)
    if path.is_dir():
        try:
            kind = detect_kind(path)
        except DataError:
            kind = None
        if kind is None or kind.kind != "huggingface" or kind.task != "depth_anything":
            raise ConfigError(
                f"{spec!r}: a folder, but not a Hugging Face Depth Anything model (config.json)"
            )
        return _hf_teacher_target(path, size)
    if not path.is_file():
        raise ConfigError(f"{spec!r}: neither a model file nor a zoo model (anydistill models lists them)")
    loaded = load_model(path)
    if loaded.task == "classify":
        raise ConfigError(f"{path}: bench measures depth, semantic and promptable models, not classifiers")
    if size is not None and loaded.task != "promptable":
        if size % loaded.preprocess.multiple:
            raise ConfigError(f"--size {size}: {path.name} needs a multiple of {loaded.preprocess.multiple}")
        loaded.preprocess = loaded.preprocess.with_size(size)
    return BenchTarget(name=_label(path), task=loaded.task, loaded=loaded, checkpoint=path)


def _label(path: Path) -> str:
    """A checkpoint's name in the table: its stem, or for a run's ``best``/``last.ckpt`` the run folder's name
    (``runs/teacher/checkpoints/best.ckpt`` → ``teacher``)."""
    if path.stem not in ("best", "last"):
        return path.stem
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return run.name if path.stem == "best" else f"{run.name} ({path.stem})"


def describe(spec: Preprocess) -> str:
    """``518²`` for the table."""
    return f"{spec.size}²"
