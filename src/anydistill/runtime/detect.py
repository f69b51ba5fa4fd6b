"""Detectors from an export folder, run by onnxruntime: torch-free ``predict`` for ``task=detect``.

The exported graph (:func:`anydistill.export.graphs.detector_graph`) takes one image in [0, 1], resized to
long side ``S`` and zero-padded to ``S × S`` (it normalises inside), and returns its post-processed
detections in that frame. :class:`OnnxDetector` prepares images the way ``anydistill predict`` does
(antialiased bilinear resize), and maps the boxes (and Mask R-CNN masks) back to each image's pixels;
:func:`predict_detections_onnx` writes the same ``detections.json`` and overlays as the PyTorch path
(:mod:`anydistill.data.detection_files`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from anydistill.data.detection_files import (
    DETECTION_MIN_SCORE,
    CocoResults,
    DetectionPredictions,
    inside_image,
    save_detection_overlay,
)
from anydistill.data.io import find_images, read_image
from anydistill.data.prediction_files import check_output_folder, prepare_output_folder
from anydistill.errors import ConfigError, DataError
from anydistill.runtime.export_folder import ExportFolder
from anydistill.runtime.image_ops import resize_channels

__all__ = ["OnnxDetector", "predict_detections_onnx"]


class OnnxDetector:
    """An exported detector on numpy images of any size.

    Args:
        folder: an export folder of a ``task=detect`` model, or its :class:`ExportFolder`.
        threads: onnxruntime intra-op threads (``0``: one per core).

    Raises:
        DataError: not an export folder, or not a detector's.
    """

    def __init__(self, folder: str | Path | ExportFolder, threads: int = 0) -> None:
        self.folder = folder if isinstance(folder, ExportFolder) else ExportFolder.read(folder, threads)
        if self.folder.task != "detect":
            raise DataError(self.folder.path, f"is a {self.folder.task!r} export, not a detector's")
        self.session = self.folder.session("model")
        self.side = self.folder.input_size[0]
        self.class_names = list(self.folder.meta.get("classes", {}).get("names") or [])
        self.has_masks = any(o.name == "masks" for o in self.session.get_outputs())

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 ``(H, W, 3)`` → the graph's input float32 ``(1, 3, S, S)`` and the resized ``(h, w)``."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        h, w = self.folder.preprocess.with_size(self.side).resized_shape(*image.shape[:2])
        chw = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)  # (3, H, W) in [0, 1]
        x = np.zeros((1, 3, self.side, self.side), np.float32)
        x[0, :, :h, :w] = np.clip(resize_channels(chw, (h, w)), 0.0, 1.0)  # antialiased bilinear
        return x, (h, w)

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 ``(H, W, 3)`` → ``boxes`` float32 ``(N, 4)`` xyxy in the image's pixels (clipped to it),
        ``scores (N,)``, ``labels`` int64 ``(N,)`` and, for Mask R-CNN, ``masks`` bool ``(N, H, W)``."""
        height, width = int(image.shape[0]), int(image.shape[1])
        x, (h, w) = self.prepare(image)
        outputs = self.session.run(None, {"image": x})
        boxes = np.asarray(outputs[0], np.float32).reshape(-1, 4) * np.float32(
            [width / w, height / h, width / w, height / h]
        )
        limits = np.array([width, height, width, height], np.float32)
        found = {"boxes": np.minimum(np.maximum(boxes, 0.0), limits), "scores": np.asarray(outputs[1], np.float32),
                 "labels": np.asarray(outputs[2], np.int64)}  # fmt: skip
        if self.has_masks:  # (N, 1, S, S) probabilities in the frame → bool (N, H, W)
            probs = np.asarray(outputs[3], np.float32)[:, 0, :h, :w]
            found["masks"] = (
                resize_channels(probs, (height, width)) > 0.5
                if len(probs)
                else np.zeros((0, height, width), bool)
            )
        return found


def predict_detections_onnx(
    folder: str | Path,
    images: str | Path,
    out: str | Path,
    min_score: float = DETECTION_MIN_SCORE,
    threads: int = 0,
    overlays: bool = True,
    progress: bool = True,
) -> DetectionPredictions:
    """:func:`anydistill.eval.detection.predict_detections` with an exported detector: ``out/detections.json``
    (COCO) and ``out/overlays/``; unreadable images skipped and listed. ``min_score`` (default 0.3, as the
    PyTorch path) drops detections below it; the graph's own threshold (``export --min-score``) applies first.

    Raises:
        ConfigError: ``min_score`` outside [0, 1], or onnxruntime missing.
        DataError: no images, a bad export folder, or an output folder that cannot be written.
    """
    if not 0 <= min_score <= 1:
        raise ConfigError(f"min_score: must be in [0, 1], got {min_score}")
    root = Path(images)
    files = find_images(root)
    base = root if root.is_dir() else root.parent
    out = Path(out)
    check_output_folder(out)
    detector = OnnxDetector(folder, threads=threads)
    prepare_output_folder(out)
    names = detector.class_names
    coco = CocoResults(names)
    report = DetectionPredictions()
    for path in tqdm(files, desc="predict", disable=not progress, unit="img"):
        try:
            image = read_image(path)
        except DataError as exc:
            report.skipped.append((path, exc.problem))
            continue
        found = detector.detect(image)
        # a box wholly in the square frame's padding clips to nothing
        keep = inside_image(found["boxes"]) & (found["scores"] >= min_score)
        found = {k: v[keep] for k, v in found.items()}
        rel = path.relative_to(base).as_posix()
        coco.add(rel, image.shape[0], image.shape[1], found["boxes"], found["scores"], found["labels"],
                 found.get("masks"))  # fmt: skip
        if overlays:
            text = [f"{names[k] if k < len(names) else k} {s:.2f}" for k, s in zip(found["labels"].tolist(),
                                                                                  found["scores"].tolist(), strict=True)]  # fmt: skip
            target = out / "overlays" / Path(rel).with_suffix(".png")
            report.written.append(
                save_detection_overlay(target, image, found["boxes"], text, found.get("masks"))
            )
        report.images += 1
        report.detections += len(found["boxes"])
    if report.images == 0 and not report.skipped:
        raise DataError(root, "no images to predict")
    report.written.insert(0, coco.write(out / "detections.json"))
    return report
