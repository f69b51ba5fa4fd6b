"""Bring image/label pairs from another layout into the anydistill folder format.

Many public sets ship ``image/N.png`` beside ``label/N.png`` with masks stored as 0/255 or other
grey values. :func:`import_pairs` copies the images to ``out/images`` and writes the masks, with
their values mapped to class ids, to ``out/semantic`` as 8-bit PNGs (or the depth maps unchanged to
``out/depth``), plus ``classes.json``.

Everything is checked before it is kept, and a problem is one error naming the file (or the option)
and what is wrong, never a silently wrong output:

- every image and label must be readable, and the label the same size as the image (both after their
  EXIF orientation, as training reads them);
- written class ids are ``0..254``, or ``255`` = ignore. With a label map every mask value must be in
  it (or ``unmapped="ignore"`` makes the others ignore); without one the values are the ids, and a
  value above 255 (a 16-bit mask) is refused, never written modulo 256;
- the class names must cover every id in use; without names, ``class_<id>`` names are generated so
  that ``classes.json`` always exists and training can read the folder.

The output is written into a hidden temporary folder beside ``out`` and renamed to ``out`` only when
every pair passed, so a refused import leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from anydistill.data.folder_index import LABEL_EXTENSIONS
from anydistill.data.io import IMAGE_EXTENSIONS, exif_orientation, find_images, iter_files, read_image
from anydistill.data.labels import read_depth, read_mask
from anydistill.errors import ConfigError, DataError
from anydistill.viz import default_palette

logger = logging.getLogger(__name__)

__all__ = ["IGNORE_INDEX", "MAX_CLASS_ID", "import_pairs", "parse_label_map"]

#: The ignore value written into imported masks (and ``classes.json``'s ``ignore_index``).
IGNORE_INDEX = 255
#: The largest class id an imported (8-bit) mask can hold besides the ignore value.
MAX_CLASS_ID = 254

# At most 18 digits a number: any real mask value or class id, and int() never meets its 4300-digit limit.
_ENTRY = re.compile(r"\s*(\d{1,18})\s*:\s*(\d{1,18})\s*", re.ASCII)
_KINDS = ("semantic", "depth")
_UNMAPPED = ("error", "ignore")
# Files under the label folder that can be a label (others, e.g. .txt or .json, are not looked at).
_LABEL_SOURCE_EXTENSIONS = (*IMAGE_EXTENSIONS, ".npy", ".exr")
_SHOWN = 20  # how many values an error message lists


def parse_label_map(items: Sequence[str] | None) -> dict[int, int] | None:
    """``["255:1", "0:0"]`` → ``{255: 1, 0: 0}`` (the ``--label-map`` option).

    Args:
        items: ``VALUE:CLASS_ID`` entries; ``None`` when the option was not given.

    Returns:
        the map, or None for ``None``.

    Raises:
        ConfigError: ``--label-map`` given without entries, an entry that is not ``VALUE:CLASS_ID``
            (non-negative integers), a value mapped twice to different ids, or a class id outside
            ``0..254`` that is not the ignore value 255.
    """
    if items is None:
        return None
    if not items:
        raise ConfigError("--label-map: no entries given; expected VALUE:CLASS_ID entries, e.g. 0:0 255:1")
    mapping: dict[int, int] = {}
    for item in items:
        match = _ENTRY.fullmatch(item)
        if match is None:
            raise ConfigError(
                f"--label-map: entry {item!r} must look like VALUE:CLASS_ID with non-negative integers, "
                "e.g. 255:1"
            )
        src, dst = int(match[1]), int(match[2])
        if src in mapping and mapping[src] != dst:
            raise ConfigError(
                f"--label-map: value {src} is mapped twice ({src}:{mapping[src]} and {src}:{dst})"
            )
        mapping[src] = dst
    return _check_label_map(mapping)


def _check_label_map(mapping: dict[int, int]) -> dict[int, int]:
    """Checks a value → class id map (see :func:`parse_label_map`); returns it with plain ints."""
    checked: dict[int, int] = {}
    for src, dst in mapping.items():
        for what, v in (("value", src), ("class id", dst)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise ConfigError(f"--label-map: {src!r}:{dst!r}: the {what} must be an integer")
        if src < 0:
            raise ConfigError(f"--label-map: {src}:{dst}: mask values are non-negative")
        if not (0 <= dst <= MAX_CLASS_ID or dst == IGNORE_INDEX):
            raise ConfigError(
                f"--label-map: {src}:{dst}: class id {dst} is out of range; imported masks are 8-bit, "
                f"class ids are 0..{MAX_CLASS_ID} and {IGNORE_INDEX} marks ignore"
            )
        checked[int(src)] = int(dst)
    return checked


def _check_class_names(names: Sequence[str] | None) -> list[str] | None:
    """The ``--classes`` names, stripped; refuses empty, duplicate or too many names."""
    if names is None:
        return None
    if isinstance(names, str):
        raise ConfigError(f"--classes: expected a list of names, got the string {names!r}")
    cleaned = [str(n).strip() for n in names]
    if not cleaned:
        raise ConfigError("--classes: no names given")
    empty = [k for k, n in enumerate(cleaned) if not n]
    if empty:
        raise ConfigError(
            f"--classes: name {empty[0] + 1} of {len(cleaned)} is empty (names are comma-separated, "
            "e.g. background,membrane)"
        )
    dup = sorted(n for n, count in Counter(cleaned).items() if count > 1)
    if dup:
        raise ConfigError(f"--classes: duplicate names {dup}")
    if len(cleaned) > MAX_CLASS_ID + 1:
        raise ConfigError(
            f"--classes: {len(cleaned)} names, but imported masks hold at most {MAX_CLASS_ID + 1} classes "
            f"(ids 0..{MAX_CLASS_ID}; {IGNORE_INDEX} is the ignore value)"
        )
    return cleaned


def _show(values: Iterable[int]) -> str:
    """``[3, 300]``, cut after :data:`_SHOWN` values."""
    values = [int(v) for v in values]
    if len(values) <= _SHOWN:
        return str(values)
    return str(values[:_SHOWN])[:-1] + f", ... ({len(values)} values)]"


def _names_missing(names: list[str], ids: set[int]) -> str | None:
    """Why ``names`` does not cover ``ids`` (None when it does)."""
    missing = sorted(i for i in ids if i >= len(names))
    if not missing:
        return None
    return (
        f"--classes: {len(names)} name(s) for ids 0..{len(names) - 1}, but class ids {_show(missing)} are in "
        f"use and have no name; give {max(missing) + 1} names"
    )


def _sub_path(root: Path, folder: str, rel: Path, suffix: str) -> Path:
    """``root/folder/<rel><suffix>``; ``rel`` may contain dots (``a.b`` + ``.png`` → ``a.b.png``)."""
    return root / folder / rel.parent / f"{rel.name}{suffix}"


def _find_pairs(images: Path, labels: Path, kind: str) -> tuple[list[tuple[Path, Path, Path]], list[str]]:
    """``(rel, image, label)`` for every image under ``images``, sorted, and the label files that match
    no image; refuses a missing, ambiguous or unusable label, and images that differ only by extension."""
    by_rel: dict[Path, list[Path]] = {}
    for img in find_images(images):  # refuses an empty selection
        by_rel.setdefault(img.relative_to(images).with_suffix(""), []).append(img)
    clashes = [sorted(map(str, paths)) for paths in by_rel.values() if len(paths) > 1]
    if clashes:
        raise DataError(
            images, "images that differ only by extension cannot be told apart: " + " vs ".join(clashes[0])
        )
    label_files: dict[Path, list[Path]] = {}
    for lab in iter_files(labels):
        if lab.suffix.lower() in _LABEL_SOURCE_EXTENSIONS:
            label_files.setdefault(lab.relative_to(labels).with_suffix(""), []).append(lab)
    pairs = []
    for rel in sorted(by_rel):
        img = by_rel[rel][0]
        candidates = sorted(label_files.get(rel, []))
        if not candidates:
            raise DataError(img, f"no label for this image under {labels} (expected {labels / rel}.*)")
        if len(candidates) > 1:
            raise DataError(img, f"several labels match: {', '.join(map(str, candidates))}")
        lab = candidates[0]
        if kind == "depth" and lab.suffix.lower() not in LABEL_EXTENSIONS["depth"]:
            raise DataError(
                lab,
                f"depth maps must be {'/'.join(LABEL_EXTENSIONS['depth'])} (16-bit PNG, float TIFF, "
                "metres in .npy/.exr); convert this file first",
            )
        pairs.append((rel, img, lab))
    orphans = sorted(str(p) for rel, paths in label_files.items() if rel not in by_rel for p in paths)
    return pairs, orphans


def _check_size(img: Path, lab: Path, image_hw: tuple[int, ...], label_hw: tuple[int, ...]) -> None:
    """Refuses a label whose size differs from its image's (both as training reads them)."""
    if tuple(image_hw) == tuple(label_hw):
        return
    message = (
        f"size mismatch: label is {label_hw[0]}x{label_hw[1]} (HxW) but image {img} is "
        f"{image_hw[0]}x{image_hw[1]}"
    )
    if tuple(label_hw) == tuple(image_hw[::-1]):
        orientation = exif_orientation(img)
        if orientation != 1:
            message += (
                f" after its EXIF orientation tag ({orientation}); the label may have been saved un-rotated"
            )
    raise DataError(lab, message)


