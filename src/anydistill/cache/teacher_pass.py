"""The teacher pass: run a frozen teacher once over a folder of images and cache its outputs.

Depth Anything labels its unlabeled images with a teacher once, then trains students on the cached
pseudo-labels (teachers are 10-100x slower than students). :func:`run_teacher_pass` is that step,
made safe to kill, rerun and spread over processes. The cache format is in
:mod:`anydistill.cache.shards` (tar shards + sidecar indexes) and :mod:`anydistill.cache.manifest`
(``manifest.json``).

Data flow, in each process (rank)::

    teacher (an object, or a factory called here) --> _targets: names stored per image
    images_dir --> _make_plan: sorted ids cut into shards                    [anydistill.cache.plan]
    plan + shards on disk --> _find_complete --> todo: this rank's shards to (re)do
    -- sync (a failure in any rank is raised in every rank) --
    todo --> _write_shards: DataLoader workers read images, _BatchRunner runs the teacher,
             float16 outputs --> shard tar + index                           [anydistill.cache.writer]
    -- sync --
    rank 0: _merge: shard indexes --> manifest.json                          [anydistill.cache.writer]
    -- sync -- every rank returns the manifest

Which image goes into which shard, and when a shard on disk is kept on a rerun, is in
:mod:`anydistill.cache.plan`; unreadable images, non-finite teacher outputs and the float16 storage
in :mod:`anydistill.cache.writer`.

The teacher. ``run_teacher_pass`` takes a teacher object, or a zero-argument factory that each
process calls to build its own (pass ``functools.partial(anydistill.teachers.load_teacher, spec)`` for
a checkpoint or model spec). The cache never imports :mod:`anydistill.teachers` itself (the teachers
build on the data and model layers the cache sits beside), so a spec string is refused.

Write errors (disk full, permissions): the shard being written is dropped (its ``.tmp`` removed), the
complete shards stay, no manifest is written, and a :class:`~anydistill.errors.DataError` says to free
space and rerun.

Distributed. ``devices > 1`` launches ``devices`` processes with Lightning Fabric (``strategy="ddp"``
re-runs the current command once per extra rank, which suits the CLI and torchrun/SLURM jobs;
``"ddp_spawn"`` / ``"ddp_fork"`` suit notebooks and tests; gloo on CPU). Ranks write their shards,
meet at a collective, and rank 0 merges the shard indexes into ``manifest.json``. A failure in any
rank is raised in every rank instead of leaving the others waiting at a barrier. Each shard is made
by the same teacher batches whoever writes it, so the cache is byte-identical to a single-process
run's when every process uses the same number of intra-op threads (CPU ranks get ``cores // W``;
set ``OMP_NUM_THREADS`` to match): CPU kernels may round differently in the last bit with another
thread count.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric

from anydistill.cache.manifest import MANIFEST, Manifest, read_manifest
from anydistill.cache.plan import (
    _check_existing_manifest,
    _find_complete,
    _make_plan,
    _remove_shard,
    _Settings,
    _targets,
)
from anydistill.cache.shards import list_shard_files
from anydistill.cache.writer import _BatchRunner, _merge, _write_shards
from anydistill.errors import ConfigError, DataError

__all__ = ["is_global_zero", "run_teacher_pass"]


# ------------------------------------------------------------------------------- ranks and launch
class _Dist:
    """The little of distributed execution the pass needs: rank, world size, a failure-aware sync."""

    def __init__(self, rank: int = 0, world: int = 1, fabric: Any = None) -> None:
        self.rank, self.world, self.fabric = rank, world, fabric

    def sync(self, error: BaseException | None, out: Path) -> None:
        """A collective every rank reaches: raises everywhere when any rank failed."""
        if self.fabric is not None:
            failed = torch.tensor(1.0 if error is not None else 0.0)
            failed = self.fabric.all_reduce(failed, reduce_op="sum")
            if error is None and float(failed) > 0:
                raise DataError(
                    out, "another process of the teacher pass failed (see its message); rerun to finish"
                )
        if error is not None:
            raise error


def _check_teacher_arg(teacher: Any) -> None:
    """Refuses a spec string/path: the cache does not import :mod:`anydistill.teachers` (see the module doc).

    Raises:
        TypeError: ``teacher`` is a ``str``, ``bytes`` or path.
    """
    if isinstance(teacher, str | bytes | os.PathLike):
        raise TypeError(
            f"run_teacher_pass takes a teacher object or a zero-argument factory, not the spec {teacher!r}; "
            "pass anydistill.teachers.load_teacher(spec), or functools.partial(load_teacher, spec) to "
            "have each process build its own"
        )


def _factory_spec(factory: Any) -> str | None:
    """The spec of a ``functools.partial(load_teacher, spec)`` factory (its first argument, when a
    string or path), recorded in the manifest as the teacher's spec; None for other factories. A box
    teacher's factory with a ``mask_teacher`` keyword (``load_box_teacher``) records both:
    ``"<boxes> + masks: <sam>"``."""
    if isinstance(factory, functools.partial) and factory.args:
        first = factory.args[0]
        if isinstance(first, str | os.PathLike):
            mask = factory.keywords.get("mask_teacher")
            masks = f" + masks: {os.fsdecode(mask)}" if isinstance(mask, str | os.PathLike) else ""
            return os.fsdecode(first) + masks
    return None


def _resolve_teacher(teacher: Any) -> tuple[Any, str | None]:
    """The teacher (a factory is called: each rank builds its own) and its spec for the manifest:
    the spec its factory was given (:func:`_factory_spec`), else the teacher's ``spec`` attribute."""
    spec = None
    if not hasattr(teacher, "fingerprint") and callable(teacher):
        spec = _factory_spec(teacher)
        teacher = teacher()
    return teacher, spec or getattr(teacher, "spec", None)


