"""Evaluate and run an image classifier (an anydistill ``task: classify`` checkpoint).

- :func:`evaluate_classifier`: top-1 / top-5 accuracy (:func:`~anydistill.eval.features.topk_accuracy`,
  exact fractions; top-5 only with 5 classes or more) and the mean cross-entropy on class folders
  (``DIR/<class>/<image>``, classes taken from the checkpoint: a folder of a class it does not know is a
  one-line error) or on held-out toyworld object crops (``toyworld:<domain>``).
- :func:`predict_classes`: the ``k`` most likely classes of every image under a folder, to
  ``predictions.csv`` and ``predictions.json``.

Images go through the evaluation transform of training (:func:`~anydistill.data.classify_sets.
classify_eval_transform`: resize to ``S x S``) and the model's own normalisation.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from anydistill.checkpoints import detect_kind
from anydistill.data.classify import OBJECT_CLASSES, ClassFolderDataset, ToyWorldObjects
from anydistill.data.classify_sets import classify_eval_transform
from anydistill.data.io import find_images, read_image
from anydistill.data.outputs import make_output_folder
from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET
from anydistill.errors import ConfigError, DataError
from anydistill.eval.evaluate import check_at_least, write_metrics_json
from anydistill.eval.features import topk_accuracy
from anydistill.loading import LoadedModel, load_model

__all__ = ["ClassPredictions", "evaluate_classifier", "is_classifier_checkpoint", "predict_classes"]


def is_classifier_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is an anydistill ``task: classify`` checkpoint (False for anything else, even a
    file that cannot be read: the caller's own loader names the problem)."""
    path = Path(path)
    if path.suffix != ".ckpt" or not path.is_file():
        return False
    try:
        return detect_kind(path).task == "classify"
    except DataError:
        return False


def _load_classifier(checkpoint: str | Path, device: str) -> LoadedModel:
    loaded = load_model(checkpoint, device=device)
    if loaded.task != "classify":
        raise DataError(checkpoint, f"is a {loaded.task!r} model, not an image classifier (task=classify)")
    return loaded


def classify_eval_dataset(data: str, classes: list[str], size: int, count: int, seed: int) -> Dataset:
    """``toyworld[:<domain>]`` (object crops from the held-out seeds) or class folders, labelled with the
    checkpoint's ``classes``."""
    transform = classify_eval_transform(size)
    if data.startswith("toyworld"):
        if list(classes) != list(OBJECT_CLASSES):
            raise DataError(data, f"the checkpoint's classes {classes[:5]} are not toyworld's object kinds")
        domain = data.partition(":")[2] or "wide"
        return ToyWorldObjects(
            domain, size, count, seed=seed + TOYWORLD_HELDOUT_SEED_OFFSET, transform=transform
        )
    return ClassFolderDataset(data, transform, classes=classes)


@torch.inference_mode()
def evaluate_classifier(
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
    """``{"top1", "top5" (K > 5: with 5 classes it is always 1), "loss" (mean cross-entropy), "images"}`` of a classifier on ``data``.

    Raises:
        ConfigError: ``count``, ``image_size`` or ``batch_size`` below 1, ``seed`` below 0.
        DataError: not a classifier checkpoint; ``data`` missing, empty, or with a class the checkpoint
            does not know (naming it).
    """
    check_at_least(1, count=count, image_size=image_size, batch_size=batch_size)
    check_at_least(0, seed=seed)
    loaded = _load_classifier(checkpoint, device)
    spec = loaded.preprocess.with_size(image_size or loaded.image_size)
    classes = list(loaded.classes.names)
    dataset = classify_eval_dataset(str(data), classes, spec.size, count, seed)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError(data, "no images to evaluate")
    logits, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size)
    for batch in tqdm(loader, desc="evaluate", disable=not progress, unit="batch"):
        image = batch["image"].to(device)  # (B, 3, S, S) in [0, 1]
        logits.append(loaded.model(spec.normalize(image)).float().cpu())  # (B, K)
        labels.append(batch["label"])
    scores, targets = torch.cat(logits), torch.cat(labels)  # (M, K), (M,)
    ks = (1, 5) if scores.shape[1] > 5 else (1,)
    metrics = {k: float(v) for k, v in topk_accuracy(scores, targets, ks).items()}
    metrics["loss"] = float(F.cross_entropy(scores, targets))
    metrics["images"] = float(len(targets))
    if out_json is not None:
        write_metrics_json(out_json, checkpoint, str(data), metrics)
    return metrics


@dataclass
class ClassPredictions:
    """What :func:`predict_classes` wrote and what it could not read."""

    written: list[Path] = field(default_factory=list)
    images: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"classified {self.images} image(s) into {', '.join(str(p) for p in self.written)}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable image(s):")
            lines += [f"  {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


@torch.inference_mode()
def predict_classes(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 8,
    image_size: int | None = None,
    device: str = "cpu",
    topk: int = 5,
) -> ClassPredictions:
    """The ``topk`` most likely classes of every image under ``images`` (recursive): ``out/predictions.csv``
    (``image, class_1, prob_1, ..., class_k, prob_k``) and ``out/predictions.json`` (the same as a list of
    ``{"image", "top": [[class, probability], ...]}``). Unreadable images are skipped and reported.

    Raises:
        ConfigError: ``batch_size``, ``image_size`` or ``topk`` below 1.
        DataError: no images, not a classifier checkpoint, an output folder that cannot be made.
    """
    check_at_least(1, batch_size=batch_size, image_size=image_size, topk=topk)
    root = Path(images)
    files = find_images(root)
    base = root if root.is_dir() else root.parent
    loaded = _load_classifier(checkpoint, device)
    spec = loaded.preprocess.with_size(image_size or loaded.image_size)
    transform = classify_eval_transform(spec.size)
    names = list(loaded.classes.names)
    k = min(topk, len(names))
    if k < 1:
        raise ConfigError(f"{checkpoint}: the checkpoint names no classes")
    out = make_output_folder(Path(out))
    report = ClassPredictions()
    rows: list[dict[str, object]] = []
    for start in range(0, len(files), batch_size):
        chunk, tensors = [], []
        for path in files[start : start + batch_size]:
            try:
                array = read_image(path)  # (H, W, 3) uint8
            except DataError as exc:
                report.skipped.append((path, exc.problem))
                continue
            chunk.append(path)
            tensors.append(transform(torch.from_numpy(array).permute(2, 0, 1)))  # (3, S, S)
        if not chunk:
            continue
        x = torch.stack(tensors).to(device)  # (B, 3, S, S)
        probs = F.softmax(loaded.model(spec.normalize(x)).float(), dim=1).cpu()  # (B, K)
        top = probs.topk(k, dim=1)
        for path, p, i in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
            rel = path.relative_to(base).as_posix()
            rows.append({"image": rel, "top": [[names[j], round(v, 6)] for j, v in zip(i, p, strict=True)]})
    report.images = len(rows)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob")])
        for row in rows:
            writer.writerow([row["image"]] + [v for pair in row["top"] for v in pair])  # type: ignore[attr-defined]
    os.replace(tmp, csv_path)
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(
        json.dumps({"checkpoint": str(checkpoint), "classes": names, "predictions": rows}, indent=1)
    )
    os.replace(tmp, json_path)
    report.written = [csv_path, json_path]
    return report
