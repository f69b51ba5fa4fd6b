"""``anydistill segment``: masks for one image from clicks and boxes, or every object (``--auto``).

Writes, in ``out``: ``mask.png`` (the chosen mask, 0/255) or, with ``--multimask``, ``mask_0..2.png``;
``overlay.png`` (masks tinted over the image, clicks drawn: green = positive, red = negative, boxes
outlined); ``result.json`` (predicted IoU per mask, prompts, sizes). With ``--auto``:
``masks_coco.json`` (COCO RLE, pycocotools-readable) and ``overlay.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anydistill.data.io import read_image
from anydistill.data.outputs import make_output_folder
from anydistill.promptable.amg import AutomaticMaskGenerator
from anydistill.promptable.amg_output import save_coco_json, save_overlay
from anydistill.promptable.loading import load_promptable
from anydistill.promptable.predictor import SamPredictor
from anydistill.promptable.prompt_results import (
    SegmentReport,
    draw_prompts,
    parse_box,
    parse_point,
    segment_with_prompts,
)

__all__ = ["SegmentReport", "draw_prompts", "parse_box", "parse_point", "segment"]


def segment(
    checkpoint: str | Path,
    image: str | Path,
    out: str | Path,
    points: list[tuple[float, float, int]] | None = None,
    box: tuple[float, float, float, float] | None = None,
    auto: bool = False,
    multimask: bool = False,
    auto_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
) -> SegmentReport:
    """Segment ``image`` with the promptable model in ``checkpoint`` (see the module docstring).

    Prompts are in the image's own pixels. Without ``multimask``, one prompt of a single click still
    asks the model for its three masks and keeps the one with the highest predicted IoU (SAM's advice
    for ambiguous prompts).

    Raises:
        DataError: unreadable image or checkpoint; an output folder that cannot be created.
        ValueError: no prompt and not ``auto``; a prompt outside the image.
    """
    points = list(points or [])
    if not auto and not points and box is None:
        raise ValueError("give at least one --point or a --box, or --auto for every object")
    rgb = read_image(Path(image))  # (H, W, 3) uint8, EXIF applied
    model = load_promptable(checkpoint, device=device)
    out = Path(out)
    report = SegmentReport(out)
    if auto:
        generator = AutomaticMaskGenerator(model, **(auto_kwargs or {}))
        records = generator.generate(rgb)
        make_output_folder(out)
        report.files.append(
            save_coco_json(records, out / "masks_coco.json", file_name=Path(image).name, size=rgb.shape[:2])
        )
        report.files.append(save_overlay(rgb, records, out / "overlay.png"))
        report.scores = [float(r["predicted_iou"]) for r in records]
        return report

    return segment_with_prompts(SamPredictor(model), rgb, image, out, points, box, multimask)