def _run_rank(
    dist: _Dist, device: torch.device, teacher_arg: Any, images_dir: Path, out: Path, settings: _Settings
) -> Manifest:
    """One process's pass (the data flow of the module doc); the manifest, in every rank."""
    t0 = time.time()
    error: BaseException | None = None
    todo: list[int] = []
    try:
        teacher, spec = _resolve_teacher(teacher_arg)
        if hasattr(teacher, "to"):
            teacher = teacher.to(device)
        if hasattr(teacher, "eval"):
            teacher.eval()
        targets = _targets(teacher, settings.features)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(out, f"cannot create the cache folder: {e.strerror or e}") from None
        plan = _make_plan(teacher, images_dir, out, settings, targets)
        _check_existing_manifest(plan)
        found = list_shard_files(out)
        for s in range(dist.rank, plan.n_shards, dist.world):
            ix = _find_complete(plan, s, found.get(s, []), full=True)
            if ix is None:
                todo.append(s)
            else:  # the same shard written by other ranks of runs with other world sizes
                for path in found.get(s, []):
                    if path != ix.path:
                        _remove_shard(path)
    except BaseException as e:  # noqa: BLE001 -- re-raised by sync() in every rank
        error = e
    dist.sync(error, out)

    try:
        if todo:
            (out / MANIFEST).unlink(missing_ok=True)  # the cache is unfinished until the merge
            runner = _BatchRunner(teacher, targets, device, settings)
            _write_shards(runner, plan, todo, dist.rank, settings, settings.progress and dist.rank == 0)
    except OSError as e:
        where = e.filename or out
        done = len(list_shard_files(out))
        error = DataError(
            out,
            f"cannot write the cache ({e.strerror or e}: {where}); the {done} complete shard(s) are kept and "
            "no manifest was written; free space or fix permissions, then rerun the same command to finish",
        )
        error.__cause__ = e
    except BaseException as e:  # noqa: BLE001
        error = e
    dist.sync(error, out)

    manifest: Manifest | None = None
    if dist.rank == 0:
        try:
            manifest = _merge(plan, teacher, t0, dist.world, spec, targets)
        except OSError as e:
            error = DataError(out, f"cannot write {MANIFEST} ({e.strerror or e}); rerun to finish")
        except BaseException as e:  # noqa: BLE001
            error = e
    dist.sync(error, out)
    return manifest if manifest is not None else read_manifest(out)


