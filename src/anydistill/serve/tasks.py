"""What the demo answers for each kind of model, over the library's predictors (no inference here).

- depth and semantic students: :class:`DenseTask` runs :class:`~anydistill.inference.Predictor` on the
  whole image and sends back the colour-mapped depth (:func:`~anydistill.viz.colorize_depth`) or the
  class overlay (:func:`~anydistill.viz.overlay` of :func:`~anydistill.viz.colorize_mask`) and a legend;
- promptable models: :class:`PromptableTask` embeds each image once (:class:`~.sessions.EmbeddingCache`)
  and answers prompts with :meth:`~anydistill.promptable.SamPredictor.predict`.

Results come back as plain dicts, ready to be sent as JSON; pictures are data URLs at most
:data:`~.images.DISPLAY_SIDE` px on the long side (computed at the image's full size, then shrunk).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from anydistill.inference import Predictor
from anydistill.loading import LoadedModel
from anydistill.serve.images import display_shape, jpeg_data_url, png_data_url, shrink
from anydistill.serve.protocol import RequestError, SegmentPrompt
from anydistill.serve.sessions import EmbeddingCache
from anydistill.viz import colorize_depth, colorize_mask, default_palette, overlay

__all__ = ["DenseTask", "PromptableTask", "image_reply"]

#: Weight of the class colours in the semantic overlay.
OVERLAY_ALPHA = 0.5


def image_reply(image: np.ndarray) -> dict[str, Any]:
    """The input as the page shows it: original ``width``/``height`` (the frame of every coordinate) and a
    picture at display size (decoded by the server: EXIF-rotated, any format the browser cannot show)."""
    height, width = image.shape[:2]
    shown = display_shape(height, width)
    return {
        "width": width,
        "height": height,
        "display": [shown[1], shown[0]],
        "image": jpeg_data_url(shrink(image, shown)),
    }


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


class DenseTask:
    """A depth or semantic student: one image in, its picture (and a legend) out."""

    def __init__(self, student: LoadedModel, model_lock: threading.Lock) -> None:
        self.task = student.task
        self.predictor = Predictor(student, batch_size=1)
        self.model_lock = model_lock
        classes = student.classes
        self.ignore_index = classes.ignore_index
        self.palette = (
            np.asarray(classes.colors, np.uint8)
            if classes.colors
            else default_palette(max(1, classes.num_classes or 256))
        )
        self.names = list(classes.names)

    def legend(self) -> list[dict[str, Any]]:
        """``[{"id", "name", "color": "#rrggbb"}, ...]`` of the model's classes (semantic; empty for depth)."""
        if self.task != "semantic":
            return []
        return [self._entry(i) for i in range(len(self.names))]

    def _entry(self, class_id: int) -> dict[str, Any]:
        name = self.names[class_id] if class_id < len(self.names) else f"class {class_id}"
        r, g, b = (int(v) for v in self.palette[class_id]) if class_id < len(self.palette) else (0, 0, 0)
        return {"id": class_id, "name": name, "color": f"#{r:02x}{g:02x}{b:02x}"}

    def run(self, image: np.ndarray) -> dict[str, Any]:
        """``image`` uint8 ``(H, W, 3)`` → :func:`image_reply` plus ``result`` (the picture) and, for
        depth, ``range`` (the disparity shown from blue to red); for semantic, ``legend`` (the classes
        found, with the fraction of pixels each covers)."""
        start = time.perf_counter()
        with self.model_lock:
            prediction = self.predictor.predict([image])[0]  # disparity float32 or class ids uint8, (H, W)
        reply = {"task": self.task, **image_reply(image), "ms": _ms(start)}
        shown = display_shape(*image.shape[:2])
        if self.task == "depth":
            small = shrink(prediction, shown)  # (h, w) float32
            finite = small[np.isfinite(small)]
            lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
            reply["result"] = png_data_url(colorize_depth(small, lo=float(lo), hi=float(hi)))
            reply["range"] = [round(float(lo), 4), round(float(hi), 4)]
            return reply
        ids, counts = np.unique(prediction, return_counts=True)
        colors = colorize_mask(shrink(prediction, shown, nearest=True), self.palette, self.ignore_index)
        reply["result"] = png_data_url(overlay(shrink(image, shown), colors, OVERLAY_ALPHA))
        reply["legend"] = [
            {**self._entry(int(i)), "fraction": round(int(n) / prediction.size, 4)}
            for i, n in zip(ids, counts, strict=True)
            if int(i) != self.ignore_index
        ]
        return reply


