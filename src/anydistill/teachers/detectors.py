"""Box teachers (``task == "detect"``): a frozen detector that maps a [0, 1] image batch to boxes.

The protocol of :class:`~anydistill.teachers.base.Teacher`, with :meth:`DetectorTeacher.detect` in place
of ``predict``: ``images01 (B, 3, H, W)`` → a list of B dicts ``boxes`` float32 ``(N, 4)`` xyxy in the
input's pixels, ``scores`` ``(N,)``, ``labels`` int64 ``(N,)`` indexing ``class_names``. A teacher returns
every detection it keeps after its own post-processing, down to a low score (``min_score``): the
training-time score threshold and NMS are the student's recipe's, not baked into the cache.

Adapters:

- :class:`AnydistillDetectorTeacher`: an anydistill ``task=detect`` checkpoint;
- :class:`HFDetectorTeacher`: a Hugging Face ``*ForObjectDetection`` folder (DETR, Conditional /
  Deformable DETR, RT-DETR, YOLOS, …: ``AutoModelForObjectDetection`` with its image processor's
  ``post_process_object_detection``), optionally restricted and renamed to the user's classes;
- :class:`HFOpenVocabularyDetectorTeacher`: an OWL-ViT / OWLv2 folder (open vocabulary: the user's class
  names become its text queries), autodistill's usual labeller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.errors import DataError
from anydistill.loading import load_model
from anydistill.preprocess import Preprocess, long_side_shape
from anydistill.teachers.base import Teacher, check_images
from anydistill.teachers.hf_utils import (
    from_pretrained,
    processor_from_pretrained,
    read_config,
    require_transformers,
    stable_config,
)

__all__ = [
    "OPEN_VOCABULARY_TYPES",
    "AnydistillDetectorTeacher",
    "DetectorTeacher",
    "HFDetectorTeacher",
    "HFOpenVocabularyDetectorTeacher",
    "is_hf_detector",
    "is_hf_open_vocabulary_detector",
]

#: Hugging Face ``model_type`` values of the open-vocabulary (text-queried) detectors we read.
OPEN_VOCABULARY_TYPES = ("owlv2", "owlvit")

Detections = list[dict[str, Tensor]]


class DetectorTeacher(Teacher):
    """Base of the box teachers: ``detect`` instead of ``predict`` (see the module docstring)."""

    task = "detect"  # type: ignore[assignment]
    class_names: list[str]

    @torch.no_grad()
    def detect(self, images01: Tensor) -> Detections:
        """``images01 (B, 3, H, W)`` in [0, 1] → B dicts ``boxes (N, 4)`` (input pixels, clipped to the
        image), ``scores (N,)``, ``labels (N,)``, all on the CPU."""
        check_images(images01)
        out = self._detect(images01.to(self.device, self.dtype))
        if len(out) != images01.shape[0]:  # adapter bug guard
            raise RuntimeError(
                f"{type(self).__name__} returned {len(out)} results for {images01.shape[0]} images"
            )
        h, w = images01.shape[-2:]
        limits = torch.tensor([w, h, w, h], dtype=torch.float32)
        return [
            {"boxes": torch.minimum(d["boxes"].float().cpu().clamp_min(0), limits), "scores": d["scores"].float().cpu(),
             "labels": d["labels"].long().cpu()}
            for d in out
        ]  # fmt: skip

    def predict(self, images01: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} is a box teacher: it has detect(), not predict()")

    def _detect(self, images01: Tensor) -> Detections:
        raise NotImplementedError


class AnydistillDetectorTeacher(DetectorTeacher):
    """An anydistill ``task=detect`` checkpoint as a teacher.

    ``images01`` are resized (keep aspect, antialiased bilinear) to long side ``image_size`` (default:
    the checkpoint's input size), run through the detector (score threshold ``min_score``, its NMS and
    top-``max_detections``), and the boxes scaled back to the input's pixels.
    """

    def __init__(
        self,
        checkpoint_path: str | Path,
        image_size: int | None = None,
        min_score: float = 0.05,
        max_detections: int = 100,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        loaded = load_model(checkpoint_path, device="cpu")
        if loaded.task != "detect":
            raise DataError(
                checkpoint_path, f"is a {loaded.task!r} model; this teacher takes a detector (task=detect)"
            )
        self.model = loaded.model
        self.model.set_postprocess(min_score, max_detections)
        self.class_names = list(loaded.classes.names)
        self.image_size = int(image_size or self.model.input_size)
        self.preprocess = self.model.preprocess_spec(self.image_size)
        self._freeze({"model": loaded.record["arch"], "image_size": self.image_size, "min_score": float(min_score),
                      "max_detections": int(max_detections)})  # fmt: skip
        self.to(device)

    def _detect(self, images01: Tensor) -> Detections:
        height, width = images01.shape[-2:]
        h, w = long_side_shape(height, width, self.image_size)
        x = (
            images01
            if (h, w) == (height, width)
            else F.interpolate(images01, (h, w), mode="bilinear", antialias=True)
        )
        out = self.model(x.clamp(0, 1))
        scale = torch.tensor([width / w, height / h, width / w, height / h], device=images01.device)
        return [{**d, "boxes": d["boxes"] * scale} for d in out]


class HFDetectorTeacher(DetectorTeacher):
    """A Hugging Face object-detection folder (``config.json`` + weights + ``preprocessor_config.json``),
    loaded with ``AutoModelForObjectDetection`` and ``AutoImageProcessor`` from the folder only.

    The processor resizes and normalises as the model was trained; its ``post_process_object_detection``
    turns the outputs into boxes in the input's pixels (``threshold = min_score``, its top-k).

    Args:
        folder: the model folder.
        classes: the user's class names, or ``{user name: teacher label name}`` to rename; detections of
            other teacher labels are dropped (a COCO teacher asked for ``["person", "car"]``). Default:
            the teacher's own ``id2label``.
        min_score: the lowest score kept.
        device: where to run it.
    """

    def __init__(
        self,
        folder: str | Path,
        classes: Sequence[str] | Mapping[str, str] | None = None,
        min_score: float = 0.05,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        transformers = require_transformers()
        folder = Path(folder)
        config = read_config(folder)
        self.model = from_pretrained(transformers.AutoModelForObjectDetection, folder)
        self.processor = processor_from_pretrained(
            transformers.AutoImageProcessor, folder, "image processor (preprocessor_config.json)"
        )
        id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        wanted = (
            dict(classes) if isinstance(classes, Mapping) else {c: c for c in (classes or id2label.values())}
        )
        by_name = {v: k for k, v in id2label.items()}
        missing = [t for t in wanted.values() if t not in by_name]
        if missing:
            raise DataError(
                folder, f"the teacher has no label {missing[0]!r} (its labels: {sorted(by_name)[:20]})"
            )
        self.class_names = list(wanted)
        lut = torch.full((max(id2label, default=0) + 2,), -1, dtype=torch.long)
        for k, teacher_name in enumerate(wanted.values()):
            lut[by_name[teacher_name]] = k
        self.register_buffer("label_map", lut, persistent=False)
        self.min_score = float(min_score)
        self.preprocess = Preprocess(size=1)  # informative only: the processor does the pre-processing
        self._freeze({"folder_config": stable_config(config), "classes": wanted, "min_score": self.min_score})
        self.to(device)

    def _detect(self, images01: Tensor) -> Detections:
        sizes = [tuple(images01.shape[-2:])] * images01.shape[0]
        inputs = self.processor(images=list(images01.float()), return_tensors="pt", do_rescale=False)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        outputs = self.model(**inputs)
        results = self.processor.post_process_object_detection(
            outputs, threshold=self.min_score, target_sizes=sizes
        )
        out = []
        for r in results:
            labels = self.label_map[r["labels"].clamp(0, len(self.label_map) - 1)]
            keep = labels >= 0
            out.append({"boxes": r["boxes"][keep], "scores": r["scores"][keep], "labels": labels[keep]})
        return out


class HFOpenVocabularyDetectorTeacher(DetectorTeacher):
    """An OWL-ViT or OWLv2 folder (``AutoModelForZeroShotObjectDetection`` + ``AutoProcessor``: its image
    processor and CLIP tokenizer), queried with one text per class of the user's.

    OWLv2 pads each image to a square (bottom/right) before resizing, so its normalised boxes are
    fractions of that square; its post-processing scales them by the padded side (OWL-ViT stretches the
    image instead, and scales by ``(H, W)``), and :meth:`detect` clips them to the image (tested against
    upstream on an image padded to the square by hand). Boxes are kept down to ``min_score``, the
    ``max_detections`` best per image (OWLv2 scores one box per patch: thousands).

    Args:
        folder: the model folder.
        classes: the class names (the query is ``prompt.format(name)``), or ``{class name: query text}``.
        min_score: the lowest score kept.
        prompt: the query template (OWL-ViT's paper: ``"a photo of a {}"``).
        max_detections: the most detections kept per image.
        device: where to run it.
    """

    def __init__(
        self,
        folder: str | Path,
        classes: Sequence[str] | Mapping[str, str] | None = None,
        min_score: float = 0.1,
        prompt: str = "a photo of a {}",
        max_detections: int = 300,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        transformers = require_transformers()
        folder = Path(folder)
        config = read_config(folder)
        if not classes:
            raise DataError(
                folder, "an open-vocabulary detector needs the class names to look for (--classes a,b,c)"
            )
        self.model = from_pretrained(transformers.AutoModelForZeroShotObjectDetection, folder)
        self.processor = processor_from_pretrained(
            transformers.AutoProcessor, folder, "processor (tokenizer + image processor)"
        )
        wanted = dict(classes) if isinstance(classes, Mapping) else {c: prompt.format(c) for c in classes}
        self.class_names = list(wanted)
        self.queries = list(wanted.values())
        self.min_score, self.max_detections = float(min_score), int(max_detections)
        self.max_text_length = int(self.model.config.text_config.max_position_embeddings)
        lengths = [len(ids) for ids in self.processor.tokenizer(self.queries)["input_ids"]]
        for name, query, n in zip(self.class_names, self.queries, lengths, strict=True):
            if n > self.max_text_length:  # cut, it would lose the end token CLIP pools on
                raise DataError(
                    folder, f"class {name!r}: its query {query!r} is {n} tokens; the text encoder takes "
                    f"{self.max_text_length} (name it shorter, or give {{name: shorter query}})",
                )  # fmt: skip
        self.preprocess = Preprocess(size=1)  # informative only: the processor does the pre-processing
        self._freeze({"folder_config": stable_config(config), "queries": self.queries, "min_score": self.min_score,
                      "max_detections": self.max_detections})  # fmt: skip
        self.to(device)

    def _detect(self, images01: Tensor) -> Detections:
        b, _, height, width = images01.shape
        # queries of different lengths: padded (and cut) to the text encoder's positions, as OWL's processor
        # did by default (16 tokens)
        inputs = self.processor(text=[self.queries] * b, images=list(images01.float()), return_tensors="pt",
                                do_rescale=False, padding="max_length", truncation=True,
                                max_length=self.max_text_length)  # fmt: skip
        outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.min_score, target_sizes=[(height, width)] * b
        )
        out = []
        for r in results:
            top = r["scores"].argsort(descending=True)[: self.max_detections]
            out.append({"boxes": r["boxes"][top], "scores": r["scores"][top], "labels": r["labels"][top]})
        return out


def is_hf_open_vocabulary_detector(config: Mapping[str, Any]) -> bool:
    """Whether a Hugging Face ``config.json`` describes an OWL-ViT / OWLv2 detector."""
    return config.get("model_type") in OPEN_VOCABULARY_TYPES


def is_hf_detector(config: Mapping[str, Any]) -> bool:
    """Whether a Hugging Face ``config.json`` describes a closed-set object detector."""
    return any(str(a).endswith("ForObjectDetection") for a in config.get("architectures") or [])
