"""Evaluation of a pre-trained backbone on a class-per-folder image set
(``anydistill evaluate --protocol knn|linear|finetune``; :func:`evaluate_protocol` dispatches).

The encoder comes from a ``pretrain`` checkpoint (``runs/x/checkpoints/best.ckpt``: the exported
encoder, DINO's teacher), or a timm spec ``timm:<name>@<weights file>`` (the run's ``backbone.pth``, or
any timm weights) or ``timm:<name>@random`` (the random-initialisation floor). Images are resized
(shorter side) and centre-cropped to ``image_size``, normalised with the encoder's statistics, and
embedded once (:func:`~anydistill.eval.features.extract_features`); then

- ``knn``: DINO's weighted k-NN on L2-normalised features, the train split as the memory bank
  (:func:`~anydistill.eval.features.knn_accuracy`, k = 20, T = 0.07);
- ``linear``: a linear classifier on the frozen train features, its learning rate chosen on a
  held-out part of the train split, reported on the test split
  (:func:`~anydistill.eval.features.linear_probe`);
- ``finetune`` (:func:`finetune_backbone`): the whole backbone and a fresh linear head trained on the
  augmented train split for a fixed number of steps, the weights chosen on a held-out part of the
  train split, reported on the test split (:func:`~anydistill.eval.finetune.finetune`). Every train class
  needs 2 images or more (one to train on, one held out); the frozen protocols take classes of one image.

Top-1 and top-5 (with at least 5 classes), as fractions. A ViT's crop must be a multiple of its patch
size (checked before any image is read); a ``timm:`` ViT takes any such size (timm's
``dynamic_img_size``: its position embeddings are interpolated).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from anydistill.checkpoints import MODEL_RECORD_KEY, detect_kind, read_checkpoint
from anydistill.data.classify import ClassFolderDataset
from anydistill.errors import ConfigError, DataError
from anydistill.eval.features import extract_features, knn_accuracy, linear_probe
from anydistill.eval.finetune import (
    FinetuneResult,
    FinetuneSettings,
    TrainCrops,
    finetune,
    holdout_split,
    seeded_devices,
)
from anydistill.loading import resolve_device
from anydistill.models.ssl_heads import EmbeddingEncoder

__all__ = [
    "EvalCrops",
    "FROZEN_PROTOCOLS",
    "FrozenEmbedding",
    "PROTOCOLS",
    "evaluate_frozen",
    "evaluate_protocol",
    "finetune_backbone",
    "load_embedding",
]

FROZEN_PROTOCOLS = ("knn", "linear")
#: The linear probe's learning rates (per batch of 256), swept on a hold-out of the train set (DINO's
#: evaluation sweeps a grid like it); the reported probe is refitted on all train features with the best.
LINEAR_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
PROTOCOLS = (*FROZEN_PROTOCOLS, "finetune")


@dataclass
class FrozenEmbedding:
    """An encoder ``(B, 3, S, S)`` normalised → ``(B, D)``, with its normalisation and input size."""

    encoder: EmbeddingEncoder
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int | None


def load_embedding(spec: str | Path, device: str = "cpu") -> FrozenEmbedding:
    """The encoder a ``pretrain`` checkpoint holds, or a ``timm:<name>@<weights>|@random`` spec, frozen.

    Raises:
        DataError: a missing / unreadable checkpoint, one that is not a pre-trained backbone, or a timm
            spec naming no weights.
    """
    text = str(spec)
    if text.startswith("timm:"):
        kind = detect_kind(text)  # the one parser of timm specs: refuses a spec naming no weights
        if kind.path is not None and not kind.path.is_file():
            raise DataError(kind.path, "weights file not found")
        try:  # a ViT at any multiple of its patch (position embeddings interpolated), as pre-training builds it
            vit = EmbeddingEncoder.probe(str(kind.name)).is_vit
            encoder = EmbeddingEncoder(
                str(kind.name), checkpoint_path=kind.path, **({"dynamic_img_size": True} if vit else {})
            )
        except Exception as exc:  # noqa: BLE001 - timm: unknown name, weights of another model
            raise DataError(text, f"cannot build the timm encoder: {type(exc).__name__}: {exc}") from None
        size = None
    else:
        path = Path(text)
        ckpt = read_checkpoint(path)
        record = ckpt.get(MODEL_RECORD_KEY) or {}
        if record.get("task") != "embed":
            raise DataError(
                path, f"is a {record.get('task') or 'plain weights'!r} checkpoint, not a pre-trained backbone "
                "(anydistill pretrain); give a timm:<name>@<weights> spec for other encoders",
            )  # fmt: skip
        arch = record["arch"]
        encoder = EmbeddingEncoder(arch["backbone"], **dict(arch.get("backbone_kwargs") or {}))
        prefix = str(arch.get("encoder_prefix", "encoder.")) + "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        encoder.model.load_state_dict(state)
        size = int(record.get("preprocess", {}).get("size") or 0) or None
    encoder = encoder.to(resolve_device(device)).eval().requires_grad_(False)
    return FrozenEmbedding(encoder, encoder.pixel_mean, encoder.pixel_std, size)


class EvalCrops(Dataset):
    """Labeled items (``{"image": uint8 (3, H, W), "label"}``) resized (shorter side) and centre-cropped to
    ``size``² and normalised: ``{"image": float (3, size, size), "label": int}`` (the kNN / probe input)."""

    def __init__(self, base: Dataset, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.base = base
        self.tf = v2.Compose([
            v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        return {"image": self.tf(item["image"]), "label": int(item["label"])}


def _image_size(frozen: FrozenEmbedding, image_size: int | None) -> int:
    """The crop size: ``image_size``, else the checkpoint's, else 224; a ViT's a multiple of its patch.

    Raises:
        ConfigError: a crop that is not a multiple of a ViT's patch size (naming the nearest that is).
    """
    size = image_size or frozen.image_size or 224
    enc = frozen.encoder
    if enc.is_vit and enc.patch_size and size % enc.patch_size:
        patch = enc.patch_size
        raise ConfigError(
            f"image_size (--size): {size} is not a multiple of {enc.name}'s patch size {patch}; "
            f"use {max(patch, round(size / patch) * patch)}"
        )
    return size


def _check_protocol(protocol: str, allowed: tuple[str, ...]) -> None:
    if protocol == "finetune" and protocol not in allowed:
        raise ConfigError(
            "protocol: 'finetune' trains the backbone: finetune_backbone or evaluate_protocol runs it"
        )
    if protocol not in allowed:
        raise ConfigError(f"protocol: must be one of {', '.join(allowed)}, got {protocol!r}")


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")


def _features(model: nn.Module, dataset: Dataset, batch_size: int, workers: int, device: str,
              progress: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    return extract_features(model, loader, device=device, progress=progress)


def evaluate_frozen(
    spec: str | Path,
    train_data: str | Path,
    test_data: str | Path,
    protocol: str = "knn",
    image_size: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    epochs: int = 100,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Top-1/top-5 of the frozen encoder ``spec`` on ``test_data`` with ``train_data`` as the labeled set
    (class-per-folder image sets with the same classes), by ``protocol`` ``knn`` or ``linear``.

    Raises:
        ConfigError: an unknown protocol, or ``image_size``/``k``/``epochs``/``batch_size`` below 1, or a
            ViT crop that is not a multiple of its patch size.
        DataError: as :func:`load_embedding` and :class:`~anydistill.data.classify.ClassFolderDataset`.
    """
    _check_protocol(protocol, FROZEN_PROTOCOLS)
    _check_positive(image_size=image_size, k=k, epochs=epochs, batch_size=batch_size)
    frozen = load_embedding(spec, device)
    size = _image_size(frozen, image_size)
    train = ClassFolderDataset(train_data)
    test = ClassFolderDataset(test_data, classes=train.classes)
    num_classes = len(train.classes)
    args = (batch_size, num_workers, device, progress)
    train_f, train_y = _features(frozen.encoder, EvalCrops(train, size, frozen.mean, frozen.std), *args)
    test_f, test_y = _features(frozen.encoder, EvalCrops(test, size, frozen.mean, frozen.std), *args)
    if protocol == "knn":
        result = knn_accuracy(train_f, train_y, test_f, test_y, num_classes, k=min(k, len(train_f)),
                              temperature=temperature)  # fmt: skip
    else:
        # The sweep holds out part of every class: with a class of one image, one rate (0.1) is used.
        counts = torch.bincount(train_y, minlength=num_classes)
        lrs = LINEAR_LRS if int(counts.min()) >= 2 else LINEAR_LRS[2]
        result = linear_probe(train_f, train_y, test_f, test_y, num_classes, epochs=epochs, lr=lrs, seed=seed)
    metrics = {key: float(v) for key, v in result.items() if isinstance(v, (int, float))}
    metrics.update(train_images=float(len(train)), test_images=float(len(test)), image_size=float(size))
    return metrics


