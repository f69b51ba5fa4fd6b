"""Run trained students on images: the predictor (numpy in, numpy out) and folder I/O.

Like ``SamPredictor``, :class:`Predictor` is not an ``nn.Module``: it owns resizing, padding,
batching and mapping predictions back to each image's original size (all from the model's stored
:class:`~anydistill.preprocess.Preprocess`), so the model's ``forward`` stays a pure function of
normalised tensors. Loading goes through :mod:`anydistill.loading`; nothing here imports Lightning.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from anydistill.data.io import find_images, read_image
from anydistill.data.transforms import preprocess_transforms, restore_prediction
from anydistill.errors import ConfigError, DataError
from anydistill.loading import LoadedModel, load_model
from anydistill.viz import colorize_depth, colorize_mask, default_palette, overlay

__all__ = ["LoadedModel", "PredictReport", "Predictor", "find_images", "load_student", "predict_folder"]


def load_student(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A trained depth or semantic student (``best.ckpt``/``last.ckpt``) for inference.

    Raises:
        DataError: the file is missing, truncated, not an anydistill checkpoint, or a promptable model.
    """
    loaded = load_model(path, device=device)
    if loaded.task not in ("depth", "semantic"):
        raise DataError(
            path, f"is a {loaded.task!r} model; dense prediction takes a depth or semantic student"
        )
    return loaded


@dataclass
class Predictor:
    """Run a student on numpy images of any size; results come back at each image's own size.

    Args:
        student: from :func:`load_student`.
        image_size: the long side the model sees (default: the training size).
        batch_size: images per forward pass.
    """

    student: LoadedModel
    image_size: int | None = None
    batch_size: int = 8
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {self.batch_size}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"image_size: must be at least 1, got {self.image_size}")
        self.image_size = self.image_size or self.student.image_size
        self.preprocess = self.student.preprocess.with_size(self.image_size)
        multiple = self.preprocess.multiple
        if self.image_size % multiple:
            raise ConfigError(f"image_size: must be a multiple of {multiple}, got {self.image_size}")
        self.transform = preprocess_transforms(self.preprocess)
        self.model = self.student.model
        self.device = next(self.model.parameters()).device

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """``images``: uint8 ``(H, W, 3)`` each → disparity float32 ``(H, W)`` or class ids uint8 ``(H, W)``.

        Depth predictions are *relative* disparity (affine-invariant, larger = nearer), as Depth
        Anything's relative models output; align scale and shift to metric disparity if you need metres.
        """
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            samples = [self.transform({"image": img, "id": str(start + i)}) for i, img in enumerate(chunk)]
            batch = torch.stack([s["image"] for s in samples]).to(self.device)
            pred = self.model(self.preprocess.normalize(batch)).float()  # (B, C, S, S)
            for sample, p in zip(samples, pred, strict=True):
                p = restore_prediction(p, sample["pad"], sample["orig_size"])  # (C, H0, W0)
                if self.student.task == "depth":
                    out.append(p[0].clamp_min(0).cpu().numpy().astype(np.float32))
                else:
                    out.append(p.argmax(0).cpu().numpy().astype(np.uint8))
        return out


