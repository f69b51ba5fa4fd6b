"""Evaluate a trained student on toyworld or a user folder: a metrics table and JSON."""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from anydistill.data.folder import FolderDataset
from anydistill.data.instances import CocoInstances, FolderInstances, InstanceDataset, ToyWorldInstances
from anydistill.data.outputs import make_output_folder
from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET, ToyWorldDataset
from anydistill.data.transforms import collate_samples, eval_transforms
from anydistill.errors import ConfigError, DataError
from anydistill.eval.interactive import evaluate_interactive
from anydistill.eval.metrics import DepthMetrics, SegmentationMetrics
from anydistill.inference import load_student, to_channels_last
from anydistill.loading import load_model


def eval_dataset(data: str, task: str, image_size: int, multiple: int, count: int, seed: int) -> Dataset:
    """``data`` is ``toyworld:<domain>`` (the held-out seeds) or a folder in the user format."""
    transform = eval_transforms(image_size, multiple)
    if data.startswith("toyworld"):
        domain = data.partition(":")[2] or "wide"
        return ToyWorldDataset(
            domain, image_size, count, seed=seed + TOYWORLD_HELDOUT_SEED_OFFSET, transform=transform
        )
    root = Path(data)
    if not root.exists():
        raise DataError(root, "evaluation data not found (give a folder or toyworld:<domain>)")
    return FolderDataset(root, task=task, transform=transform)


def check_at_least(minimum: int, **values: int | None) -> None:
    """Refuse each ``name=value`` below ``minimum`` (``None`` = the default, allowed) with a one-line
    :class:`~anydistill.errors.ConfigError` naming it."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _check_not_empty(dataset: Dataset, data: str) -> None:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError(data, "no images to evaluate")


@torch.inference_mode()
def evaluate(
    checkpoint: str | Path,
    data: str = "toyworld:wide",
    count: int = 256,
    image_size: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "cpu",
    out_json: str | Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of ``checkpoint`` on ``data``: depth (AbsRel, RMSE, δ1..δ3 after per-image
    least-squares alignment in disparity, as Depth Anything evaluates relative depth) or semantic
    (per-class IoU, mIoU, pixel accuracy). Convolutional students run in channels-last memory format
    (faster on CPU; the same figures to float rounding).

    Raises:
        ConfigError: ``count``, ``image_size`` or ``batch_size`` below 1, or ``seed`` below 0 (one line
            naming the argument), before the checkpoint is read.
        DataError: a bad checkpoint, or ``data`` missing or holding no images, naming the path.
    """
    check_at_least(1, count=count, image_size=image_size, batch_size=batch_size)
    check_at_least(0, seed=seed)
    student = load_student(checkpoint, device=device)
    spec = student.preprocess.with_size(image_size or student.image_size)
    dataset = eval_dataset(str(data), student.task, spec.size, spec.multiple, count, seed)
    _check_not_empty(dataset, str(data))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    if student.task == "depth":
        metrics_fn: DepthMetrics | SegmentationMetrics = DepthMetrics()
    else:
        num_classes = int(student.record["arch"].get("num_classes") or student.classes.num_classes)
        metrics_fn = SegmentationMetrics(num_classes=num_classes, ignore_index=student.classes.ignore_index)
    metrics_fn.to(device)
    memory_format = torch.channels_last if to_channels_last(student.model) else torch.contiguous_format
    for batch in tqdm(loader, desc="evaluate", disable=not progress, unit="batch"):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        x = spec.normalize(batch["image"]).contiguous(memory_format=memory_format)
        pred = student.model(x)  # (B, C, S, S)
        if student.task == "depth":
            metrics_fn.update(pred, batch["depth"], batch["depth_valid"])
        else:
            metrics_fn.update(pred.argmax(1), batch["semantic"])
    values = metrics_fn.compute()
    metrics: dict[str, float] = {}
    for key, value in values.items():
        value = torch.as_tensor(value)
        if value.numel() == 1:
            metrics[key] = float(value)
        elif student.classes.names and value.numel() == len(student.classes.names):
            metrics.update({f"iou/{n}": float(v) for n, v in zip(student.classes.names, value, strict=True)})
    metrics["images"] = float(len(dataset))
    if out_json is not None:
        write_metrics_json(out_json, checkpoint, data, metrics)
    return metrics


