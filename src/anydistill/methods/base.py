"""The method registry: a training method is one module that turns a config into what ``fit`` runs.

A method owns its typed config section (a dataclass in :mod:`anydistill.config`, or one it registers
with :func:`anydistill.config.register_config_section`) and builds a :class:`MethodRun`: the
LightningModule, the DataModule, the metric that picks ``best.ckpt``, extra callbacks, and what the
DDP strategy needs. :func:`anydistill.training.fit` runs any of them the same way, so a new method is
one new file plus a :func:`register_method` call::

    @register_method("my_method", verbs=("train",), tasks=("depth",))
    def build_my_method(cfg: TrainConfig) -> MethodRun:
        return MethodRun(MyModule(cfg.optim), MyDataModule(cfg.data), monitor="val/loss", mode="min")

The config names its method (``method: supervised``); left empty, the CLI verb and ``task`` choose it
(:func:`default_method`), so every earlier command and YAML file means what it meant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from anydistill.config import TrainConfig
from anydistill.errors import ConfigError
from anydistill.registry import Registry

__all__ = ["METHODS", "Method", "MethodRun", "default_method", "get_method", "register_method"]


@dataclass
class MethodRun:
    """What a method hands to :func:`anydistill.training.fit`.

    Attributes:
        module: the LightningModule to train.
        datamodule: its data.
        monitor: the logged validation metric that chooses ``best.ckpt`` (e.g. ``"val/delta1"``).
        mode: ``"max"`` or ``"min"`` for ``monitor``.
        callbacks: method-specific callbacks (e.g. the validation picture of dense students).
        find_unused_parameters: DDP must look for parameters without gradient (a step of the method
            leaves some unused by design).
        exports: ``fn(best_checkpoint, run_dir)`` called once the run is over (rank 0), e.g. to write the
            pre-trained backbone's weights beside the checkpoints.
    """

    module: L.LightningModule
    datamodule: L.LightningDataModule
    monitor: str
    mode: str = "max"
    callbacks: list[Callback] = field(default_factory=list)
    find_unused_parameters: bool = False
    exports: list[Callable[[Path, Path], Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Method:
    """A registered training method.

    Attributes:
        name: the one word a config's ``method`` names.
        build: ``cfg -> MethodRun``.
        verbs: the CLI verbs (``train``, ``distill``) for which it is the default, with ``tasks``.
        tasks: the ``task`` values it accepts (None: any).
        summary: one line for ``anydistill methods`` and error messages.
    """

    name: str
    build: Callable[[TrainConfig], MethodRun]
    verbs: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None
    summary: str = ""

    def __call__(self, cfg: TrainConfig) -> MethodRun:
        if self.tasks is not None and cfg.task not in self.tasks:
            raise ConfigError(
                f"task: method {self.name!r} trains task {' or '.join(self.tasks)}, not {cfg.task!r}"
            )
        return self.build(cfg)


METHODS: Registry[MethodRun] = Registry("method")


def register_method(
    name: str, verbs: Sequence[str] = (), tasks: Sequence[str] | None = None, summary: str = ""
) -> Callable[[Callable[[TrainConfig], MethodRun]], Callable[[TrainConfig], MethodRun]]:
    """Decorator: register ``build(cfg) -> MethodRun`` as method ``name`` (a duplicate name raises)."""

    def wrap(build: Callable[[TrainConfig], MethodRun]) -> Callable[[TrainConfig], MethodRun]:
        method = Method(
            name, build, tuple(verbs), None if tasks is None else tuple(tasks), summary or _first_line(build)
        )
        METHODS.register(name)(method)
        return build

    return wrap


def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises:
        ConfigError: no such method (the message lists the known ones).
    """
    if name not in METHODS:
        raise ConfigError(f"method: unknown method {name!r}; known: {', '.join(METHODS.names())}")
    method = METHODS.get(name)
    assert isinstance(method, Method)
    return method


def default_method(verb: str, task: str) -> str:
    """The method a CLI ``verb`` means for ``task`` when the config names none (``train`` + ``depth`` →
    ``supervised``, ``distill`` + ``promptable`` → ``sam_distill``, ...).

    Raises:
        ConfigError: no registered method is the default for that pair.
    """
    for name in METHODS.names():
        method = get_method(name)
        if verb in method.verbs and (method.tasks is None or task in method.tasks):
            return name
    raise ConfigError(f"method: no default method for 'anydistill {verb}' with task={task!r}; set method=...")


def _first_line(fn: Any) -> str:
    return ((fn.__doc__ or "").strip().splitlines() or [""])[0]
