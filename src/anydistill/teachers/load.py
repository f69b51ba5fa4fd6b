"""``load_teacher(spec)``: one entry point from a user's teacher string to a :class:`Teacher`.

Accepted specs (nothing is ever downloaded):

* ``path/to/best.ckpt`` — an anydistill training checkpoint → :class:`AnydistillTeacher`;
* a Hugging Face folder whose ``config.json`` has ``model_type`` ``depth_anything`` →
  :class:`HFDepthAnythingTeacher`; ``dinov2`` / ``dinov2_with_registers`` → :class:`HFDinov2Encoder`;
* ``timm:<model_name>`` or ``timm:<model_name>@<weights file>`` → :class:`TimmEncoder`;
* a segment-anything ``.pth`` (``sam_vit_b_01ec64.pth`` …), or an anydistill promptable checkpoint →
  :class:`SamTeacher` (image embeddings, for MobileSAM-style encoder distillation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anydistill.errors import DataError
from anydistill.teachers.base import Teacher
from anydistill.teachers.hf_utils import read_config

EXPECTED = (
    "expected an anydistill checkpoint (.ckpt), a segment-anything checkpoint (.pth), a Hugging Face model folder (config.json with model_type "
    "'depth_anything', 'dinov2' or 'dinov2_with_registers'), or 'timm:<model_name>[@<weights file>]'"
)


def load_teacher(spec: str | Path, **kwargs: Any) -> Teacher:
    """Build the teacher ``spec`` names; ``kwargs`` go to its adapter (``device``, ``image_size``, ...).

    Raises:
        DataError: ``spec`` names nothing we can load (missing, truncated, unknown kind), naming the file.
    """
    text = str(spec)
    if text.startswith("timm:"):
        from anydistill.teachers.encoders import TimmEncoder

        name, _, weights = text[len("timm:") :].partition("@")
        if not name:
            raise DataError(None, f"{text!r}: no timm model name; {EXPECTED}")
        return TimmEncoder(name, checkpoint_path=weights or None, **kwargs)

    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(path, f"no such file or folder; {EXPECTED}")
    if path.is_file():
        if path.suffix == ".ckpt":
            from anydistill.promptable.loading import read_promptable_config

            config = read_promptable_config(path)
            if config is not None and config.task == "promptable":
                from anydistill.teachers.sam import SamTeacher

                return SamTeacher(path, **kwargs)
            from anydistill.teachers.anydistill_ckpt import AnydistillTeacher

            return AnydistillTeacher(path, **kwargs)
        if path.suffix in (".pth", ".pt"):
            from anydistill.teachers.sam import SamTeacher

            return SamTeacher(path, **kwargs)
        raise DataError(path, f"unknown teacher file type {path.suffix!r}; {EXPECTED}")

    model_type = read_config(path).get("model_type")
    if model_type == "depth_anything":
        from anydistill.teachers.hf_depth_anything import HFDepthAnythingTeacher

        return HFDepthAnythingTeacher(path, **kwargs)
    from anydistill.teachers.encoders import DINOV2_MODEL_TYPES, HFDinov2Encoder

    if model_type in DINOV2_MODEL_TYPES:
        return HFDinov2Encoder(path, **kwargs)
    raise DataError(path / "config.json", f"unsupported model_type {model_type!r}; {EXPECTED}")
