"""The teacher pass: run a frozen teacher once over a folder of images and cache its outputs.

Depth Anything labels its unlabeled images with a teacher once, then trains students on the cached
pseudo-labels (teachers are 10-100x slower than students). This module is that step, made safe to
kill, rerun and spread over processes. The cache format is in :mod:`anydistill.cache.shards` (tar
shards + sidecar indexes) and :mod:`anydistill.cache.manifest` (``manifest.json``).

Assignment. The images are listed like :class:`~anydistill.data.folder.UnlabeledImageFolder` lists them
(``DIR/images`` if it exists, else ``DIR``; recursive; id = relative path without extension) and
sorted by id. Image ``i`` belongs to shard ``i // shard_size``; of ``W`` processes, rank ``r`` writes
the shards ``s`` with ``s % W == r``.

Resume. Before writing, each rank checks its shards: a shard is kept when its tar and index exist,
the tar's size and sha256 match the index, the index was written by this teacher with these
settings, and it holds exactly the ids the shard should hold, with unchanged image files (same size
and mtime, else the same sha256). Every other shard is redone from scratch. A kill at any moment
therefore loses at most the shards being written; a rerun finishes with no duplicate and no missing
image, and a finished cache reruns as a no-op check. A folder holding another teacher's shards or
manifest is refused (never overwritten).

Unreadable images. They are read in DataLoader workers; a file that fails becomes an error record,
written into its shard's index (so it is counted once, reported, and not retried until the file
changes) and listed in the manifest. So are images whose teacher output is not finite. The pass never
stops for them.

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

Targets are stored as float16 (values beyond +-65504 are clipped) at the image's own size, or with
the long side limited to ``max_size`` (antialiased bilinear); features at the teacher's feature size.
On CUDA the teacher runs under float16 autocast unless ``autocast=False``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from anydistill.cache.manifest import MANIFEST, Manifest, ShardEntry, read_manifest
from anydistill.cache.shards import (
    ShardIndex,
    ShardWriter,
    atomic_write_json,
    check_tar,
    file_sha256,
    list_shard_files,
)
from anydistill.data.folder import UnlabeledImageFolder
from anydistill.data.io import read_image
from anydistill.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["add_pseudo_label_parser", "is_global_zero", "run_teacher_pass"]

_FP16_MAX = 65504.0
_TARGET_FOR_TASK = {"depth": "disp", "semantic": "logits", "segmentation": "logits"}


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class _Settings:
    batch_size: int
    shard_size: int
    features: bool
    max_size: int | None
    num_workers: int
    progress: bool
    autocast: bool


@dataclass(frozen=True)
class _Item:
    """One image to process (picklable: it travels to DataLoader workers)."""

    index: int  # position in the sorted image list = the sample key
    id: str
    path: str
    source: str  # path relative to the image root, POSIX


@dataclass
class _Plan:
    out: Path
    image_root: Path
    items: list[_Item]
    shard_size: int
    header: dict[str, Any]  # what each shard index records; the resume check compares it

    @property
    def n_shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def shard_items(self, s: int) -> list[_Item]:
        return self.items[s * self.shard_size : (s + 1) * self.shard_size]


def _key(index: int) -> str:
    return f"{index:09d}"


def _make_plan(teacher: Any, images_dir: Path, out: Path, settings: _Settings, targets: list[str]) -> _Plan:
    folder = UnlabeledImageFolder(images_dir)
    root = folder.images_dir.resolve()
    items = [
        _Item(i, image_id, str(path), path.relative_to(folder.images_dir).as_posix())  # symlinks kept
        for i, (image_id, path) in enumerate(zip(folder.ids, folder.image_paths, strict=True))
    ]
    header = {
        "teacher": teacher.fingerprint,
        "targets": targets,
        "dtype": "float16",
        "max_size": settings.max_size,
        "shard_size": settings.shard_size,
    }
    return _Plan(out, root, items, settings.shard_size, header)


def _targets(teacher: Any, features: bool) -> list[str]:
    task = getattr(teacher, "task", None)
    if task == "features":
        targets: list[str] = []
        features = True
    elif task in _TARGET_FOR_TASK:
        targets = [_TARGET_FOR_TASK[task]]
    else:
        raise ConfigError(f"teacher task must be depth, semantic or features, got {task!r}")
    if features:
        if not callable(getattr(teacher, "features", None)) or getattr(teacher, "feature_dim", 0) is None:
            raise ConfigError(f"features were asked for but {type(teacher).__name__} has no feature encoder")
        targets.append("feat")
    return targets


# -------------------------------------------------------------------------------- image reading
class _ImageReader(Dataset):
    """Reads images in DataLoader workers; a file that cannot be read becomes an error record."""

    def __init__(self, items: list[_Item]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        rec: dict[str, Any] = {"index": item.index, "id": item.id, "source": item.source, "path": item.path}
        try:
            stat = os.stat(item.path)
            rec["bytes"], rec["mtime_ns"] = stat.st_size, stat.st_mtime_ns
            rec["sha256"] = hashlib.sha256(Path(item.path).read_bytes()).hexdigest()
            rec["image"] = torch.from_numpy(read_image(item.path))  # (H, W, 3) uint8
        except DataError as e:
            rec["error"] = e.problem
        except Exception as e:  # noqa: BLE001 -- any failure on one file is recorded, never fatal
            rec["error"] = f"{type(e).__name__}: {e}"
        return rec


def _group_by_size(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate (in the worker): error records apart, the others stacked by image size.

    Returns ``{"errors": [record], "groups": [(uint8 (b, H, W, 3), [record])]}``; stacking here moves
    the copy off the main process, and the stacked tensor crosses to it through shared memory.
    """
    errors = [r for r in records if "error" in r]
    by_size: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for r in records:
        if "error" not in r:
            by_size.setdefault(tuple(r["image"].shape), []).append(r)
    groups = []
    for group in by_size.values():
        images = torch.stack([r.pop("image") for r in group])  # (b, H, W, 3)
        for r in group:
            r["hw"] = list(images.shape[1:3])
        groups.append((images, group))
    return {"errors": errors, "groups": groups}


