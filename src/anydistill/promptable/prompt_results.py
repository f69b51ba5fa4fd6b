"""Masks for one image from clicks and a box, written as ``anydistill segment`` writes them: torch-free.

Shared by the PyTorch path (:func:`anydistill.promptable.segment.segment`) and the onnxruntime one
(:mod:`anydistill.runtime.segment`): any predictor with segment-anything's ``set_image`` / ``predict``
interface (:class:`~anydistill.promptable.predictor.SamPredictor`,
:class:`~anydistill.runtime.sam.OnnxSamPredictor`). Nothing here imports torch.

Writes, in ``out``: ``mask.png`` (the chosen mask, 0/255) or, with ``multimask``, ``mask_0..2.png``;
``overlay.png`` (masks tinted over the image, clicks drawn: green = positive, red = negative, the box
outlined); ``result.json`` (predicted IoU per mask, prompts, sizes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anydistill.data.outputs import make_output_folder
from anydistill.viz import default_palette, overlay, save_png

__all__ = ["SegmentReport", "draw_prompts", "parse_box", "parse_point", "segment_with_prompts"]


def _numbers(text: str) -> list[float]:
    """``"1,2.5"`` → ``[1.0, 2.5]``; ``[]`` when a part is not a finite number (``nan``, ``inf``, a word)."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        return []
    return values if all(math.isfinite(v) for v in values) else []


def parse_point(text: str) -> tuple[float, float, int]:
    """``"X,Y"`` (positive click) or ``"X,Y,0"`` (negative) → ``(x, y, label)``.

    Raises:
        ValueError: not two or three finite numbers, or a label other than 0 and 1 (one line naming
            ``--point`` and the text).
    """
    values = _numbers(text)
    if len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0, 1)):
        raise ValueError(
            f"--point {text!r}: expected X,Y or X,Y,LABEL (finite numbers) with LABEL 1 (positive) or 0 "
            "(negative)"
        )
    return values[0], values[1], int(values[2]) if len(values) == 3 else 1


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"X0,Y0,X1,Y1"`` → a box; x1 > x0 and y1 > y0 required.

    Raises:
        ValueError: not four finite numbers, or an empty box (one line naming ``--box`` and the text).
    """
    values = _numbers(text)
    if len(values) != 4:
        raise ValueError(f"--box {text!r}: expected X0,Y0,X1,Y1 (finite numbers)")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"--box {text!r}: need x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


@dataclass
class SegmentReport:
    out: Path
    files: list[Path] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def summary(self) -> str:
        scores = ", ".join(f"{s:.3f}" for s in self.scores[:10])
        more = f" (+{len(self.scores) - 10} more)" if len(self.scores) > 10 else ""
        return f"{len(self.scores)} mask(s), predicted IoU {scores}{more}; wrote {', '.join(p.name for p in self.files)}"


def draw_prompts(image: np.ndarray, points: list[tuple[float, float, int]], box: tuple | None) -> np.ndarray:
    """Clicks as small squares (green positive, red negative) and the box outline, in place on a copy."""
    out = image.copy()
    h, w = out.shape[:2]
    r = max(2, round(max(h, w) / 200))
    for x, y, label in points:
        xi, yi = int(x), int(y)
        out[max(0, yi - r) : yi + r + 1, max(0, xi - r) : xi + r + 1] = (0, 220, 0) if label else (230, 0, 0)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, x1 = np.clip([x0, x1], 0, w - 1)
        y0, y1 = np.clip([y0, y1], 0, h - 1)
        out[y0, x0 : x1 + 1] = out[y1, x0 : x1 + 1] = (255, 255, 0)
        out[y0 : y1 + 1, x0] = out[y0 : y1 + 1, x1] = (255, 255, 0)
    return out


def segment_with_prompts(
    predictor: Any,
    rgb: np.ndarray,
    image: str | Path,
    out: str | Path,
    points: list[tuple[float, float, int]],
    box: tuple[float, float, float, float] | None,
    multimask: bool = False,
) -> SegmentReport:
    """Embed ``rgb`` (uint8 ``(H, W, 3)``, read from ``image``) with ``predictor``, predict the masks of the
    clicks ``points`` (x, y, label in image pixels) and ``box``, and write them into ``out``.

    Without ``multimask``, one prompt of a single click still asks the model for its three masks and keeps
    the one with the highest predicted IoU (SAM's advice for ambiguous prompts).

    Raises:
        ValueError: a prompt outside the image (nothing is written).
    """
    out = Path(out)
    report = SegmentReport(out)
    predictor.set_image(rgb)
    coords = np.array([[x, y] for x, y, _ in points], dtype=np.float32) if points else None
    labels = np.array([label for _, _, label in points], dtype=np.int64) if points else None
    ambiguous = len(points) == 1 and box is None
    masks, iou, _ = predictor.predict(
        coords,
        labels,
        None if box is None else np.array(box, np.float32),
        multimask_output=multimask or ambiguous,
    )  # (C, H, W) bool, (C,)
    make_output_folder(out)  # only now: bad prompts leave no empty folder behind
    if not multimask:
        best = int(np.argmax(iou))
        masks, iou = masks[best : best + 1], iou[best : best + 1]
    palette = default_palette(len(masks) + 2)[2:]  # skip black and the first dark red
    tint = rgb.copy()
    for k, m in enumerate(masks):
        name = "mask.png" if len(masks) == 1 else f"mask_{k}.png"
        report.files.append(save_png(m.astype(np.uint8) * 255, out / name))
        tint[m] = palette[k]
    shown = np.where(masks.any(0)[..., None], overlay(rgb, tint, 0.55), rgb)
    report.files.append(save_png(draw_prompts(shown, points, box), out / "overlay.png"))
    report.scores = [float(s) for s in iou]
    result = {
        "image": str(image),
        "size": list(rgb.shape[:2]),
        "points": points,
        "box": box,
        "iou": report.scores,
    }
    tmp = out / ".result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "result.json")  # whole or not at all
    report.files.append(out / "result.json")
    return report
