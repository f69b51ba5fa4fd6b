"""``load_teacher(spec)``: one entry point from a user's teacher string to a :class:`Teacher`.

Accepted specs (nothing is ever downloaded):

* ``path/to/best.ckpt`` — an anydistill training checkpoint → :class:`AnydistillTeacher`;
* a Hugging Face folder whose ``config.json`` has ``model_type`` ``depth_anything`` →
  :class:`HFDepthAnythingTeacher`; ``dinov2`` / ``dinov2_with_registers`` → :class:`HFDinov2Encoder`;
* ``timm:<model_name>@<weights file>`` → :class:`TimmEncoder` with those weights;
  ``timm:<model_name>@random`` → a randomly initialised one (tests, ablations); a bare
  ``timm:<model_name>`` is refused (it would give random features without a word);
* a segment-anything ``.pth`` (``sam_vit_b_01ec64.pth`` …), or an anydistill promptable checkpoint →
  :class:`SamTeacher` (image embeddings, for MobileSAM-style encoder distillation);
* classifiers (``task == "classify"``, :mod:`anydistill.teachers.classifiers`): an anydistill classify
  checkpoint and a Hugging Face folder whose ``architectures`` is an ``*ForImageClassification`` (other
  than Depth Anything and DINOv2 folders, which stay what they were) are recognised as such;
  ``load_teacher(spec, task="classify")`` asks for a classifier whatever the spec, so
  ``timm:<name>@<weights>`` gives a :class:`TimmClassifierTeacher` (its head kept) instead of an encoder;
* box teachers (``task == "detect"``, :mod:`anydistill.teachers.detectors`): an anydistill detect
  checkpoint → :class:`AnydistillDetectorTeacher`; a Hugging Face folder whose ``architectures`` is an
  ``*ForObjectDetection`` (DETR, RT-DETR, YOLOS, …) → :class:`HFDetectorTeacher`; an OWL-ViT / OWLv2
  folder (``model_type`` ``owlvit`` / ``owlv2``) → :class:`HFOpenVocabularyDetectorTeacher`, queried
  with the user's class names (``classes=``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anydistill.checkpoints import EXPECTED, CheckpointKind, detect_kind
from anydistill.errors import DataError
from anydistill.teachers.anydistill_ckpt import AnydistillTeacher
from anydistill.teachers.base import Teacher
from anydistill.teachers.classifiers import (
    AnydistillClassifierTeacher,
    HFClassifierTeacher,
    TimmClassifierTeacher,
    is_hf_classifier,
)
from anydistill.teachers.detectors import (
    AnydistillDetectorTeacher,
    HFDetectorTeacher,
    HFOpenVocabularyDetectorTeacher,
    is_hf_detector,
    is_hf_open_vocabulary_detector,
)
from anydistill.teachers.encoders import DINOV2_MODEL_TYPES, HFDinov2Encoder, TimmEncoder
from anydistill.teachers.hf_depth_anything import HFDepthAnythingTeacher
from anydistill.teachers.hf_utils import read_config
from anydistill.teachers.sam import SamTeacher


def load_teacher(spec: str | Path, task: str | None = None, **kwargs: Any) -> Teacher:
    """Build the teacher ``spec`` names; ``kwargs`` go to its adapter (``device``, ``image_size``, ...).
    What ``spec`` is comes from :func:`anydistill.checkpoints.detect_kind`, the one place that tells;
    ``task="classify"`` asks for a classifier (``predict -> (B, K)``) whatever the spec (see the module doc).

    Raises:
        DataError: ``spec`` names nothing we can load (missing, truncated, unknown kind), naming the file;
            a ``timm:`` spec that names no weights (neither a file nor ``@random``); or, with
            ``task="classify"``, a spec that is not a classifier.
        ValueError: a ``task`` other than None and ``"classify"``.
    """
    if task not in (None, "classify"):
        raise ValueError(f"task must be None or 'classify', got {task!r}")
    kind = detect_kind(spec)
    if task == "classify" or _is_classifier(kind):
        return _classifier(kind, **kwargs)
    if kind.kind == "timm":
        assert kind.name is not None
        return TimmEncoder(kind.name, checkpoint_path=kind.path, **kwargs)  # path None: ``@random``
    if kind.kind == "sam" or (kind.kind == "anydistill" and kind.task == "promptable"):
        return SamTeacher(kind.path, **kwargs)
    if kind.kind == "anydistill" and kind.task == "detect":
        return AnydistillDetectorTeacher(kind.path, **kwargs)
    if kind.kind == "huggingface" and kind.path is not None and is_hf_detector(read_config(kind.path)):
        config = read_config(kind.path)
        if is_hf_open_vocabulary_detector(config):
            return HFOpenVocabularyDetectorTeacher(kind.path, **kwargs)
        if str(config.get("model_type", "")).replace("_", "-") in _TEXT_QUERIED_UNSUPPORTED:
            raise DataError(
                kind.path / "config.json", f"{config['model_type']}: of the text-queried detectors, OWL-ViT and "
                "OWLv2 are read (a closed-set *ForObjectDetection folder works as it is)",
            )  # fmt: skip
        return HFDetectorTeacher(kind.path, **kwargs)
    if kind.kind == "anydistill":
        return AnydistillTeacher(kind.path, **kwargs)
    assert kind.path is not None
    if kind.task == "depth_anything":
        return HFDepthAnythingTeacher(kind.path, **kwargs)
    if kind.task in DINOV2_MODEL_TYPES:
        return HFDinov2Encoder(kind.path, **kwargs)
    raise DataError(kind.path / "config.json", f"unsupported model_type {kind.task!r}; {EXPECTED}")


#: Text-queried detectors transformers has that need their own adapter (not written yet).
_TEXT_QUERIED_UNSUPPORTED = ("grounding-dino", "mm-grounding-dino", "omdet-turbo")


def _is_classifier(kind: CheckpointKind) -> bool:
    """An anydistill classify checkpoint, or a Hugging Face classification folder (not DA / DINOv2)."""
    if kind.kind == "anydistill":
        return kind.task == "classify"
    if kind.kind != "huggingface" or kind.task == "depth_anything" or kind.task in DINOV2_MODEL_TYPES:
        return False
    assert kind.path is not None
    return is_hf_classifier(read_config(kind.path))


def _classifier(kind: CheckpointKind, **kwargs: Any) -> Teacher:
    """The classifier teacher of ``kind``; DataError naming the file when it is not one."""
    if kind.kind == "timm":
        assert kind.name is not None
        return TimmClassifierTeacher(kind.name, checkpoint_path=kind.path, **kwargs)
    assert kind.path is not None
    if kind.kind == "anydistill":
        return AnydistillClassifierTeacher(kind.path, **kwargs)
    if kind.kind == "huggingface":
        return HFClassifierTeacher(kind.path, **kwargs)
    raise DataError(
        kind.path,
        "is not a classifier: a classify teacher is an anydistill classify checkpoint, "
        "'timm:<name>@<weights file>' or a transformers image-classification folder",
    )
