"""The toyworld semantic class table (one class per surface kind) and its ``classes.json`` form."""

from __future__ import annotations

#: ``(id, name, RGB colour)`` of every toyworld semantic class. Ids are contiguous from 0; the room
#: shell and sky come first, then one class per primitive kind. Instances: 0 for floor/wall/ceiling/sky,
#: 1..n for the n objects of an image.
CLASSES: list[tuple[int, str, tuple[int, int, int]]] = [
    (0, "floor", (128, 64, 128)),
    (1, "wall", (102, 102, 156)),
    (2, "sky", (70, 130, 180)),
    (3, "ceiling", (190, 153, 153)),
    (4, "sphere", (220, 20, 60)),
    (5, "box", (250, 170, 30)),
    (6, "cylinder", (107, 142, 35)),
    (7, "cone", (0, 0, 230)),
    (8, "ellipsoid", (255, 0, 255)),
]

IGNORE_INDEX = 255

CLASS_IDS: dict[str, int] = {name: cid for cid, name, _ in CLASSES}
FLOOR, WALL, SKY, CEILING = CLASS_IDS["floor"], CLASS_IDS["wall"], CLASS_IDS["sky"], CLASS_IDS["ceiling"]


def class_table() -> list[dict]:
    """The classes as ``classes.json`` entries: ``[{"id": 0, "name": "floor", "color": [r, g, b]}, ...]``."""
    return [{"id": cid, "name": name, "color": list(color)} for cid, name, color in CLASSES]


def palette() -> list[int]:
    """A 768-entry PIL palette: class colours at their ids, white at the ignore index, black elsewhere."""
    flat = [0] * 768
    for cid, _, color in CLASSES:
        flat[3 * cid : 3 * cid + 3] = color
    flat[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] = (255, 255, 255)
    return flat