def _fabric_entry(
    fabric: Any, teacher_arg: Any, images_dir: Path, out: Path, settings: _Settings
) -> Manifest:
    if fabric.device.type == "cpu":  # ranks share the cores: no oversubscription
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // fabric.world_size))
    dist = _Dist(fabric.global_rank, fabric.world_size, fabric)
    return _run_rank(dist, fabric.device, teacher_arg, images_dir, out, settings)


def _single_device(accelerator: str) -> torch.device:
    """The device of a one-process pass: CUDA when asked for (or ``"auto"``) and available, else CPU."""
    if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("cuda", "gpu"):
        raise ConfigError(f"accelerator={accelerator!r} but CUDA is not available")
    return torch.device("cpu")


def run_teacher_pass(
    teacher: Any,
    images_dir: str | Path,
    out: str | Path,
    batch_size: int = 16,
    shard_size: int = 256,
    features: bool = False,
    max_size: int | None = None,
    num_workers: int = 2,
    progress: bool = True,
    devices: int = 1,
    accelerator: str = "auto",
    strategy: str = "ddp",
    autocast: bool = True,
) -> Manifest:
    """Pseudo-label every image under ``images_dir`` with ``teacher`` into the cache folder ``out``.

    Rerunning the same call resumes an interrupted pass (see the module docstring).

    Args:
        teacher: a teacher (``task``, ``fingerprint``, ``predict(images01 (B, 3, H, W)) -> (B, C, H, W)``,
            optional ``features(images01) -> (B, C, h, w)``), or a zero-argument callable that builds
            one (called in each process), e.g. ``functools.partial(anydistill.teachers.load_teacher,
            spec)``, whose ``spec`` the manifest then records. Not a spec string.
        images_dir: a folder of images (``DIR/images`` when it exists), read recursively.
        out: the cache folder (created).
        batch_size: images per teacher call (equal-size images are batched together).
        shard_size: images per shard.
        features: also store the teacher's ``features()`` (``"feat"``).
        max_size: limit the stored targets' long side (None: the image's size).
        num_workers: DataLoader processes reading images (0: read in the main process).
        progress: a tqdm bar (rank 0 only).
        devices: processes to run (one per GPU, or CPU processes with gloo).
        accelerator: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        strategy: Fabric strategy for ``devices > 1`` (``"ddp"``, ``"ddp_spawn"``, ``"ddp_fork"``).
        autocast: float16 autocast for the teacher on CUDA (storage is float16 regardless).

    Returns:
        the :class:`~anydistill.cache.manifest.Manifest` (in every process).

    Raises:
        DataError: no images; the folder holds another teacher's cache; the cache cannot be written.
        ConfigError: bad settings, or features asked of a teacher without them.
        TypeError: ``teacher`` is a spec string or path (build it with ``load_teacher``).
    """
    _check_teacher_arg(teacher)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("devices", devices)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
        raise ConfigError(f"max_size must be a positive integer or None, got {max_size!r}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    settings = _Settings(batch_size, shard_size, features, max_size, num_workers, progress, autocast)
    images_dir, out = Path(images_dir), Path(out)
    if devices == 1:
        return _run_rank(_Dist(), _single_device(accelerator), teacher, images_dir, out, settings)
    fabric = Fabric(accelerator=accelerator, devices=devices, strategy=strategy)
    return fabric.launch(_fabric_entry, teacher, images_dir, out, settings)


def is_global_zero() -> bool:
    """Whether this process is rank 0 (of a Fabric/torchrun launch, or the only process)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
