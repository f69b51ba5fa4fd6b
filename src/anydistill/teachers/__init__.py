"""Teachers: frozen models with their own pre-processing behind one protocol (:class:`Teacher`).

``load_teacher(spec)`` turns a local path or ``timm:<name>@<weights>`` (``@random``: random weights)
into one; ``predict`` gives per-pixel targets at the input's size, ``features`` patch-feature maps for
feature alignment.
The Hugging Face adapters import ``transformers`` only when used.
"""

from anydistill.teachers.anydistill_ckpt import AnydistillTeacher
from anydistill.teachers.base import Teacher, TeacherTask, fit_to_multiple, state_dict_sha256
from anydistill.teachers.classifiers import (
    AnydistillClassifierTeacher,
    ClassifierTeacher,
    HFClassifierTeacher,
    TimmClassifierTeacher,
)
from anydistill.teachers.encoders import FrozenEncoder, HFDinov2Encoder, TimmEncoder
from anydistill.teachers.hf_depth_anything import HFDepthAnythingTeacher
from anydistill.teachers.load import load_teacher
from anydistill.teachers.sam import SamTeacher

__all__ = [
    "AnydistillClassifierTeacher",
    "AnydistillTeacher",
    "ClassifierTeacher",
    "HFClassifierTeacher",
    "TimmClassifierTeacher",
    "FrozenEncoder",
    "HFDepthAnythingTeacher",
    "HFDinov2Encoder",
    "SamTeacher",
    "Teacher",
    "TeacherTask",
    "TimmEncoder",
    "fit_to_multiple",
    "load_teacher",
    "state_dict_sha256",
]
