"""Bring image/mask pairs from another layout into the anydistill folder format.

Many public sets ship ``image/N.png`` beside ``label/N.png`` with masks stored as 0/255 or other
grey values. :func:`import_pairs` copies the images to ``out/images`` and writes the masks, with
their values mapped to class ids, to ``out/semantic`` (or ``out/depth`` unchanged), plus
``classes.json``; values outside the map are an error naming the file, never silently kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from anydistill.data.io import find_images
from anydistill.data.labels import read_mask
from anydistill.errors import DataError
from anydistill.viz import default_palette


def parse_label_map(items: list[str] | None) -> dict[int, int]:
    """``["255:1", "0:0"]`` → ``{255: 1, 0: 0}``."""
    mapping: dict[int, int] = {}
    for item in items or []:
        src, sep, dst = item.partition(":")
        if not sep or not src.strip().isdigit() or not dst.strip().isdigit():
            raise DataError(None, f"label map entry {item!r} must look like VALUE:CLASS_ID, e.g. 255:1")
        mapping[int(src)] = int(dst)
    return mapping


def import_pairs(
    images: str | Path,
    labels: str | Path,
    out: str | Path,
    label_map: dict[int, int] | None = None,
    class_names: list[str] | None = None,
    kind: str = "semantic",
    holdout: int = 0,
    seed: int = 0,
) -> Path:
    """Copy ``images/<rel>`` and ``labels/<rel>`` pairs (matched by relative path without extension)
    into ``out`` in the folder format.

    Args:
        images, labels: the source folders.
        out: the destination root.
        label_map: mask value → class id (e.g. ``{0: 0, 255: 1}``); identity if omitted.
        class_names: names of the class ids, written to ``classes.json``.
        kind: "semantic" (masks) or "depth" (copied unchanged).
        holdout: if > 0, this many pairs (chosen with ``seed``) go to ``out/val`` and the rest to
            ``out/train``, each a complete folder-format root.
    """
    images, labels, out = Path(images), Path(labels), Path(out)
    for folder in (images, labels):
        if not folder.is_dir():
            raise DataError(folder, "folder not found")
    label_files = {p.relative_to(labels).with_suffix(""): p for p in labels.rglob("*") if p.is_file()}
    pairs = []
    for img in find_images(images):
        rel = img.relative_to(images).with_suffix("")
        if rel not in label_files:
            raise DataError(img, f"no label for this image under {labels} (expected {labels / rel}.*)")
        pairs.append((rel, img, label_files[rel]))
    if holdout >= len(pairs):
        raise DataError(images, f"cannot hold out {holdout} of {len(pairs)} pairs")
    held = (
        set(np.random.default_rng(seed).permutation(len(pairs))[:holdout].tolist()) if holdout > 0 else set()
    )
    roots = [out / "val" if i in held else (out / "train" if holdout > 0 else out) for i in range(len(pairs))]
    label_map = label_map or {}
    allowed = set(label_map.values()) if label_map else None
    for (rel, img, lab), root in zip(pairs, roots, strict=True):
        dst_img = root / "images" / rel.with_suffix(img.suffix.lower())
        dst_img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(img, dst_img)
        if kind == "depth":
            dst = root / "depth" / rel.with_suffix(lab.suffix)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lab, dst)
            continue
        mask = read_mask(lab)
        if label_map:
            values = np.unique(mask)
            unknown = sorted(int(v) for v in values if int(v) not in label_map)
            if unknown:
                raise DataError(lab, f"mask values {unknown} are not in the label map {label_map}")
            lut = np.zeros(int(values.max()) + 1, dtype=np.uint8)
            for src, dst_id in label_map.items():
                if src < len(lut):
                    lut[src] = dst_id
            mask = lut[mask]
        dst = root / "semantic" / rel.with_suffix(".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8)).save(dst)
    if kind == "semantic":
        ids = sorted(allowed) if allowed is not None else None
        if class_names is None and ids is not None:
            class_names = [f"class_{i}" for i in range(max(ids) + 1)]
        if class_names:
            palette = default_palette(len(class_names))
            table = [
                {"id": i, "name": n, "color": [int(c) for c in palette[i]]} for i, n in enumerate(class_names)
            ]
            for root in set(roots):
                (root / "classes.json").write_text(
                    json.dumps({"classes": table, "ignore_index": 255}, indent=2)
                )
    return out
