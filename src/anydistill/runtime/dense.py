"""Depth and semantic students from an export folder, run by onnxruntime: torch-free ``predict``.

:class:`OnnxPredictor` is :class:`anydistill.inference.Predictor` for an exported ``model.onnx``
(numpy in, numpy out, results at each image's own size), and :func:`predict_folder_onnx` writes the
same files as :func:`anydistill.inference.predict_folder`
(:mod:`anydistill.data.prediction_files`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from anydistill.data.io import find_images, read_image
from anydistill.data.prediction_files import (
    PredictReport,
    check_output_folder,
    output_names,
    prepare_output_folder,
    write_depth,
    write_semantic,
)
from anydistill.errors import ConfigError, DataError
from anydistill.runtime.export_folder import ExportFolder
from anydistill.runtime.image_ops import dense_input, restore_prediction
from anydistill.viz import default_palette

__all__ = ["OnnxPredictor", "predict_folder_onnx"]

#: Input pixels of the semantic inputs a batch holds for their overlays before it is run (64 Mpx), as
#: :func:`anydistill.inference.predict_folder`: large photos go one by one.
MAX_HELD_PIXELS = 64_000_000


class OnnxPredictor:
    """An exported depth or semantic student on numpy images of any size.

    Args:
        folder: an export folder (``anydistill export``), or its :class:`ExportFolder`.
        batch_size: images per run (a graph exported with a fixed batch runs that many at a time).
        threads: onnxruntime intra-op threads (``0``: one per core).

    Raises:
        DataError: not an export folder, or a promptable one.
    """

    def __init__(self, folder: str | Path | ExportFolder, batch_size: int = 8, threads: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {batch_size}")
        self.folder = folder if isinstance(folder, ExportFolder) else ExportFolder.read(folder, threads)
        if self.folder.task not in ("depth", "semantic"):
            raise DataError(
                self.folder.path, f"is a {self.folder.task!r} export; predict takes a depth or semantic one"
            )
        self.session = self.folder.session("model")
        self.input_name = self.session.get_inputs()[0].name
        fixed = self.folder.batch_dim("model")
        self.batch_size = fixed or batch_size
        self._fixed_batch = fixed is not None
        self.side = self.folder.input_size[0]

    @property
    def task(self) -> str:
        return self.folder.task

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
        """uint8 ``(H, W, 3)`` → (input ``(3, S, S)``, pad, ``(H, W)``)."""
        x, pad = dense_input(image, self.folder.preprocess, self.side)
        return x, pad, (int(image.shape[0]), int(image.shape[1]))

    def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Inputs ``(3, S, S)`` each → the graph's output float32 ``(B, C, S, S)``; a fixed-batch graph
        gets its last batch filled up with copies, which are dropped."""
        batch = np.stack(inputs)  # (B, 3, S, S)
        n = len(batch)
        if self._fixed_batch and n < self.batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - n, axis=0)])
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], np.float32)[:n]

    def restore(
        self, pred: np.ndarray, pad: tuple[int, int, int, int], orig_size: tuple[int, int]
    ) -> np.ndarray:
        """One ``(C, S, S)`` output → disparity float32 ``(H, W)`` or class ids uint8 ``(H, W)``."""
        return restore_prediction(pred, pad, orig_size, argmax=self.task == "semantic")

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """``images``: uint8 ``(H, W, 3)`` each → relative disparity float32 ``(H, W)`` (depth) or class
        ids uint8 ``(H, W)`` (semantic), each at its image's size."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            prepared = [self.prepare(img) for img in images[start : start + self.batch_size]]
            preds = self.run([x for x, _, _ in prepared])
            out += [self.restore(p, pad, size) for (_, pad, size), p in zip(prepared, preds, strict=True)]
        return out


def predict_folder_onnx(
    folder: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 8,
    threads: int = 0,
    progress: bool = True,
) -> PredictReport:
    """:func:`anydistill.inference.predict_folder` with an exported model: the same output files, and
    unreadable images skipped and listed in the report.

    Raises:
        ConfigError: ``batch_size`` below 1, or onnxruntime is not installed.
        DataError: no images, a bad export folder, or an output folder that cannot be written.
    """
    root = Path(images)
    files = find_images(root)
    base = root if root.is_dir() else root.parent
    names = output_names([path.relative_to(base) for path in files])
    out = Path(out)
    check_output_folder(out)
    predictor = OnnxPredictor(folder, batch_size=batch_size, threads=threads)
    prepare_output_folder(out)
    semantic = predictor.task == "semantic"
    classes = predictor.folder.classes
    colors = classes.get("colors") or []
    palette = (
        np.asarray(colors, np.uint8)
        if colors
        else default_palette(max(1, len(classes.get("names") or []) or 256))
    )
    report = PredictReport()
    bar = tqdm(total=len(files), desc="predict", disable=not progress, unit="img")
    pending: list[tuple[Path, np.ndarray | None, np.ndarray, tuple[int, int, int, int], tuple[int, int]]] = []
    for i, path in enumerate(files):
        try:
            image = read_image(path)
        except DataError as exc:
            report.skipped.append((path, exc.problem))
        else:
            x, pad, size = predictor.prepare(image)
            pending.append((path, image if semantic else None, x, pad, size))
            del image
        held = sum(entry[1].shape[0] * entry[1].shape[1] for entry in pending if entry[1] is not None)
        if pending and (
            len(pending) == predictor.batch_size or held >= MAX_HELD_PIXELS or i == len(files) - 1
        ):
            preds = predictor.run([entry[2] for entry in pending])
            for (path, image, _, pad, size), pred in zip(pending, preds, strict=True):
                name = names[path.relative_to(base)]
                result = predictor.restore(pred, pad, size)
                if semantic:
                    report.written.append(write_semantic(out, name, result, image, palette))
                else:
                    report.written.append(write_depth(out, name, result))
            pending = []
        bar.update(1)
    bar.close()
    return report
