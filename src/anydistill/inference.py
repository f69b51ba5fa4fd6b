"""Run trained students on images: the predictor (numpy in, numpy out) and folder I/O.

Like ``SamPredictor``, :class:`Predictor` is not an ``nn.Module``: it owns resizing, padding,
batching and mapping predictions back to each image's original size (all from the model's stored
:class:`~anydistill.preprocess.Preprocess`), so the model's ``forward`` stays a pure function of
normalised tensors. Loading goes through :mod:`anydistill.loading`; nothing here imports Lightning.

Memory is bounded by the model's input size plus the output maps, whatever the photo's size: the image
is resized down in bands of rows (:func:`~anydistill.data.bands.resize_image_bands`, no full-size float
copy), the prediction is enlarged back and turned into disparity or class ids one band of output rows
at a time (:func:`~anydistill.data.transforms.restore_prediction_bands`; class ids are interpolated
only near class boundaries), and :func:`predict_folder` makes its 16-bit, colour and overlay pictures
band by band, holding one full-size picture at a time. ``anydistill predict`` on a 12000 x 9000 photo
peaks at about 1.7 GB (torch and the model included; benchmarks/bench_predict_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anydistill.data.bands import resize_image_bands
from anydistill.data.io import find_images, read_image
from anydistill.data.prediction_files import (
    PredictReport,
    check_output_folder,
    output_names,
    prepare_output_folder,
    write_depth,
    write_semantic,
)
from anydistill.data.sample_ops import Sample
from anydistill.data.transforms import PadToSize, preprocess_transforms, restore_prediction_bands
from anydistill.errors import ConfigError, DataError
from anydistill.loading import LoadedModel, load_model
from anydistill.viz import default_palette

__all__ = ["LoadedModel", "PredictReport", "Predictor", "find_images", "load_student", "predict_folder"]


def to_channels_last(model: torch.nn.Module) -> bool:
    """Put ``model`` in channels-last (NHWC) memory format when it has convolutions; return whether it did.

    NHWC convolutions: depth_tiny 1.49×, seg_tiny 1.35× faster at 544² on 2 CPU cores, the same output to
    float rounding (benchmarks/results/bench_zoo; ``anydistill bench``'s channels_last rows). Inputs are
    then best given as ``x.contiguous(memory_format=torch.channels_last)``.
    """
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if convolutional:
        model.to(memory_format=torch.channels_last)
    return convolutional


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
        preprocess_transforms(self.preprocess)  # refuses specs the dense students do not use
        self._pad = PadToSize(self.image_size, self.image_size)
        self.model = self.student.model
        self.device = next(self.model.parameters()).device
        self.channels_last = to_channels_last(self.model)

    def prepare(self, image: np.ndarray) -> Sample:
        """uint8 ``(H, W, 3)`` → the model's input sample: ``"image"`` float32 ``(3, S, S)`` in [0, 1]
        (long side resized to ``S``, padded bottom/right; not normalised), ``"pad"``, ``"orig_size"``.

        Bit for bit what :func:`~anydistill.data.transforms.preprocess_transforms` gives, without its
        full-size float copy of the image (:func:`~anydistill.data.bands.resize_image_bands`).
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        x = resize_image_bands(image, self.preprocess.resized_shape(height, width)).clamp_(0.0, 1.0)
        return self._pad({"image": x, "orig_size": (height, width)})  # image (3, S, S)

    @torch.inference_mode()
    def run(self, samples: list[Sample]) -> torch.Tensor:
        """Samples from :meth:`prepare` → the model's float32 output ``(B, C, S, S)`` (on its device)."""
        batch = torch.stack([s["image"] for s in samples]).to(self.device)  # (B, 3, S, S)
        x = self.preprocess.normalize(batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float().contiguous()

    @torch.inference_mode()
    def restore(self, pred: torch.Tensor, sample: Sample) -> np.ndarray:
        """One ``(C, S, S)`` output of :meth:`run` → disparity float32 ``(H, W)`` (clamped at 0) or class ids
        uint8 ``(H, W)`` at the image's size, filled one band of rows at a time: the full-size ``(C, H, W)``
        map is never made. Equal to the argmax / values of the whole restored map to float rounding
        (class ids: except where two classes tie to float rounding)."""
        height, width = sample["orig_size"]
        depth = self.student.task == "depth"
        out = np.empty((height, width), np.float32 if depth else np.uint8)
        for y0, y1, band in restore_prediction_bands(
            pred, sample["pad"], sample["orig_size"], argmax=not depth
        ):
            if depth:  # band (1, b, W)
                out[y0:y1] = band[0].clamp_min(0).cpu().numpy()
            else:  # band (b, W): class ids
                out[y0:y1] = band.cpu().numpy().astype(np.uint8)
        return out

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """``images``: uint8 ``(H, W, 3)`` each → disparity float32 ``(H, W)`` or class ids uint8 ``(H, W)``.

        Depth predictions are *relative* disparity (affine-invariant, larger = nearer), as Depth
        Anything's relative models output; align scale and shift to metric disparity if you need metres.
        """
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            samples = [self.prepare(img) for img in images[start : start + self.batch_size]]
            for sample, pred in zip(samples, self.run(samples), strict=True):
                out.append(self.restore(pred, sample))
        return out


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

    Memory: a batch holds the model inputs (``S x S`` each) and, for the semantic overlays, at most
    about 64 Mpx of input images (a batch of large photos is cut short); outputs are written one image
    at a time, one full-size picture at a time.

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
    check_output_folder(out)
    student = load_student(checkpoint, device=device)
    predictor = Predictor(student, image_size=image_size, batch_size=batch_size)
    prepare_output_folder(out)
    report = PredictReport()
    palette = (
        np.asarray(student.classes.colors, np.uint8)
        if student.classes.colors
        else default_palette(max(1, student.classes.num_classes or 256))
    )
    semantic = student.task == "semantic"
    bar = tqdm(total=len(files), desc="predict", disable=not progress, unit="img")
    # A batch holds the model inputs (small) and, for the overlays, the semantic inputs' images: it ends
    # at batch_size images or once those images reach _MAX_HELD_PIXELS, so large photos go one by one.
    pending: list[tuple[Path, np.ndarray | None, Sample]] = []
    held = 0
    for i, path in enumerate(files):
        try:
            image = read_image(path)
        except DataError as exc:
            report.skipped.append((path, exc.problem))
        else:
            pending.append((path, image if semantic else None, predictor.prepare(image)))
            held += image.shape[0] * image.shape[1] if semantic else 0
            del image  # depth: the full-size image is not needed past prepare
        if pending and (len(pending) == batch_size or held >= _MAX_HELD_PIXELS or i == len(files) - 1):
            preds = predictor.run([sample for _, _, sample in pending])  # (B, C, S, S)
            for (path, image, sample), pred in zip(pending, preds, strict=True):
                name = names[path.relative_to(base)]
                # The (H, W) map goes straight in, unnamed here, so the writer can free it part-way.
                if semantic:
                    written = write_semantic(out, name, predictor.restore(pred, sample), image, palette)
                else:
                    written = write_depth(out, name, predictor.restore(pred, sample))
                report.written.append(written)
            pending, held, image = [], 0, None
        bar.update(1)
    bar.close()
    return report


#: Input pixels of the images a batch holds for the semantic overlays before it is run (64 Mpx, 192 MB).
_MAX_HELD_PIXELS = 64_000_000