def _shard_batches(plan: _Plan, todo: list[int], batch_size: int) -> list[list[int]]:
    """Loader batches (positions in the concatenated items of ``todo``) that never straddle a shard."""
    batches: list[list[int]] = []
    start = 0
    for s in todo:
        n = len(plan.shard_items(s))
        batches += [list(range(start + i, start + min(i + batch_size, n))) for i in range(0, n, batch_size)]
        start += n
    return batches


# --------------------------------------------------------------------------------------- resume
def _file_unchanged(path: Path, rec: dict[str, Any]) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != rec.get("bytes"):
        return False
    if stat.st_mtime_ns == rec.get("mtime_ns"):
        return True
    if "sha256" not in rec:  # an unreadable image that was touched: try it again
        return False
    try:
        return file_sha256(path) == rec["sha256"]
    except OSError:
        return False


def _index_matches(plan: _Plan, s: int, ix: ShardIndex, full: bool) -> bool:
    """Whether a shard on disk is exactly what shard ``s`` of this plan should be (see the module doc)."""
    if ix.index != s or any(ix.header.get(k) != v for k, v in plan.header.items()):
        return False
    rows = sorted(ix.samples + ix.unreadable, key=lambda r: r["key"])
    expected = plan.shard_items(s)
    if [(r["key"], r["id"], r["source"]) for r in rows] != [
        (_key(i.index), i.id, i.source) for i in expected
    ]:
        return False
    if not all(_file_unchanged(plan.image_root / r["source"], r) for r in rows):
        return False
    try:
        check_tar(ix.path.with_name(ix.name), ix, full=full)  # type: ignore[union-attr]
    except DataError:
        return False
    return True


