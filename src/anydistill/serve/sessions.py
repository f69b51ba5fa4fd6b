"""The promptable images a server remembers: one embedding per uploaded image, a few images at most.

SAM's image encoder is the expensive part (a ViT-H takes seconds per image on a CPU, the mask
decoder milliseconds), so each uploaded image is embedded once, by :meth:`SamPredictor.set_image`,
and every click on it afterwards runs only the prompt encoder and mask decoder on the kept
embedding. The cache holds whole :class:`~anydistill.promptable.SamPredictor` objects (they share
the one model; each holds its image's embedding, ``(1, C, S/16, S/16)``: 4 MB for SAM, and sizes, not
the image) under a random id, and drops the least recently used beyond ``capacity``: memory is bounded
whatever the clients upload.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

import numpy as np
from torch import nn

from anydistill.promptable.predictor import SamPredictor

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """Image id → the :class:`SamPredictor` holding that image's embedding; least recently used dropped.

    Args:
        model: the SAM model (eval mode), shared by every entry.
        capacity: images kept.
        model_lock: held while the model runs (one model call at a time: the cores are shared anyway,
            and a model is not promised to be safe to call from two threads at once).
    """

    def __init__(self, model: nn.Module, capacity: int, model_lock: threading.Lock) -> None:
        self.model = model
        self.capacity = capacity
        self.model_lock = model_lock
        self._entries: OrderedDict[str, SamPredictor] = OrderedDict()
        self._guard = threading.Lock()  # the dict only: never held while the model runs

    def add(self, image: np.ndarray) -> str:
        """Embed ``image`` uint8 ``(H, W, 3)`` and keep it; returns its new id (URL-safe, unguessable)."""
        predictor = SamPredictor(self.model)
        with self.model_lock:
            predictor.set_image(image)
        image_id = secrets.token_urlsafe(12)
        with self._guard:
            self._entries[image_id] = predictor
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return image_id

    def get(self, image_id: str) -> SamPredictor | None:
        """The predictor of ``image_id`` (now the most recently used), or ``None`` if unknown or dropped."""
        with self._guard:
            predictor = self._entries.get(image_id)
            if predictor is not None:
                self._entries.move_to_end(image_id)
            return predictor

    def __contains__(self, image_id: object) -> bool:
        """Whether ``image_id`` is still cached (without counting as a use)."""
        with self._guard:
            return image_id in self._entries

    def __len__(self) -> int:
        with self._guard:
            return len(self._entries)
