"""The Python API: everything the CLI does, callable from a script or a notebook.

>>> from anydistill import api
>>> api.make_toyworld("data/toy_train", count=500, size=128, domain="wide", seed=0)
>>> result = api.train("configs/depth_toyworld.yaml", overrides=["trainer.max_epochs=2"])
>>> api.evaluate(result.best_checkpoint, "toyworld:wide")
>>> api.predict(result.best_checkpoint, "my_images/", "predictions/")
>>> api.export_model(result.best_checkpoint, "exported/")  # ONNX graphs + export.json, checked
"""

from __future__ import annotations

from pathlib import Path

from anydistill.config import TrainConfig, load_config
from anydistill.data.toyworld import write_toyworld
from anydistill.data.toyworld.writer import check_toyworld_args
from anydistill.demos import run_demo
from anydistill.errors import ConfigError
from anydistill.eval.classify import (
    ClassPredictions,
    evaluate_classifier,
    is_classifier_checkpoint,
    predict_classes,
)
from anydistill.eval.detection import (
    DETECTION_MIN_SCORE,
    DetectionPredictions,
    evaluate_detector,
    is_detector_checkpoint,
    predict_detections,
)
from anydistill.eval.evaluate import evaluate as _evaluate_dense
from anydistill.eval.protocols import evaluate_protocol
from anydistill.export import ExportResult, export_model
from anydistill.inference import Predictor, PredictReport, load_student, predict_folder
from anydistill.training import TrainResult
from anydistill.training import distill as _distill
from anydistill.training import pretrain as _pretrain
from anydistill.training import train as _train

__all__ = [
    "ExportResult",
    "Predictor",
    "TrainConfig",
    "demo",
    "distill",
    "evaluate",
    "evaluate_backbone",
    "export_model",
    "load_config",
    "load_student",
    "make_toyworld",
    "predict",
    "pretrain",
    "train",
]


def _resolve(config: TrainConfig | str | Path | None, overrides: list[str] | None) -> TrainConfig:
    """A ready config, or defaults ← YAML file ← ``key=value`` overrides."""
    if isinstance(config, TrainConfig):
        if overrides:
            raise ValueError("overrides apply to a YAML file; edit the TrainConfig object directly instead")
        return config
    return load_config(config, overrides)


def make_toyworld(
    out: str | Path, count: int = 100, size: int = 128, domain: str = "wide", seed: int = 0
) -> Path:
    """Render ``count`` toyworld scenes of ``domain`` into ``out`` in the user folder format.

    Raises:
        ConfigError: ``count`` or ``size`` below 1, ``seed`` below 0, or an unknown ``domain`` (one line
            naming the argument), before anything is written.
    """
    check_toyworld_args(count=count, size=size, seed=seed)
    return write_toyworld(Path(out), count=count, size=size, domain=domain, seed=seed)


def train(config: TrainConfig | str | Path | None = None, overrides: list[str] | None = None) -> TrainResult:
    """Train a student from a :class:`TrainConfig`, a YAML path, or the defaults, plus overrides.

    Rerunning with the same ``run_dir`` resumes from its ``last.ckpt``.
    """
    return _train(_resolve(config, overrides))


def distill(
    config: TrainConfig | str | Path | None = None, overrides: list[str] | None = None
) -> TrainResult:
    """Train a student with the Depth Anything recipe (``distill.cache`` must name a teacher-pass cache)."""
    return _distill(_resolve(config, overrides))


def pretrain(
    config: TrainConfig | str | Path | None = None, overrides: list[str] | None = None
) -> TrainResult:
    """Self-supervised pre-training of a backbone on unlabeled images (``method``: simclr, moco, dino,
    mae); the run folder's ``backbone.pth`` holds its timm weights."""
    return _pretrain(_resolve(config, overrides))


def evaluate_backbone(
    checkpoint: str | Path,
    train_data: str | Path,
    test_data: str | Path,
    protocol: str = "knn",
    image_size: int | None = None,
    batch_size: int = 256,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Top-1/top-5 of a pre-trained backbone (a ``pretrain`` checkpoint or ``timm:<name>@<weights>``) on the
    class folders ``test_data``, with ``train_data`` as the labeled set: ``protocol`` ``knn`` or ``linear``
    on its frozen features, or ``finetune`` (the backbone and a new linear head trained ``steps`` steps of
    ``batch_size`` images; see :func:`anydistill.eval.protocols.evaluate_protocol`)."""
    return evaluate_protocol(
        checkpoint, train_data, test_data, protocol=protocol, image_size=image_size, batch_size=batch_size,
        steps=steps, seed=seed, device=device, progress=progress,
    )  # fmt: skip


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
    """Metrics of a student on ``data`` (``toyworld:<domain>`` or a folder): depth / semantic
    (:func:`anydistill.eval.evaluate.evaluate`), for a classifier top-1 / top-5 accuracy
    (:func:`anydistill.eval.classify.evaluate_classifier`), for a detector COCO box mAP
    (:func:`anydistill.eval.detection.evaluate_detector`; ``data`` may also be a COCO JSON)."""
    fn = evaluate_classifier if is_classifier_checkpoint(checkpoint) else _evaluate_dense
    if is_detector_checkpoint(checkpoint):
        fn = evaluate_detector
    return fn(checkpoint, data, count=count, image_size=image_size, batch_size=batch_size, seed=seed,
              device=device, out_json=out_json, progress=progress)  # fmt: skip


def predict(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 8,
    image_size: int | None = None,
    device: str = "cpu",
    min_score: float | None = None,
) -> PredictReport | ClassPredictions | DetectionPredictions:
    """Predict every image under ``images`` into ``out`` (see :func:`anydistill.inference.predict_folder`;
    a classifier's top-5 classes: :func:`anydistill.eval.classify.predict_classes`; a detector's boxes as COCO
    JSON and overlays: :func:`anydistill.eval.detection.predict_detections`, detections below ``min_score``,
    default 0.3, left out)."""
    if is_detector_checkpoint(checkpoint):
        score = DETECTION_MIN_SCORE if min_score is None else min_score
        return predict_detections(
            checkpoint, images, out, image_size=image_size, device=device, min_score=score
        )
    if min_score is not None:
        raise ConfigError("min_score: for detectors (task=detect) only")
    if is_classifier_checkpoint(checkpoint):
        return predict_classes(
            checkpoint, images, out, batch_size=batch_size, image_size=image_size, device=device
        )
    return predict_folder(
        checkpoint, images, out, batch_size=batch_size, image_size=image_size, device=device
    )


def demo(out: str | Path = "demo_out", quick: bool = False, seeds: int = 1) -> Path:
    """Run the whole path on toyworld and return the markdown report's path; ``seeds=2`` trains both
    students twice and reports the spread of the gain."""
    return run_demo(Path(out), quick=quick, seeds=seeds)