def finetune_backbone(
    spec: str | Path,
    train_data: str | Path,
    test_data: str | Path,
    settings: FinetuneSettings | None = None,
    image_size: int | None = None,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> FinetuneResult:
    """The backbone ``spec`` fine-tuned with a fresh linear head on ``train_data`` (class-per-folder image
    sets with the same classes), the weights chosen on a held-out part of ``train_data``, scored on
    ``test_data`` (:func:`~anydistill.eval.finetune.finetune`; ``settings``: its budget, recipe and seed).
    The checkpoint or weights file is only read. The metrics add ``train_images`` and ``image_size``. The
    whole run is a function of ``settings.seed`` (a ``timm:<name>@random`` backbone's initialisation
    included); torch's global random state is left as it was.

    Raises:
        ConfigError: a bad setting or ``image_size``, a ViT crop that is not a multiple of its patch size.
        DataError: as :func:`load_embedding` and :class:`~anydistill.data.classify.ClassFolderDataset`; a
            train class with fewer than 2 images.
    """
    s = settings or FinetuneSettings()
    s.check()
    _check_positive(image_size=image_size)
    resolve_device(device)  # a bad device name fails here, before anything is loaded
    with torch.random.fork_rng(devices=seeded_devices()):
        torch.manual_seed(s.seed)  # a timm:<name>@random backbone's initialisation too; restored after
        frozen = load_embedding(spec, device)
    size = _image_size(frozen, image_size)
    train = ClassFolderDataset(train_data)
    test = ClassFolderDataset(test_data, classes=train.classes)
    counts = torch.bincount(torch.tensor(train.targets), minlength=len(train.classes)).tolist()
    for name, n in zip(train.classes, counts, strict=True):
        if n < 2:
            raise DataError(
                Path(train_data) / name,
                f"class {name!r} has {n} image; --protocol finetune holds out at least one image of every "
                "train class to choose the checkpoint and trains on the others, so each class needs 2 or more",
            )  # fmt: skip
    fit_idx, hold_idx = holdout_split(train.targets, s.holdout_fraction, s.seed)
    mean, std = frozen.mean, frozen.std
    result = finetune(
        frozen.encoder, frozen.encoder.dim, len(train.classes), TrainCrops(Subset(train, fit_idx), size, mean, std),
        EvalCrops(Subset(train, hold_idx), size, mean, std), EvalCrops(test, size, mean, std), s,
        device=device, num_workers=num_workers, progress=progress,
    )  # fmt: skip
    result.metrics.update(train_images=float(len(train)), image_size=float(size))
    return result


def evaluate_protocol(
    spec: str | Path,
    train_data: str | Path,
    test_data: str | Path,
    protocol: str = "knn",
    image_size: int | None = None,
    batch_size: int = 256,
    steps: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """``evaluate --protocol``: :func:`evaluate_frozen` for ``knn`` / ``linear``, :func:`finetune_backbone`'s
    metrics for ``finetune`` (``batch_size`` its training batch, ``steps`` its budget, default
    :class:`~anydistill.eval.finetune.FinetuneSettings`'s).

    Raises:
        ConfigError: an unknown protocol, or a bad value (one line naming it).
    """
    _check_protocol(protocol, PROTOCOLS)
    _check_positive(image_size=image_size, batch_size=batch_size)
    if protocol != "finetune":
        if steps is not None:
            raise ConfigError(
                f"steps: only --protocol finetune trains for a number of steps, not {protocol!r}"
            )
        return evaluate_frozen(spec, train_data, test_data, protocol, image_size=image_size,
                               batch_size=batch_size, num_workers=num_workers, device=device, seed=seed,
                               progress=progress)  # fmt: skip
    settings = FinetuneSettings(batch_size=batch_size, seed=seed)
    if steps is not None:
        settings = replace(settings, steps=steps)
    return finetune_backbone(spec, train_data, test_data, settings, image_size=image_size,
                             num_workers=num_workers, device=device, progress=progress).metrics  # fmt: skip