@dataclass
class PredictReport:
    """What :func:`predict_folder` wrote and what it could not read."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote predictions for {len(self.written)} image(s)"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable image(s):")
            lines += [f"  {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


def predict_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 8,
    image_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> PredictReport:
    """Predict every image under ``images`` and write the results under ``out``.

    Depth: ``out/raw/<rel>.npy`` (float32 relative disparity at the image's size),
    ``out/png16/<rel>.png`` (the same, scaled per image to 0..65535) and ``out/color/<rel>.png``.
    Semantic: ``out/masks/<rel>.png`` (class ids, palette PNG) and ``out/overlay/<rel>.png``.
    Unreadable images are skipped and listed in the report, never silently dropped.

    ``<rel>`` is the image's path relative to ``images`` without its extension (``photos/a.jpg`` →
    ``photos/a``), unless another input has the same one (``a.png`` and ``a.jpg``): those inputs keep their
    extension, ``raw/a.png.npy`` and ``raw/a.jpg.npy`` (see :func:`output_names`). So every input gets
    its own outputs, and the report lists exactly the files written.

    Raises:
        ConfigError: ``batch_size`` below 1, or a bad ``image_size``.
        DataError: no images, a bad checkpoint, or an output folder that cannot be created or written
            (checked before any prediction), each naming the path.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be at least 1, got {batch_size}")
    root = Path(images)
    files = find_images(root)
    base = root if root.is_dir() else root.parent
    names = output_names([path.relative_to(base) for path in files])
    out = Path(out)
    _check_output_folder(out)
    student = load_student(checkpoint, device=device)
    predictor = Predictor(student, image_size=image_size, batch_size=batch_size)
    _make_output_folder(out)
    report = PredictReport()
    palette = (
        np.asarray(student.classes.colors, np.uint8)
        if student.classes.colors
        else default_palette(max(1, student.classes.num_classes or 256))
    )
    bar = tqdm(total=len(files), desc="predict", disable=not progress, unit="img")
    for start in range(0, len(files), batch_size):
        paths, arrays = [], []
        for path in files[start : start + batch_size]:
            try:
                arrays.append(read_image(path))
                paths.append(path)
            except DataError as exc:
                report.skipped.append((path, exc.problem))
        for path, img, pred in zip(paths, arrays, predictor.predict(arrays), strict=True):
            name = names[path.relative_to(base)]
            if student.task == "depth":
                _save(out / "raw" / f"{name}.npy", pred)
                span = max(float(pred.max() - pred.min()), 1e-8)
                png16 = ((pred - pred.min()) / span * 65535).round().astype(np.uint16)
                _save_image(Image.fromarray(png16), out / "png16" / f"{name}.png")
                _save_image(Image.fromarray(colorize_depth(pred)), out / "color" / f"{name}.png")
                report.written.append(out / "raw" / f"{name}.npy")
            else:
                mask = Image.fromarray(pred, mode="P")
                mask.putpalette(palette[:256].flatten().tolist())
                _save_image(mask, out / "masks" / f"{name}.png")
                ov = overlay(img, colorize_mask(pred, palette))
                _save_image(Image.fromarray(ov), out / "overlay" / f"{name}.png")
                report.written.append(out / "masks" / f"{name}.png")
        bar.update(len(files[start : start + batch_size]))
    bar.close()
    return report


def output_names(rels: list[Path]) -> dict[Path, str]:
    """The output name (a relative path as text, no extension added yet) of each input ``rel``.

    An input's name is its relative path without the extension (``sub/a.png`` → ``sub/a``) unless that
    name is shared with another input: then it keeps its extension (``sub/a.png``, ``sub/a.jpg``). Repeated
    until no two names are equal (``a.png`` kept whole could meet ``a.png.jpg``'s short name), which
    ends because whole relative paths are distinct. Outputs append their own extension to the name
    (``raw/sub/a.png.npy``), so a dotted stem (``scan.v2.png`` → ``scan.v2.npy``) is never cut either.
    """
    names = {rel: rel.with_suffix("").as_posix() for rel in rels}
    while True:
        counts = Counter(names.values())
        shared = [rel for rel, name in names.items() if counts[name] > 1 and name != rel.as_posix()]
        if not shared:
            return names
        for rel in shared:
            names[rel] = rel.as_posix()


def _check_output_folder(out: Path) -> None:
    """Fail early, without creating anything, when ``out`` cannot be a writable folder."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "output folder is an existing file; give a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(out, f"output folder cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(out, f"output folder cannot be written: no write permission in {parent}")


def _make_output_folder(out: Path) -> None:
    """Create ``out`` and write a probe file there: a read-only file system fails here, not mid-run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise DataError(out, f"output folder cannot be created or written: {exc.strerror or exc}") from None


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _save_image(image: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