class _Masks:
    """Maps mask values to class ids and remembers what it saw across the files of one import."""

    def __init__(self, label_map: dict[int, int] | None, unmapped: str) -> None:
        self.label_map = label_map
        self.unmapped = unmapped
        self.ids_in_use: set[int] = set()
        self.made_ignore: dict[int, int] = {}  # value -> files where unmapped="ignore" made it ignore
        self.ignore_seen: Path | None = None  # first file holding 255 without a label map

    def convert(self, mask: np.ndarray, path: Path) -> np.ndarray:
        """int64 ``(H, W)`` mask values → uint8 ``(H, W)`` class ids (255 = ignore)."""
        values, inverse = np.unique(mask, return_inverse=True)
        if self.label_map:
            targets = np.array([self.label_map.get(int(v), -1) for v in values], dtype=np.int64)
            bad = targets < 0
            if bad.any() and self.unmapped == "error":
                shown = " ".join(f"{k}:{v}" for k, v in sorted(self.label_map.items())[:_SHOWN])
                raise DataError(
                    path,
                    f"mask values {_show(values[bad])} are not in --label-map ({shown}); map them, or pass "
                    f"--unmapped ignore to make them ignore ({IGNORE_INDEX})",
                )
        else:
            targets = values.astype(np.int64)
            bad = (values < 0) | (values > IGNORE_INDEX)
            if bad.any() and self.unmapped == "error":
                raise DataError(
                    path,
                    f"mask holds {_show(values[bad])}, not class ids (0..{MAX_CLASS_ID}, {IGNORE_INDEX} = "
                    f"ignore); give --label-map (e.g. {int(values[bad][0])}:1), or --unmapped ignore to make "
                    "them ignore",
                )
            if IGNORE_INDEX in values and self.ignore_seen is None:
                self.ignore_seen = path
        for v in values[bad]:
            self.made_ignore[int(v)] = self.made_ignore.get(int(v), 0) + 1
        targets[bad] = IGNORE_INDEX
        self.ids_in_use.update(int(t) for t in targets if t != IGNORE_INDEX)
        return targets.astype(np.uint8)[inverse].reshape(mask.shape)

    def warn(self) -> None:
        """Logs what was made ignore (once per import)."""
        if self.made_ignore:
            counts = ", ".join(f"{v} ({n} file(s))" for v, n in sorted(self.made_ignore.items())[:_SHOWN])
            logger.warning("mask values with no class id were made ignore (%d): %s", IGNORE_INDEX, counts)
        if self.ignore_seen is not None:
            logger.warning(
                "%s (and maybe others): value %d is taken as ignore, not as a class; if it marks a class, "
                "give --label-map (e.g. 0:0 255:1)",
                self.ignore_seen,
                IGNORE_INDEX,
            )


