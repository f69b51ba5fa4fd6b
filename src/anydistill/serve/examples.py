"""The demo's built-in example images: a few toyworld scenes, rendered on first use, chosen by index.

A request names an example by its index in :data:`EXAMPLES`, never by a path: nothing a client sends
reaches the file system.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from anydistill.data.toyworld import render_sample
from anydistill.serve.protocol import RequestError

__all__ = ["EXAMPLES", "EXAMPLE_SIZE", "example_image"]

#: ``(domain, seed, index)`` of each example scene (picked for several objects and classes in view).
EXAMPLES: tuple[tuple[str, int, int], ...] = (
    ("indoor", 0, 20),
    ("wide", 0, 9),
    ("wide", 0, 12),
    ("wide", 0, 0),
)
#: ``(H, W)`` the examples are rendered at.
EXAMPLE_SIZE = (240, 320)


def example_image(index: int) -> np.ndarray:
    """Example ``index`` as uint8 ``(H, W, 3)`` (a copy: each request may write to its own).

    Raises:
        RequestError: 404 no such example.
    """
    if not 0 <= index < len(EXAMPLES):
        raise RequestError(404, f"no example {index}: there are {len(EXAMPLES)} (0 to {len(EXAMPLES) - 1})")
    return _render(index).copy()


@lru_cache(maxsize=len(EXAMPLES))
def _render(index: int) -> np.ndarray:
    domain, seed, scene = EXAMPLES[index]
    image = render_sample(scene, seed, domain, EXAMPLE_SIZE)["image"]
    image.flags.writeable = False  # the cached original; callers get copies
    return image
