"""Load trained students and run them on images: the predictor (numpy in, numpy out) and folder I/O.

Like ``SamPredictor``, :class:`Predictor` is not an ``nn.Module``: it owns resizing, padding,
batching and mapping predictions back to each image's original size, so the model's ``forward``
stays a pure function of normalised tensors.
"""

from __future__ import annotations

import inspect
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from anydistill.config import TrainConfig, config_from_dict
from anydistill.data.datamodule import ClassInfo
from anydistill.data.io import IMAGE_EXTENSIONS, read_image
from anydistill.data.transforms import eval_transforms, restore_prediction
from anydistill.errors import DataError
from anydistill.methods.supervised import SupervisedModule
from anydistill.viz import colorize_depth, colorize_mask, default_palette, overlay


@dataclass
class LoadedStudent:
    """A trained model with what is needed to use it."""

    module: SupervisedModule
    task: str
    image_size: int
    classes: ClassInfo
    config: TrainConfig | None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict in a torch checkpoint file, read with ``torch.load(weights_only=True)``: tensors, numbers,
    strings and containers only, so a checkpoint cannot run code when loaded (Lightning's own loader
    unpickles anything). anydistill's checkpoints hold nothing else.

    Raises:
        DataError: missing, empty, truncated or corrupt file; Python objects beyond plain data; not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "checkpoint is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            # torch's message runs to a page; the line that names the refused object is the useful one.
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            what = f" ({found.group(1)})" if found else ""
            raise DataError(
                path,
                f"holds Python objects beyond tensors and plain data{what}, which anydistill does not "
                "unpickle (weights_only=True); re-save its state_dict",
            ) from None
        raise DataError(path, f"not a readable torch checkpoint (truncated or corrupt?): {exc}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError(path, f"not a readable torch checkpoint (truncated or corrupt?): {exc}") from None
    if not isinstance(ckpt, dict):
        raise DataError(path, f"not a checkpoint (expected a dict, found {type(ckpt).__name__})")
    return ckpt


def load_student(path: str | Path, device: str | torch.device = "cpu") -> LoadedStudent:
    """Load an anydistill checkpoint (``best.ckpt``/``last.ckpt``) for inference.

    Raises:
        DataError: the file is missing, truncated, not a torch checkpoint, or not made by anydistill.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise DataError(path, "not an anydistill training checkpoint (no 'state_dict'/'hyper_parameters')")
    # Students from any method (supervised, distill) are a SupervisedModule at inference time:
    # keep its arguments and its weights, drop training-only parts (e.g. a feature projection).
    accepted = inspect.signature(SupervisedModule.__init__).parameters
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k in accepted}
    try:
        module = SupervisedModule(**hp)
        keys = set(module.state_dict())
        module.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if k in keys})
    except (TypeError, KeyError, RuntimeError) as exc:
        raise DataError(path, f"checkpoint does not match its model description: {exc}") from None
    module.eval().to(device)
    config = config_from_dict(ckpt["anydistill_config"]) if "anydistill_config" in ckpt else None
    size = (config.data.eval_size or config.data.image_size) if config else 256
    classes = ClassInfo(hp.get("class_names") or [], hp.get("class_colors") or [], hp.get("ignore_index", 255))
    return LoadedStudent(module=module, task=hp["task"], image_size=size, classes=classes, config=config)


@dataclass
class Predictor:
    """Run a student on numpy images of any size; results come back at each image's own size.

    Args:
        student: from :func:`load_student`.
        image_size: the long side the model sees (default: the training size).
        batch_size: images per forward pass.
    """

    student: LoadedStudent
    image_size: int | None = None
    batch_size: int = 8
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        self.image_size = self.image_size or self.student.image_size
        multiple = self.student.module.model.input_multiple
        if self.image_size % multiple:
            raise ValueError(f"image_size={self.image_size} must be a multiple of {multiple}")
        self.transform = eval_transforms(self.image_size, multiple)
        self.device = next(self.student.module.parameters()).device

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
            pred = self.student.module(batch).float()  # (B, C, S, S)
            for sample, p in zip(samples, pred, strict=True):
                p = restore_prediction(p, sample["pad"], sample["orig_size"])  # (C, H0, W0)
                if self.student.task == "depth":
                    out.append(p[0].clamp_min(0).cpu().numpy().astype(np.float32))
                else:
                    out.append(p.argmax(0).cpu().numpy().astype(np.uint8))
        return out


def find_images(folder: str | Path) -> list[Path]:
    """Images under ``folder`` (recursive, sorted); a clear error when there are none."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise DataError(folder, "no such file or folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(folder, f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    return files


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
    """
    from PIL import Image

    student = load_student(checkpoint, device=device)
    predictor = Predictor(student, image_size=image_size, batch_size=batch_size)
    root = Path(images)
    files = find_images(root)
    base = root if root.is_dir() else root.parent
    out = Path(out)
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
            rel = path.relative_to(base).with_suffix("")
            if student.task == "depth":
                _save(out / "raw" / rel.with_suffix(".npy"), pred)
                span = max(float(pred.max() - pred.min()), 1e-8)
                png16 = ((pred - pred.min()) / span * 65535).round().astype(np.uint16)
                _save_image(Image.fromarray(png16), out / "png16" / rel.with_suffix(".png"))
                _save_image(Image.fromarray(colorize_depth(pred)), out / "color" / rel.with_suffix(".png"))
                report.written.append(out / "raw" / rel.with_suffix(".npy"))
            else:
                mask = Image.fromarray(pred, mode="P")
                mask.putpalette(palette[:256].flatten().tolist())
                _save_image(mask, out / "masks" / rel.with_suffix(".png"))
                ov = overlay(img, colorize_mask(pred, palette))
                _save_image(Image.fromarray(ov), out / "overlay" / rel.with_suffix(".png"))
                report.written.append(out / "masks" / rel.with_suffix(".png"))
        bar.update(len(files[start : start + batch_size]))
    bar.close()
    return report


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _save_image(image: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
