"""Full fine-tuning of a pre-trained backbone with a fresh linear head: the third protocol of
``anydistill evaluate --protocol finetune`` (after weighted k-NN and the linear probe, which keep the
backbone frozen).

The recipe is the usual supervised fine-tuning of a self-supervised backbone (MAE's and DINO's
fine-tuning, at a small budget):

- **data**: a stratified hold-out of the *train* split (:func:`holdout_split`: at least one image of
  every class) chooses the checkpoint; the rest is trained on with the standard augmentation
  (:class:`TrainCrops`: random crop with zero padding and a flip for images of at most
  ``SMALL_IMAGE`` px, CIFAR's; Inception's random resized crop, scale 0.08-1, and a flip above), the
  hold-out and the test split are resized and centre-cropped as the frozen protocols do;
- **model**: the backbone and a linear head ``Linear(D, C)`` (weight ``N(0, 0.01²)``, bias 0, as DINO's
  linear classifier), :class:`FinetuneClassifier`; every layer trains, BatchNorm in train mode (its
  running statistics follow the new data);
- **optimisation**: a fixed budget of ``steps`` optimiser steps (epochs follow from the set's size),
  SGD with momentum 0.9 (or AdamW), cross-entropy, peak learning rate ``lr · batch_size / 256`` for the
  head and ``backbone_lr_mult`` times that for the backbone (a pre-trained backbone moves less than a
  fresh head), no weight decay on norms and biases (:func:`~anydistill.optim.param_groups`), linear
  warm-up over ``warmup_fraction`` of the steps then cosine to 0 (:class:`~anydistill.optim.WarmupCosine`);
- **checkpoint choice**: the weights are scored on the hold-out ``evals`` times, evenly spaced, the last
  at the final step; the best hold-out top-1 wins (a tie goes to the lower hold-out cross-entropy, then to
  the earlier step); the test split is scored once, with the chosen weights, and chooses nothing.

Deterministic for a given ``seed`` and ``num_workers`` on the CPU: the head's initialisation and the
augmentation draw from the global generator inside :func:`torch.random.fork_rng` (seeded with ``seed``,
restored afterwards), the batch order and the loader workers' seeds from a :class:`torch.Generator`
seeded with ``seed``. CUDA kernels may add their own non-determinism.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from anydistill.data.classify_sets import SMALL_IMAGE  # the one threshold: classify training uses it too
from anydistill.errors import ConfigError
from anydistill.eval.features import topk_accuracy
from anydistill.optim import WarmupCosine, param_groups

__all__ = [
    "SMALL_IMAGE",
    "FinetuneClassifier",
    "FinetuneResult",
    "FinetuneSettings",
    "TrainCrops",
    "finetune",
    "holdout_split",
]


@dataclass(frozen=True)
class FinetuneSettings:
    """The fine-tuning budget and recipe (see the module docstring).

    Attributes:
        steps: optimiser steps (the budget), >= 1.
        batch_size: training images per step, >= 2 (BatchNorm trains on batch statistics); a train split
            smaller than that trains on all of it each step.
        optimizer: ``"sgd"`` (momentum ``momentum``) or ``"adamw"``.
        lr: the head's peak learning rate for a batch of 256 (scaled linearly with ``batch_size``).
        backbone_lr_mult: the backbone's learning rate as a fraction of the head's, in ``(0, 1]``.
        weight_decay: of the weights with two or more dimensions (norms and biases get none), >= 0.
        momentum: SGD's momentum, in ``[0, 1)``.
        warmup_fraction: share of the steps of linear warm-up, in ``[0, 1)``.
        holdout_fraction: share of each train class held out to choose the checkpoint, in ``(0, 1)``
            (at least one image per class).
        evals: hold-out evaluations over the run, >= 1 (at most ``steps``).
        seed: the run's seed, >= 0.
    """

    steps: int = 1000
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_fraction: float = 0.05
    holdout_fraction: float = 0.1
    evals: int = 10
    seed: int = 0

    def check(self) -> None:
        """Raises:
        ConfigError: one line naming the first bad setting and its allowed range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "optimizer":
                if value not in ("sgd", "adamw"):
                    raise ConfigError(f"optimizer: must be 'sgd' or 'adamw', got {value!r}")
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{f.name}: must be a finite number, got {value!r}")
        for name, low in (("steps", 1), ("batch_size", 2), ("evals", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                why = " (BatchNorm trains on the statistics of a batch)" if name == "batch_size" else ""
                raise ConfigError(f"{name}: must be an int >= {low}{why}, got {value!r}")
        checks = (
            ("lr", self.lr > 0, "> 0"),
            ("backbone_lr_mult", 0 < self.backbone_lr_mult <= 1, "in (0, 1]"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("warmup_fraction", 0 <= self.warmup_fraction < 1, "in [0, 1)"),
            ("holdout_fraction", 0 < self.holdout_fraction < 1, "in (0, 1)"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{name}: must be {allowed}, got {getattr(self, name)!r}")


def seeded_devices() -> list[int]:
    """Every CUDA device: ``torch.manual_seed`` seeds them all, so :func:`torch.random.fork_rng` must restore
    them all to leave the caller's random state as it was (not only the device in use)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def holdout_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified ``(fit, holdout)`` indices of ``labels``: of each class of ``n_c`` images,
    ``min(n_c − 1, max(1, round(fraction · n_c)))`` drawn at random (a generator seeded with ``seed``) are
    held out, so every class is both trained on and scored. Both lists are sorted.

    Raises:
        ValueError: a class with fewer than 2 images (it could not be on both sides).
    """
    y = torch.as_tensor(list(labels), dtype=torch.long)  # (N,)
    counts = torch.bincount(y).tolist() if y.numel() else []
    small = [c for c, n in enumerate(counts) if 0 < n < 2]
    if small:
        raise ValueError(f"class(es) {small} have fewer than 2 images; a hold-out needs 2 per class")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y.numel(), generator=gen)  # (N,)
    order = perm[torch.argsort(y[perm], stable=True)]  # (N,) grouped by class, random within
    fit: list[int] = []
    hold: list[int] = []
    start = 0
    for n_c in counts:
        n_hold = min(n_c - 1, max(1, round(fraction * n_c))) if n_c else 0
        hold += order[start : start + n_hold].tolist()
        fit += order[start + n_hold : start + n_c].tolist()
        start += n_c
    return sorted(fit), sorted(hold)


class TrainCrops(Dataset):
    """Labeled items (``{"image": uint8 (3, H, W), "label"}``) augmented for training and normalised:
    ``{"image": float (3, size, size), "label": int}``.

    ``size <= SMALL_IMAGE``: resize (shorter side) and centre-crop to ``size`` (as the evaluation crops),
    then a random ``size`` crop of the image padded with ``max(1, size // 8)`` zeros on each side (CIFAR's
    4 px at 32 px); larger: a random resized crop (scale 0.08-1, aspect 3/4-4/3). Then a horizontal flip
    with probability 0.5. The randomness is torch's global generator (of the loader worker).
    """

    def __init__(self, base: Dataset, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.base = base
        if size <= SMALL_IMAGE:
            crop: list[Any] = [v2.Resize(size, antialias=True), v2.CenterCrop(size),
                               v2.RandomCrop(size, padding=max(1, size // 8))]  # fmt: skip
        else:
            crop = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True)]
        self.tf = v2.Compose([
            *crop, v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        return {"image": self.tf(item["image"]), "label": int(item["label"])}


class FinetuneClassifier(nn.Module):
    """A backbone and a linear head: ``(B, 3, S, S)`` normalised → ``(B, C)`` logits.

    Args:
        encoder: ``(B, 3, S, S)`` → ``(B, D)`` pooled features (its parameters are trained).
        dim: ``D``.
        num_classes: ``C``.
    """

    def __init__(self, encoder: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))  # (B, C)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        metrics: ``top1`` (and ``top5`` with 5 classes or more) on the test split, the chosen checkpoint's
            ``holdout_top1`` and ``best_step``, ``steps``, ``fit_images``, ``holdout_images``,
            ``test_images``.
        model: the classifier with the chosen weights, in eval mode, on the training device.
        history: ``(step, holdout top-1, holdout cross-entropy)`` of every hold-out evaluation.
    """

    metrics: dict[str, float]
    model: FinetuneClassifier
    history: list[tuple[int, float, float]] = field(default_factory=list)


def _forever(loader: DataLoader) -> Iterator[Any]:
    while True:  # a new epoch, a new permutation of the loader's generator
        yield from loader


@torch.no_grad()
def _logits(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(M, C)`` logits and ``(M,)`` labels of ``loader`` in eval mode, on the CPU."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model(batch["image"].to(device)).float().cpu())
        labels.append(batch["label"].reshape(-1))
    return torch.cat(logits), torch.cat(labels)


def _ranks(num_classes: int) -> tuple[int, ...]:
    return (1, 5) if num_classes > 5 else (1,)  # with 5 classes top-5 is always 1


def finetune(
    encoder: nn.Module,
    dim: int,
    num_classes: int,
    fit: Dataset,
    holdout: Dataset,
    test: Dataset,
    settings: FinetuneSettings | None = None,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    eval_batch_size: int = 256,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune ``encoder`` with a fresh linear head on ``fit``, choose the weights on ``holdout``, score
    them on ``test`` (see the module docstring for the recipe).

    ``encoder`` is trained in place (pass a copy to keep the original); it must be on ``device``.

    Args:
        encoder: ``(B, 3, S, S)`` normalised → ``(B, D)``.
        dim: ``D``.
        num_classes: ``C`` >= 2.
        fit: augmented training items ``{"image": float (3, S, S), "label": int}`` (:class:`TrainCrops`).
        holdout: evaluation items of the held-out train images (``EvalCrops``), non-empty.
        test: evaluation items of the test split, non-empty.
        settings: the budget and recipe; :class:`FinetuneSettings` defaults when ``None``.
        device: where the model trains.
        num_workers: loader processes.
        eval_batch_size: batch of the hold-out and test passes.
        progress: show a tqdm bar over the steps.

    Raises:
        ConfigError: a bad setting; a loss that is no longer finite (lower ``lr``).
        ValueError: fewer than 2 images in ``fit``, or an empty ``holdout`` / ``test``.
    """
    s = settings or FinetuneSettings()
    s.check()
    n_fit = len(fit)  # type: ignore[arg-type]
    if n_fit < 2 or not len(holdout) or not len(test):  # type: ignore[arg-type]
        raise ValueError(f"need >= 2 fit images and non-empty hold-out and test sets, got {n_fit}, "
                         f"{len(holdout)}, {len(test)}")  # type: ignore[arg-type]  # fmt: skip
    dev = torch.device(device)
    with torch.random.fork_rng(devices=seeded_devices()):
        torch.manual_seed(s.seed)
        model = FinetuneClassifier(encoder, dim, num_classes).to(dev).requires_grad_(True)
        batch_size = min(s.batch_size, n_fit)
        lr = s.lr * batch_size / 256  # the linear scaling rule
        groups = param_groups(
            model, lr, s.weight_decay, encoder=model.encoder, encoder_lr_mult=s.backbone_lr_mult
        )
        if s.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=s.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr)
        schedule = WarmupCosine(round(s.warmup_fraction * s.steps), s.steps, min_lr_ratio=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        loader = DataLoader(
            fit, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
            generator=torch.Generator().manual_seed(s.seed), persistent_workers=num_workers > 0,
        )  # fmt: skip
        scoring = [
            DataLoader(ds, batch_size=eval_batch_size, num_workers=num_workers) for ds in (holdout, test)
        ]
        evals = min(s.evals, s.steps)
        eval_at = {math.ceil(s.steps * i / evals) for i in range(1, evals + 1)}  # the last: steps
        best: tuple[float, float, int] | None = None  # (top1, cross-entropy, step)
        best_state: dict[str, Tensor] = {}
        history: list[tuple[int, float, float]] = []
        batches = _forever(loader)
        bar = tqdm(range(1, s.steps + 1), desc="finetune", unit="step", disable=not progress)
        for step in bar:
            model.train()  # BatchNorm on batch statistics, running statistics updated
            batch = next(batches)
            logits = model(batch["image"].to(dev, non_blocking=True))  # (B, C)
            loss = F.cross_entropy(logits, batch["label"].to(dev))
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"lr: the fine-tuning loss is {loss.item()} at step {step}; lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if step in eval_at:
                scores, labels = _logits(model, scoring[0], dev)
                top1 = topk_accuracy(scores, labels, ks=(1,))["top1"]
                ce = float(F.cross_entropy(scores, labels))
                history.append((step, top1, ce))
                bar.set_postfix(loss=f"{loss.item():.3f}", holdout_top1=f"{top1:.3f}")
                if best is None or top1 > best[0] or (top1 == best[0] and ce < best[1]):
                    best = (top1, ce, step)
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        assert best is not None  # the last step is always scored
        model.load_state_dict(best_state)
        scores, labels = _logits(model, scoring[1], dev)
    metrics: dict[str, float] = dict(topk_accuracy(scores, labels, ks=_ranks(num_classes)))
    metrics.update(holdout_top1=best[0], best_step=float(best[2]), steps=float(s.steps), fit_images=float(n_fit),
                   holdout_images=float(len(holdout)), test_images=float(len(test)))  # type: ignore[arg-type]  # fmt: skip
    return FinetuneResult(metrics, model.eval(), history)