def _check_inside(prompt: SegmentPrompt, height: int, width: int) -> None:
    """Every point and box corner in ``[0, W] x [0, H]`` (original pixels), as the predictor requires.

    Raises:
        RequestError: 400 naming the first one outside.
    """
    corners = [prompt.box[:2], prompt.box[2:]] if prompt.box is not None else []
    for what, (x, y) in [*(("point", p) for p in prompt.points), *(("box corner", c) for c in corners)]:
        if not (0 <= x <= width and 0 <= y <= height):
            raise RequestError(
                400, f"{what} ({x:g}, {y:g}) lies outside the image: 0 <= x <= {width} and 0 <= y <= {height}"
            )


@dataclass(frozen=True)
class _LastAnswer:
    """An image's last prompt and the low-res logits ``(1, h, w)`` of the mask it chose (best score)."""

    points: tuple[tuple[float, float], ...]
    labels: tuple[int, ...]
    box: tuple[float, float, float, float] | None
    low_res: np.ndarray

    def extended_by(self, prompt: SegmentPrompt) -> bool:
        """``prompt`` is this one plus more clicks (same box, the same first points and labels)."""
        n = len(self.points)
        return (
            prompt.box == self.box
            and len(prompt.points) > n
            and tuple(tuple(p) for p in prompt.points[:n]) == self.points
            and tuple(prompt.labels[:n]) == self.labels
        )


class PromptableTask:
    """A promptable model: images embedded once (:meth:`add`), then masks for prompts (:meth:`segment`).

    Click by click, as SAM is used interactively (its paper's §A, segment-anything's demo): when a
    prompt only adds clicks to the image's previous one, the previous answer's best low-res mask logits
    go in as ``mask_input`` with every click, so each click refines the mask instead of starting over.
    Another prompt (a click removed, a new box) starts afresh.
    """

    task = "promptable"

    def __init__(self, model: LoadedModel, capacity: int, model_lock: threading.Lock) -> None:
        self.cache = EmbeddingCache(model.model, capacity, model_lock)
        self.model_lock = model_lock
        self._last: dict[str, _LastAnswer] = {}
        self._last_guard = threading.Lock()

    def add(self, image: np.ndarray) -> dict[str, Any]:
        """Embed ``image``; :func:`image_reply` plus ``image_id``, the handle of later prompts."""
        start = time.perf_counter()
        image_id = self.cache.add(image)
        return {"task": self.task, "image_id": image_id, **image_reply(image), "ms": _ms(start)}

    def segment(self, prompt: SegmentPrompt) -> dict[str, Any]:
        """Masks for ``prompt`` on its image: ``masks`` (data URLs, white = object, at display size),
        ``scores`` (predicted IoU), ``areas`` (pixels at full size) and ``best`` (index of the top score).

        Raises:
            RequestError: 404 unknown (or dropped) image id; 400 a prompt outside the image.
        """
        predictor = self.cache.get(prompt.image_id)
        if predictor is None:
            raise RequestError(
                404,
                f"unknown image id {prompt.image_id!r}: it expired or was never uploaded; upload the image again",
            )
        assert predictor.original_size is not None
        _check_inside(
            prompt, *predictor.original_size
        )  # before waiting for the model: a bad click is answered at once
        coords = np.asarray(prompt.points, np.float64) if prompt.points else None  # (N, 2)
        labels = np.asarray(prompt.labels, np.int64) if prompt.points else None  # (N,)
        box = np.asarray(prompt.box, np.float64) if prompt.box is not None else None  # (4,)
        with self._last_guard:
            last = self._last.get(prompt.image_id)
        mask_input = last.low_res if last is not None and last.extended_by(prompt) else None  # (1, h, w)
        start = time.perf_counter()
        try:
            with self.model_lock:
                masks, scores, low_res = predictor.predict(
                    coords, labels, box, mask_input=mask_input, multimask_output=prompt.multimask
                )  # (M, H, W), (M,), (M, h, w)
        except ValueError as exc:  # any prompt the predictor refuses (it checks again): its own line
            raise RequestError(400, str(exc)) from None
        ms = _ms(start)
        best = int(np.argmax(scores))
        self._remember(prompt, low_res[best : best + 1])
        shown = display_shape(*predictor.original_size)
        return {
            "masks": [png_data_url(shrink(m, shown).astype(np.uint8) * 255) for m in masks],  # (h, w) each
            "scores": [round(float(s), 4) for s in scores],
            "areas": [int(m.sum()) for m in masks],
            "best": best,
            "refined": mask_input is not None,
            "ms": ms,
        }

    def _remember(self, prompt: SegmentPrompt, low_res: np.ndarray) -> None:
        """Keep ``prompt``'s chosen low-res logits for its image; forget images the cache has dropped."""
        answer = _LastAnswer(
            tuple(tuple(p) for p in prompt.points), tuple(prompt.labels), prompt.box, low_res
        )
        with self._last_guard:
            self._last[prompt.image_id] = answer
            for image_id in [i for i in self._last if i not in self.cache]:
                del self._last[image_id]
