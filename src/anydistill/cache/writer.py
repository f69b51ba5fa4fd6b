"""The teacher pass's writing side: read images, run the teacher on batches, write shards, merge.

Images are read in DataLoader workers (:class:`_ImageReader`), stacked by size in the workers
(:func:`_group_by_size`) in loader batches that never straddle a shard (:func:`_shard_batches`), run
through the teacher (:class:`_BatchRunner`) and written shard by shard (:func:`_write_shards`); rank 0
then merges the shard indexes into ``manifest.json`` (:func:`_merge`).

Unreadable images. They are read in DataLoader workers; a file that fails becomes an error record,
written into its shard's index (so it is counted once, reported, and not retried until the file
changes) and listed in the manifest. So are images whose teacher output is not finite. The pass never
stops for them.

A failure while writing (an ``OSError``: disk full, permissions) aborts the shard being written (its
``.tmp`` removed) and propagates; :mod:`anydistill.cache.teacher_pass` turns it into the user's message.

Targets are stored as float16 (values beyond +-65504 are clipped) at the image's own size, or with
the long side limited to ``max_size`` (antialiased bilinear); features at the teacher's feature size;
a classifier's logits (``task == "classify"``, ``predict -> (B, K)``) as one ``(K,)`` vector per image;
a box teacher's detections (``task == "detect"``, ``detect -> [{boxes, scores, labels}]``) as float32 /
int64 arrays of any length (every detection it keeps, down to its ``min_score``), and a box-and-mask
teacher's instance masks (``gives_masks``) as COCO RLE (``mask_rle``, ``mask_rle_lengths``: a few bytes per
object instead of ``H·W``).
On CUDA the teacher runs under float16 autocast unless ``autocast=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from anydistill.cache.manifest import MANIFEST, Manifest, ShardEntry, read_manifest
from anydistill.cache.masks import masks_to_rle_arrays
from anydistill.cache.plan import _find_complete, _Item, _key, _Plan, _remove_shard, _Settings
from anydistill.cache.shard_writer import ShardWriter
from anydistill.cache.shards import atomic_write_json, list_shard_files
from anydistill.data.io import read_image
from anydistill.errors import DataError

logger = logging.getLogger(__name__)

_FP16_MAX = 65504.0


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


# --------------------------------------------------------------------------------- the teacher
def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """float16 autocast on CUDA when ``enabled``; nothing otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _to_fp16(x: torch.Tensor, max_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, H, W)`` (or ``(B, K)`` logits, never resized) float -> float16 on the CPU, long side
    limited to ``max_size``; and whether each sample was finite (checked before clipping to the float16
    range), bool ``(B,)``."""
    x = x.float()
    finite = torch.isfinite(x).flatten(1).all(1).cpu()  # (B,)
    h, w = x.shape[-2:]
    if x.ndim == 4 and max_size is not None and max(h, w) > max_size:
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
            if getattr(self.teacher, "task", None) == "classify":
                pred = self.teacher.predict(x)  # (B, K)
                if pred.ndim != 2 or pred.shape[0] != x.shape[0]:
                    raise RuntimeError(
                        f"teacher.predict returned {tuple(pred.shape)} for input {tuple(x.shape)}; "
                        "a classify teacher gives (B, K) logits"
                    )
                out["logits"] = _to_fp16(pred, None)
            elif "disp" in self.targets or "logits" in self.targets:
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

    @torch.inference_mode()
    def detections(self, images: torch.Tensor) -> list[tuple[dict[str, Any], list[str]]]:
        """uint8 ``(B, H, W, 3)`` → per image (arrays ``boxes`` float32 ``(N, 4)``, ``scores`` float32
        ``(N,)``, ``labels`` int64 ``(N,)``; the names of the non-finite ones). Boxes are kept in float32:
        float16 would round a box edge at x = 3000 to 2 px."""
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = x.to(dtype=torch.float32, memory_format=torch.channels_last).div_(255.0)
        with _autocast(self.device, self.settings.autocast):
            found = self.teacher.detect(x)
        out = []
        for d in found:
            arrays = {"boxes": d["boxes"].float().cpu().numpy().reshape(-1, 4),
                      "scores": d["scores"].float().cpu().numpy().reshape(-1),
                      "labels": d["labels"].long().cpu().numpy().reshape(-1)}  # fmt: skip
            if "masks" in d:
                arrays.update(masks_to_rle_arrays(d["masks"]))
            bad = [k for k in ("boxes", "scores") if not np.isfinite(arrays[k]).all()]
            out.append((arrays, bad))
        return out

    def run(self, images: torch.Tensor, records: list[dict[str, Any]], writer: ShardWriter) -> None:
        """``images`` uint8 ``(B, H, W, 3)``, ``records`` their B records (same order)."""
        if getattr(self.teacher, "task", None) == "detect":
            per_image = self.detections(images)
        else:
            out = self.outputs(images)
        for i, rec in enumerate(records):
            row = {k: rec[k] for k in ("id", "source", "sha256", "bytes", "mtime_ns")}
            if getattr(self.teacher, "task", None) == "detect":
                arrays, bad = per_image[i]
            else:
                arrays = {}
                for name, (batch, _) in out.items():
                    arr = batch[i].numpy()  # (C, h, w), or (K,) for a classifier
                    arrays[name] = arr[0] if name == "disp" else arr  # disparity is stored (H, W)
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
        classes=list(getattr(teacher, "class_names", None) or []) or None,
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
        dtype="float32" if getattr(teacher, "task", None) == "detect" else "float16",
    )
    atomic_write_json(plan.out / MANIFEST, manifest.to_dict())
    return manifest
