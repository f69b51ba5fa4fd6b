"""Frozen-feature evaluation of a pre-trained backbone on a class-per-folder image set
(``anydistill evaluate --protocol knn|linear``).

The encoder comes from a ``pretrain`` checkpoint (``runs/x/checkpoints/best.ckpt``: the exported
encoder, DINO's teacher), or a timm spec ``timm:<name>@<weights file>`` (the run's ``backbone.pth``, or
any timm weights) or ``timm:<name>@random`` (the random-initialisation floor). Images are resized
(shorter side) and centre-cropped to ``image_size``, normalised with the encoder's statistics, and
embedded once (:func:`~anydistill.eval.features.extract_features`); then

- ``knn``: DINO's weighted k-NN on L2-normalised features, the train split as the memory bank
  (:func:`~anydistill.eval.features.knn_accuracy`, k = 20, T = 0.07);
- ``linear``: a linear classifier on the frozen train features, its learning rate chosen on a
  held-out part of the train split, reported on the test split
  (:func:`~anydistill.eval.features.linear_probe`).

Top-1 and top-5 (with at least 5 classes), as fractions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from anydistill.checkpoints import MODEL_RECORD_KEY, detect_kind, read_checkpoint
from anydistill.data.classify import ClassFolderDataset
from anydistill.errors import ConfigError, DataError
from anydistill.eval.features import extract_features, knn_accuracy, linear_probe
from anydistill.loading import resolve_device
from anydistill.models.ssl_heads import EmbeddingEncoder

__all__ = ["EvalCrops", "FrozenEmbedding", "PROTOCOLS", "evaluate_frozen", "load_embedding"]

PROTOCOLS = ("knn", "linear")


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
        try:
            encoder = EmbeddingEncoder(str(kind.name), checkpoint_path=kind.path)
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
        ConfigError: an unknown protocol, or ``image_size``/``k``/``epochs``/``batch_size`` below 1.
        DataError: as :func:`load_embedding` and :class:`~anydistill.data.classify.ClassFolderDataset`.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    for name, value in (("image_size", image_size), ("k", k), ("epochs", epochs), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    frozen = load_embedding(spec, device)
    size = image_size or frozen.image_size or 224
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
        result = linear_probe(train_f, train_y, test_f, test_y, num_classes, epochs=epochs, seed=seed)
    metrics = {key: float(v) for key, v in result.items() if isinstance(v, (int, float))}
    metrics.update(train_images=float(len(train)), test_images=float(len(test)), image_size=float(size))
    return metrics