def write_metrics_json(
    out_json: str | Path, checkpoint: str | Path, data: str, metrics: dict[str, float]
) -> None:
    """``{"checkpoint", "data", "metrics"}`` as JSON, written atomically (a temporary file moved into place).

    Raises:
        DataError: the file or its folder cannot be written (a parent is a file, no permission, ...).
    """
    out_json = Path(out_json)
    make_output_folder(out_json.parent)
    tmp = out_json.with_name(out_json.name + ".tmp")
    try:
        tmp.write_text(
            json.dumps({"checkpoint": str(checkpoint), "data": str(data), "metrics": metrics}, indent=2)
        )
        os.replace(tmp, out_json)
    except OSError as e:
        if tmp.is_file():  # ours, half written (a directory of that name is the user's: left alone)
            tmp.unlink()
        raise DataError(out_json, f"cannot write the metrics: {e.strerror or e}") from None


def format_table(metrics: dict[str, float]) -> str:
    """A two-column markdown table."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    return "\n".join(lines)


def promptable_eval_dataset(
    data: str,
    image_size: int,
    count: int,
    seed: int = 0,
    max_instances: int = 16,
    min_area: int = 64,
    original_masks: bool = True,
) -> Dataset:
    """``toyworld:<domain>`` (held-out seeds), a folder with ``instances/`` PNGs, or a COCO JSON file
    (its images next to it, or under ``images/`` beside it), as an
    :class:`~anydistill.data.instances.InstanceDataset` with a fixed choice of objects."""
    if data.startswith("toyworld"):
        domain = data.partition(":")[2] or "wide"
        source = ToyWorldInstances(domain, image_size, count, seed=seed + TOYWORLD_HELDOUT_SEED_OFFSET)
    else:
        path = Path(data)
        if not path.exists():
            raise DataError(
                path, "evaluation data not found (give a folder, a COCO .json or toyworld:<domain>)"
            )
        if path.suffix == ".json":
            root = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
            source = CocoInstances(path, root)
        else:
            source = FolderInstances(path)
    return InstanceDataset(
        source,
        image_size,
        max_instances,
        min_area,
        sampling="fixed",
        seed=seed,
        original_masks=original_masks,
    )


def evaluate_promptable(
    checkpoint: str | Path,
    data: str = "toyworld:wide",
    count: int = 64,
    max_clicks: int = 20,
    max_instances: int = 16,
    seed: int = 0,
    device: str = "cpu",
    out_json: str | Path | None = None,
    progress: bool = True,
    frame: str = "original",
) -> dict[str, float]:
    """The interactive protocol (:mod:`anydistill.eval.interactive`) for a promptable model: mIoU after
    1..``max_clicks`` simulated clicks (each at the centre of the largest error), NoC@85/90 (clicks to
    reach IoU 0.85/0.90, ``max_clicks`` when never), 1-click mIoU and oracle mIoU (best of 3 masks);
    measured on the source images' masks (``frame="original"``) or in the model's resized frame
    (``"input"``).

    Raises:
        ConfigError: ``count``, ``max_clicks`` or ``max_instances`` below 1, ``seed`` below 0, or an
            unknown ``frame`` (one line naming the argument), before the checkpoint is read.
        DataError: a bad or non-promptable checkpoint, or ``data`` missing or holding no images.
    """
    check_at_least(1, count=count, max_clicks=max_clicks, max_instances=max_instances)
    check_at_least(0, seed=seed)
    if frame not in ("original", "input"):
        raise ConfigError(f"frame: must be 'original' or 'input', got {frame!r}")
    loaded = load_model(checkpoint, device=device)
    if loaded.task != "promptable":
        raise DataError(checkpoint, f"is a {loaded.task!r} model, not a promptable (SAM) model")
    model = loaded.model
    dataset = promptable_eval_dataset(
        str(data),
        int(model.image_encoder.img_size),
        count,
        seed,
        max_instances,
        original_masks=frame == "original",
    )
    _check_not_empty(dataset, str(data))
    samples = tqdm(dataset, desc="evaluate", disable=not progress, unit="image")
    with torch.no_grad():
        metrics = evaluate_interactive(model, samples, max_clicks=max_clicks, frame=frame)  # type: ignore[arg-type]
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["images"] = float(len(dataset))
    if out_json is not None:
        write_metrics_json(out_json, checkpoint, data, metrics)
    return metrics