def _check_out(out: Path, sources: Iterable[Path]) -> None:
    """Refuses an ``out`` that is a file, a non-empty folder, or inside a source folder."""
    if out.exists():
        if not out.is_dir():
            raise DataError(out, "exists and is not a folder; choose another --out")
        if any(out.iterdir()):
            raise DataError(out, "already exists and is not empty; choose another --out or remove it")
    resolved = out.resolve()
    for src in sources:
        src = src.resolve()
        if resolved == src or src in resolved.parents:
            raise DataError(out, f"is inside the source folder {src}; choose another --out")


def _make_parents(folder: Path) -> list[Path]:
    """Creates ``folder`` and its missing parents; returns the folders created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for d in reversed(missing):
        d.mkdir()
        created.append(d)
    return created


def import_pairs(
    images: str | Path,
    labels: str | Path,
    out: str | Path,
    label_map: dict[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    kind: str = "semantic",
    holdout: int = 0,
    seed: int = 0,
    unmapped: str = "error",
    test: int = 0,
) -> Path:
    """Copy ``images/<rel>`` and ``labels/<rel>`` pairs (matched by relative path without extension)
    into ``out`` in the folder format, checking every pair (see the module docstring).

    Args:
        images, labels: the source folders.
        out: the destination root; must not exist yet, or be an empty folder.
        label_map: mask value → class id (``0..254``, or 255 = ignore), e.g. ``{0: 0, 255: 1}``; every
            mask value must be in it. Omitted (or empty): the mask values are the class ids.
        class_names: names of the class ids ``0..len-1``, written to ``classes.json``; must cover every
            id in use (the label map's ids and those in the masks). Omitted: ``class_0 .. class_<max id>``.
        kind: "semantic" (masks, mapped and written as 8-bit PNG) or "depth" (copied unchanged).
        holdout: if > 0, this many pairs (chosen with ``seed``) go to ``out/val`` and the rest to
            ``out/train``, each a complete folder-format root.
        test: if > 0, this many further pairs go to ``out/test``: a split that neither training nor the
            choice of the best checkpoint (which watches ``val``) ever sees, to report figures on.
        seed: chooses the held-out pairs.
        unmapped: what to do with a mask value that has no class id (not in ``label_map``; without a map,
            outside ``0..255``): ``"error"`` refuses the file, ``"ignore"`` writes it as 255.

    Returns:
        ``out``.

    Raises:
        ConfigError: a bad option (label map, class names, kind, holdout, unmapped), or class names that
            do not cover the ids in use.
        DataError: a missing folder or label, an unreadable image or label, a label of another size, a
            mask value with no class id, an ``out`` that is not empty; nothing is written then.
    """
    images, labels, out = Path(images), Path(labels), Path(out)
    if kind not in _KINDS:
        raise ConfigError(f"--kind must be one of {_KINDS}, got {kind!r}")
    if unmapped not in _UNMAPPED:
        raise ConfigError(f"--unmapped must be one of {_UNMAPPED}, got {unmapped!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise ConfigError(f"--holdout must be a non-negative integer, got {holdout!r}")
    if isinstance(test, bool) or not isinstance(test, int) or test < 0:
        raise ConfigError(f"--test must be a non-negative integer, got {test!r}")
    label_map = _check_label_map(dict(label_map)) if label_map else None
    names = _check_class_names(class_names)
    if kind == "depth":
        given = [opt for opt, v in (("--label-map", label_map), ("--classes", names)) if v]
        given += ["--unmapped ignore"] if unmapped == "ignore" else []
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only for --kind semantic (depth maps are copied unchanged)"
            )
    if names is not None and label_map:
        problem = _names_missing(names, {t for t in label_map.values() if t != IGNORE_INDEX})
        if problem:
            raise ConfigError(problem)
    for folder in (images, labels):
        if not folder.is_dir():
            raise DataError(folder, "folder not found")
    _check_out(out, (images, labels))
    pairs, orphans = _find_pairs(images, labels, kind)
    if holdout + test >= len(pairs):
        given = f"--holdout {holdout}" + (f" + --test {test}" if test else "")
        raise ConfigError(f"{given}: must leave at least one of the {len(pairs)} pair(s) for training")

    try:
        created = _make_parents(out.parent)
        tmp = out.parent / f".{out.name}.importing-{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise DataError(out, f"cannot create the output folder: {e.strerror or e}") from None
    try:
        masks = _write(
            tmp,
            labels,
            pairs,
            kind,
            label_map,
            names,
            _split_roots(tmp, len(pairs), holdout, test, seed),
            unmapped,
        )
        if out.exists():
            out.rmdir()  # an empty folder (checked above)
        tmp.rename(out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(e, OSError):
            where = e.filename if getattr(e, "filename", None) else out
            raise DataError(where, f"cannot write: {e.strerror or e}") from None
        raise
    masks.warn()
    if orphans:
        logger.warning(
            "%s: %d label file(s) match no image and were not imported, e.g. %s",
            labels,
            len(orphans),
            orphans[0],
        )
    return out


def _split_roots(tmp: Path, count: int, holdout: int, test: int, seed: int) -> list[Path]:
    """The root each of ``count`` pairs goes to: one random permutation (``seed``) gives its first
    ``holdout`` pairs to ``val``, the next ``test`` to ``test`` and the rest to ``train``; with neither,
    every pair goes to ``tmp`` itself. The ``val`` choice does not depend on ``test``, so adding a test split
    to an import keeps the validation pairs it had."""
    if holdout == 0 and test == 0:
        return [tmp] * count
    split = ["train"] * count
    for rank, i in enumerate(np.random.default_rng(seed).permutation(count).tolist()):
        if rank < holdout:
            split[i] = "val"
        elif rank < holdout + test:
            split[i] = "test"
    return [tmp / name for name in split]


def _write(
    tmp: Path,
    labels: Path,
    pairs: list[tuple[Path, Path, Path]],
    kind: str,
    label_map: dict[int, int] | None,
    names: list[str] | None,
    roots: list[Path],
    unmapped: str,
) -> _Masks:
    """Checks and writes every pair (pair ``i`` into ``roots[i]``) and ``classes.json`` (into every root);
    raises at the first problem. Returns what the masks held (for the warnings once the import succeeded)."""
    masks = _Masks(label_map, unmapped)
    for (rel, img, lab), root in zip(pairs, roots, strict=True):
        image_hw = read_image(img).shape[:2]
        if kind == "depth":
            _check_size(img, lab, image_hw, read_depth(lab).shape)
            dst = _sub_path(root, "depth", rel, lab.suffix.lower())
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lab, dst)
        else:
            mask = read_mask(lab)
            _check_size(img, lab, image_hw, mask.shape)
            dst = _sub_path(root, "semantic", rel, ".png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(masks.convert(mask, lab)).save(dst)  # uint8 -> mode "L"
        dst_img = _sub_path(root, "images", rel, img.suffix.lower())
        dst_img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(img, dst_img)
    if kind != "semantic":
        return masks
    ids = masks.ids_in_use | {t for t in (label_map or {}).values() if t != IGNORE_INDEX}
    if names is not None:
        problem = _names_missing(names, ids)
        if problem:
            raise ConfigError(problem)
    elif not ids:
        raise DataError(
            labels,
            f"every mask pixel is ignore ({IGNORE_INDEX}): no class to learn; check --label-map, or give "
            "--classes to write the class table anyway",
        )
    else:
        names = [f"class_{i}" for i in range(max(ids) + 1)]
    palette = default_palette(len(names))
    table = [{"id": i, "name": n, "color": [int(c) for c in palette[i]]} for i, n in enumerate(names)]
    text = json.dumps({"classes": table, "ignore_index": IGNORE_INDEX}, indent=2)
    for root in set(roots):
        (root / "classes.json").write_text(text, encoding="utf-8")
    return masks
