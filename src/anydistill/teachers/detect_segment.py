"""Detect, then segment: a box teacher's detections prompt Segment Anything for instance masks.

A user who has only a box teacher (a detector checkpoint, a DETR folder) and a SAM checkpoint gets an
instance-segmentation teacher: :class:`BoxPromptedSamTeacher` runs the box teacher, embeds each image
once with SAM's image encoder, and decodes one mask per box (a box prompt, ``multimask_output=False``:
SAM's own choice for an unambiguous box prompt), thresholded at the model's ``mask_threshold`` in the
input's pixels. Boxes, scores and labels stay the box teacher's; the teacher pass caches the masks as
COCO RLE beside them (:mod:`anydistill.cache.writer`), and a Mask R-CNN student learns from both.

This is the "Grounded-SAM" / autodistill "detect, then segment" pipeline, batched: one encoder pass per
image batch, and the mask decoder over many boxes per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anydistill.errors import DataError
from anydistill.promptable.batched import decode_prompts
from anydistill.promptable.loading import load_promptable
from anydistill.teachers.base import check_images
from anydistill.teachers.detectors import Detections, DetectorTeacher
from anydistill.teachers.load import load_teacher
from anydistill.teachers.sam import sam_resize

__all__ = ["BoxPromptedSamTeacher", "load_box_teacher"]


class BoxPromptedSamTeacher(DetectorTeacher):
    """``detect(images01 (B, 3, H, W))`` → B dicts ``boxes (N, 4)``, ``scores (N,)``, ``labels (N,)`` from
    ``box_teacher`` and ``masks`` bool ``(N, H, W)`` from SAM prompted with those boxes.

    Args:
        box_teacher: any :class:`~anydistill.teachers.detectors.DetectorTeacher`.
        sam_checkpoint: an official segment-anything ``.pth`` or an anydistill promptable checkpoint.
        prompts_per_call: boxes decoded per mask-decoder call: bounds the memory of their full-size float
            logits (16 × 4 bytes × H·W: 770 MB for a 12-megapixel photo; the boolean masks kept are N·H·W bytes).
        device: where to run both.
    """

    gives_masks = True

    def __init__(
        self,
        box_teacher: DetectorTeacher,
        sam_checkpoint: str | Path,
        prompts_per_call: int = 16,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if not isinstance(box_teacher, DetectorTeacher):
            raise TypeError(f"box_teacher must be a DetectorTeacher, got {type(box_teacher).__name__}")
        if prompts_per_call < 1:
            raise ValueError(f"prompts_per_call must be >= 1, got {prompts_per_call}")
        self.box_teacher = box_teacher
        self.sam = load_promptable(sam_checkpoint)
        self.class_names = list(box_teacher.class_names)
        self.preprocess = box_teacher.preprocess
        self.img_size = int(self.sam.image_encoder.img_size)
        self.prompts_per_call = int(prompts_per_call)
        self._freeze({"box_teacher": box_teacher.config, "sam_img_size": self.img_size})
        self.to(device)

    def _detect(self, images01: Tensor) -> Detections:
        height, width = images01.shape[-2:]
        found = self.box_teacher.detect(images01)  # boxes clipped to the image, on the CPU
        x = sam_resize(images01.float(), self.img_size)  # (B, 3, h, w) on 0..255, SAM's rounding
        h, w = x.shape[-2:]
        embeddings = self.sam.image_encoder(self.sam.preprocess(x))  # (B, C, S/16, S/16)
        image_pe = self.sam.prompt_encoder.get_dense_pe()  # (1, C, S/16, S/16)
        # ResizeLongestSide.apply_boxes: x scaled by w/W, y by h/H (the resized frame, before padding)
        scale = torch.tensor([w / width, h / height, w / width, h / height], device=embeddings.device)
        out = []
        for b, d in enumerate(found):
            masks = torch.zeros((len(d["boxes"]), height, width), dtype=torch.bool)
            for start in range(0, len(d["boxes"]), self.prompts_per_call):
                boxes = d["boxes"][start : start + self.prompts_per_call].to(embeddings.device) * scale
                low, _ = decode_prompts(self.sam, embeddings[b : b + 1], image_pe, None, boxes, None, False)
                logits = self.sam.postprocess_masks(low, (h, w), (height, width))  # (n, 1, H, W)
                masks[start : start + len(boxes)] = (logits[:, 0] > self.sam.mask_threshold).cpu()
            out.append({**d, "masks": masks})
        return out

    def detect(self, images01: Tensor) -> Detections:
        """As :meth:`DetectorTeacher.detect`, with ``masks`` bool ``(N, H, W)`` per image."""
        check_images(images01)
        with torch.no_grad():
            out = self._detect(images01.to(self.device, self.dtype))
        return [{**d, "boxes": d["boxes"].float().cpu(), "scores": d["scores"].float().cpu(),
                 "labels": d["labels"].long().cpu(), "masks": d["masks"].cpu()} for d in out]  # fmt: skip


def load_box_teacher(
    spec: str | Path, mask_teacher: str | Path | None = None, **kwargs: Any
) -> DetectorTeacher:
    """The box teacher ``spec`` names (:func:`~anydistill.teachers.load_teacher`), prompting the SAM
    ``mask_teacher`` for instance masks when given (:class:`BoxPromptedSamTeacher`). A module-level
    function, so ``functools.partial`` of it pickles into the teacher pass's processes.

    Raises:
        DataError: ``spec`` is not a box teacher, or ``mask_teacher`` is not a SAM model (naming the file).
    """
    device = kwargs.get("device", "cpu")
    teacher = load_teacher(spec, **kwargs)
    if not isinstance(teacher, DetectorTeacher):
        raise DataError(
            spec,
            "is not a box teacher: give an anydistill detect checkpoint or a Hugging Face *ForObjectDetection folder",
        )
    if mask_teacher is None:
        return teacher
    return BoxPromptedSamTeacher(teacher, mask_teacher, device=device)