def _find_complete(plan: _Plan, s: int, candidates: list[Path], full: bool) -> ShardIndex | None:
    """The complete shard ``s`` among ``candidates`` (index files), if any.

    Raises:
        DataError: a shard of another teacher (the folder is someone else's cache).
    """
    found: ShardIndex | None = None
    for path in candidates:
        try:
            ix = ShardIndex.load(path)
        except DataError:
            continue  # a damaged index: the shard is redone
        theirs = ix.header.get("teacher")
        if theirs != plan.header["teacher"]:
            raise DataError(
                plan.out,
                f"holds shards of another teacher ({path.name}: fingerprint {theirs}, this teacher "
                f"{plan.header['teacher']}); write to another folder or delete this one",
            )
        if found is None and _index_matches(plan, s, ix, full):
            found = ix
    return found


def _remove_shard(index_path: Path) -> None:
    for path in (index_path, index_path.with_suffix(".tar")):
        path.unlink(missing_ok=True)


def _check_existing_manifest(plan: _Plan) -> None:
    if not (plan.out / MANIFEST).is_file():
        return
    try:
        manifest = read_manifest(plan.out)
    except DataError:
        return  # unreadable: rewritten at the end
    if manifest.teacher_fingerprint != plan.header["teacher"]:
        raise DataError(
            plan.out,
            f"is a cache of another teacher (fingerprint {manifest.teacher_fingerprint}, this teacher "
            f"{plan.header['teacher']}); write to another folder or delete this one",
        )


