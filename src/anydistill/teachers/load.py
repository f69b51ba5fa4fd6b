"""``load_teacher(spec)``: one entry point from a user's teacher string to a :class:`Teacher`.

Accepted specs (nothing is ever downloaded):

* ``path/to/best.ckpt`` — an anydistill training checkpoint → :class:`AnydistillTeacher`;
* a Hugging Face folder whose ``config.json`` has ``model_type`` ``depth_anything`` →
  :class:`HFDepthAnythingTeacher`; ``dinov2`` / ``dinov2_with_registers`` → :class:`HFDinov2Encoder`;
* ``timm:<model_name>@<weights file>`` → :class:`TimmEncoder` with those weights;
  ``timm:<model_name>@random`` → a randomly initialised one (tests, ablations); a bare
  ``timm:<model_name>`` is refused (it would give random features without a word);
* a segment-anything ``.pth`` (``sam_vit_b_01ec64.pth`` …), or an anydistill promptable checkpoint →
  :class:`SamTeacher` (image embeddings, for MobileSAM-style encoder distillation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anydistill.checkpoints import EXPECTED, detect_kind
from anydistill.errors import DataError
from anydistill.teachers.anydistill_ckpt import AnydistillTeacher
from anydistill.teachers.base import Teacher
from anydistill.teachers.encoders import DINOV2_MODEL_TYPES, HFDinov2Encoder, TimmEncoder
from anydistill.teachers.hf_depth_anything import HFDepthAnythingTeacher
from anydistill.teachers.sam import SamTeacher


def load_teacher(spec: str | Path, **kwargs: Any) -> Teacher:
    """Build the teacher ``spec`` names; ``kwargs`` go to its adapter (``device``, ``image_size``, ...).
    What ``spec`` is comes from :func:`anydistill.checkpoints.detect_kind`, the one place that tells.

    Raises:
        DataError: ``spec`` names nothing we can load (missing, truncated, unknown kind), naming the file;
            or a ``timm:`` spec that names no weights (neither a file nor ``@random``).
    """
    kind = detect_kind(spec)
    if kind.kind == "timm":
        assert kind.name is not None
        return TimmEncoder(kind.name, checkpoint_path=kind.path, **kwargs)  # path None: ``@random``
    if kind.kind == "sam" or (kind.kind == "anydistill" and kind.task == "promptable"):
        return SamTeacher(kind.path, **kwargs)
    if kind.kind == "anydistill":
        return AnydistillTeacher(kind.path, **kwargs)
    assert kind.path is not None
    if kind.task == "depth_anything":
        return HFDepthAnythingTeacher(kind.path, **kwargs)
    if kind.task in DINOV2_MODEL_TYPES:
        return HFDinov2Encoder(kind.path, **kwargs)
    raise DataError(kind.path / "config.json", f"unsupported model_type {kind.task!r}; {EXPECTED}")
