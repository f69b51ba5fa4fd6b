"""``anydistill segment --runtime onnx``: masks for one image from clicks and a box, with an exported
promptable model on onnxruntime (torch-free). Same outputs as the PyTorch path
(:mod:`anydistill.promptable.prompt_results`)."""

from __future__ import annotations

from pathlib import Path

from anydistill.data.io import read_image
from anydistill.promptable.prompt_results import SegmentReport, segment_with_prompts
from anydistill.runtime.sam import OnnxSamPredictor

__all__ = ["segment_onnx"]


def segment_onnx(
    folder: str | Path,
    image: str | Path,
    out: str | Path,
    points: list[tuple[float, float, int]] | None = None,
    box: tuple[float, float, float, float] | None = None,
    multimask: bool = False,
    threads: int = 0,
) -> SegmentReport:
    """Segment ``image`` with the export folder ``folder`` (see :func:`segment_with_prompts`).

    Raises:
        DataError: unreadable image, a bad export folder or one that is not promptable.
        ValueError: no prompt, or a prompt outside the image (nothing written).
    """
    points = list(points or [])
    if not points and box is None:
        raise ValueError("give at least one --point or a --box (--auto needs the PyTorch runtime)")
    rgb = read_image(Path(image))  # (H, W, 3) uint8, EXIF applied
    predictor = OnnxSamPredictor(folder, threads=threads)
    return segment_with_prompts(predictor, rgb, image, out, points, box, multimask)