# --------------------------------------------------------------------------------- the teacher
def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _to_fp16(x: torch.Tensor, max_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, H, W)`` float -> float16 on the CPU, long side limited to ``max_size``; and whether each
    sample was finite (checked before clipping to the float16 range), bool ``(B,)``."""
    x = x.float()
    finite = torch.isfinite(x).flatten(1).all(1).cpu()  # (B,)
    h, w = x.shape[-2:]
    if max_size is not None and max(h, w) > max_size:
        scale = max_size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(-_FP16_MAX, _FP16_MAX).half().cpu(), finite


class _BatchRunner:
    """Runs the teacher on a list of same-size image records and writes the results to a shard."""

    def __init__(self, teacher: Any, targets: list[str], device: torch.device, settings: _Settings) -> None:
        self.teacher = teacher
        self.targets = targets
        self.device = device
        self.settings = settings
        self.fingerprint = teacher.fingerprint

    @torch.inference_mode()
    def outputs(self, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """uint8 ``(B, H, W, 3)`` -> target name -> (float16 ``(B, C, h, w)`` on the CPU, finite ``(B,)``)."""
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, H, W), channels_last
        # The permuted HWC batch is channels_last in memory; kept so (no copy): convolutional teachers
        # run faster on it (oneDNN on CPU, cuDNN tensor cores), and ViT patch embeddings do not care.
        x = x.to(dtype=torch.float32, memory_format=torch.channels_last).div_(255.0)
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with _autocast(self.device, self.settings.autocast):
            if "disp" in self.targets or "logits" in self.targets:
                pred = self.teacher.predict(x)  # (B, 1, H, W) or (B, K, H, W)
                if pred.ndim != 4 or pred.shape[0] != x.shape[0] or pred.shape[-2:] != x.shape[-2:]:
                    raise RuntimeError(
                        f"teacher.predict returned {tuple(pred.shape)} for input {tuple(x.shape)}; "
                        "expected (B, C, H, W) at the input size"
                    )
                name = "disp" if "disp" in self.targets else "logits"
                out[name] = _to_fp16(pred, self.settings.max_size)
            if "feat" in self.targets:
                out["feat"] = _to_fp16(self.teacher.features(x), None)  # (B, C, h, w)
        return out

    def run(self, images: torch.Tensor, records: list[dict[str, Any]], writer: ShardWriter) -> None:
        """``images`` uint8 ``(B, H, W, 3)``, ``records`` their B records (same order)."""
        out = self.outputs(images)
        for i, rec in enumerate(records):
            arrays = {}
            for name, (batch, _) in out.items():
                arr = batch[i].numpy()  # (C, h, w)
                arrays[name] = arr[0] if name == "disp" else arr  # disparity is stored (H, W)
            row = {k: rec[k] for k in ("id", "source", "sha256", "bytes", "mtime_ns")}
            bad = [name for name, (_, finite) in out.items() if not bool(finite[i])]
            if bad:
                reason = f"teacher output has non-finite values ({', '.join(bad)})"
                logger.warning("%s: not cached: %s", rec["path"], reason)
                writer.add_unreadable(_key(rec["index"]), {**row, "reason": reason})
                continue
            meta = {
                "id": rec["id"],
                "source": rec["source"],
                "sha256": rec["sha256"],
                "image_size": rec["hw"],
                "teacher": self.fingerprint,
            }
            writer.add_sample(_key(rec["index"]), row, arrays, meta)


def _write_shards(
    runner: _BatchRunner, plan: _Plan, todo: list[int], rank: int, settings: _Settings, show: bool
) -> None:
    """Processes the shards ``todo`` in order.

    Loader batches hold ``batch_size`` images of one shard, stacked by size in the workers; a full
    group goes to the teacher as is. Smaller groups (mixed sizes, a shard's last images) wait in a
    per-size bucket until it holds ``batch_size`` images or the shard ends.
    """
    items = [item for s in todo for item in plan.shard_items(s)]
    bs = settings.batch_size
    loader = DataLoader(
        _ImageReader(items),
        batch_sampler=_shard_batches(plan, todo, bs),
        num_workers=settings.num_workers,
        collate_fn=_group_by_size,
        pin_memory=runner.device.type == "cuda",
    )
    bar = tqdm(total=len(items), desc=f"teacher pass (rank {rank})", unit="img", disable=not show)
    writer: ShardWriter | None = None
    buckets: dict[tuple[int, ...], list[tuple[torch.Tensor, dict[str, Any]]]] = {}
    bad = 0

    def run(images: torch.Tensor, records: list[dict[str, Any]]) -> None:
        runner.run(images, records, writer)  # type: ignore[arg-type]
        bar.update(len(records))

    def flush() -> None:
        for bucket in buckets.values():
            if bucket:
                run(torch.stack([im for im, _ in bucket]), [r for _, r in bucket])  # (b, H, W, 3)
        buckets.clear()

    try:
        for batch in loader:
            first = (batch["errors"] or batch["groups"][0][1])[0]
            s = first["index"] // plan.shard_size
            if writer is None or writer.index != s:
                flush()
                if writer is not None:
                    writer.close()
                writer = ShardWriter(plan.out, s, rank, plan.header)
            for rec in batch["errors"]:
                bad += 1
                logger.warning("%s: not cached: %s", rec["path"], rec["error"])
                row = {k: rec[k] for k in ("id", "source", "bytes", "mtime_ns") if k in rec}
                writer.add_unreadable(_key(rec["index"]), {**row, "reason": rec["error"]})
                bar.update(1)
                bar.set_postfix(unreadable=bad)
            for images, records in batch["groups"]:
                size = tuple(images.shape[1:])
                if len(records) == bs and not buckets.get(size):
                    run(images, records)
                    continue
                bucket = buckets.setdefault(size, [])
                bucket += list(zip(images, records, strict=True))
                while len(bucket) >= bs:
                    chunk, bucket[:] = bucket[:bs], bucket[bs:]
                    run(torch.stack([im for im, _ in chunk]), [r for _, r in chunk])  # (B, H, W, 3)
        flush()
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------- merge
def _merge(
    plan: _Plan, teacher: Any, t0: float, world: int, spec: str | None, targets: list[str]
) -> Manifest:
    """Rank 0, after every rank finished: shard indexes -> ``manifest.json``; stray files removed."""
    found = list_shard_files(plan.out)
    entries: list[ShardEntry] = []
    unreadable: list[dict[str, str]] = []
    keep: set[str] = set()
    count = written = 0
    for s in range(plan.n_shards):
        ix = _find_complete(plan, s, found.get(s, []), full=False)
        if ix is None:
            raise DataError(
                plan.out, f"shard {s} is missing after the pass (was the folder changed meanwhile?)"
            )
        assert ix.path is not None
        entries.append(ShardEntry(ix.name, s, ix.path.name, len(ix.samples), ix.tar_bytes, ix.sha256))
        unreadable += [{"id": u["id"], "source": u["source"], "reason": u["reason"]} for u in ix.unreadable]
        keep |= {ix.name, ix.path.name}
        count += len(ix.samples)
        if float(ix.header.get("created", 0.0)) >= t0:
            written += len(ix.samples) + len(ix.unreadable)
    for paths in found.values():
        for path in paths:
            if path.name not in keep:
                _remove_shard(path)
    for path in plan.out.glob("shard-*.tar*"):
        if path.name not in keep:
            path.unlink(missing_ok=True)  # tars without an index, and stray .tmp files
    if written == 0 and (plan.out / MANIFEST).is_file():
        try:
            previous = read_manifest(plan.out)
        except DataError:
            previous = None
        if previous is not None and previous.shards == entries and previous.unreadable == unreadable:
            return previous  # a rerun that found the cache finished: keep the pass's own timing
    seconds = time.time() - t0
    manifest = Manifest(
        teacher_fingerprint=teacher.fingerprint,
        teacher_spec=spec,
        task=str(getattr(teacher, "task", "")),
        image_root=str(plan.image_root),
        targets=targets,
        shard_size=plan.shard_size,
        num_images=len(plan.items),
        count=count,
        shards=entries,
        unreadable=unreadable,
        timing={
            "seconds": round(seconds, 3),
            "written": written,
            "images_per_second": round(written / seconds, 3) if seconds > 0 else 0.0,
            "world_size": world,
        },
        max_size=plan.header["max_size"],
    )
    atomic_write_json(plan.out / MANIFEST, manifest.to_dict())
    return manifest


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


def _resolve_teacher(teacher: Any) -> tuple[Any, str | None]:
    if isinstance(teacher, str | Path):
        from anydistill.teachers import load_teacher

        return load_teacher(str(teacher)), str(teacher)
    if not hasattr(teacher, "fingerprint") and callable(teacher):
        teacher = teacher()  # a factory: each rank builds its own
    return teacher, getattr(teacher, "spec", None)


def _run_rank(
    dist: _Dist, device: torch.device, teacher_arg: Any, images_dir: Path, out: Path, settings: _Settings
) -> Manifest:
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
            optional ``features(images01) -> (B, C, h, w)``), a path/spec for
            :func:`anydistill.teachers.load_teacher` (loaded in each process), or a no-argument
            callable that builds one (called in each process).
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
    """
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
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, strategy=strategy)
    return fabric.launch(_fabric_entry, teacher, images_dir, out, settings)


def is_global_zero() -> bool:
    """Whether this process is rank 0 (of a Fabric/torchrun launch, or the only process)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


# ------------------------------------------------------------------------------------------ CLI
def _cmd_pseudo_label(args: argparse.Namespace) -> None:
    manifest = run_teacher_pass(
        str(args.teacher),
        args.images,
        args.out,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        features=args.features,
        max_size=args.max_size,
        num_workers=args.num_workers,
        devices=args.devices,
        accelerator=args.accelerator,
    )
    if is_global_zero():
        print(manifest.summary())
        print(f"cache: {args.out}")


def add_pseudo_label_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers ``anydistill pseudo-label`` on the CLI's sub-parsers; returns the new parser."""
    p = subparsers.add_parser(
        "pseudo-label",
        help="run a teacher once over unlabeled images into a resumable pseudo-label cache",
        description="Runs TEACHER over every image under DIR and writes fp16 targets to CACHE "
        "(tar shards + manifest). Rerun the same command to resume an interrupted pass.",
    )
    p.add_argument("--teacher", required=True, type=Path, help="an anydistill checkpoint or a teacher folder")
    p.add_argument("--images", required=True, type=Path, help="folder of images (DIR/images if it exists)")
    p.add_argument("--out", required=True, type=Path, help="the cache folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=256, help="images per tar shard")
    p.add_argument("--features", action="store_true", help="also cache the teacher's encoder features")
    p.add_argument("--max-size", type=int, default=None, help="limit the stored targets' long side")
    p.add_argument("--num-workers", type=int, default=2, help="image-reading processes")
    p.add_argument("--devices", type=int, default=1, help="processes (GPUs, or CPU processes)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    p.set_defaults(func=_cmd_pseudo_label)
    return p
