"""Write toyworld images to disk in the user folder format (so every later code path is shared).

Layout (see the project's data conventions)::

    out/images/<id>.png      RGB
    out/depth/<id>.png       uint16 millimetres (depth_scale 1000), 0 = invalid (sky), clamped at 65.535 m
    out/semantic/<id>.png    palette PNG, pixel value = class id
    out/instances/<id>.png   uint16 instance ids, 0 = none
    out/classes.json  out/meta.json  out/cameras.json

with ``<id> = "<domain>_<seed>_<index:07d>"``. Every file is written to a temporary name and moved into
place with ``os.replace``, so a file that exists is complete: a rerun (after a crash, or with a larger
``count``) renders only what is missing and leaves existing files untouched.
"""

from __future__ import annotations

import json
import multiprocessing
import numbers
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from anydistill.data.outputs import make_output_folder
from anydistill.data.toyworld.classes import IGNORE_INDEX, class_table, palette
from anydistill.data.toyworld.domains import get_domain
from anydistill.data.toyworld.sample import (
    GENERATOR_VERSION,
    image_size,
    make_scene,
    render_sample,
    sample_id,
)
from anydistill.errors import ConfigError, DataError

DEPTH_SCALE = 1000.0
GENERATOR = "anydistill.toyworld"
_FOLDERS = ("images", "depth", "semantic", "instances")


def _atomic_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # no image extension: folder scans skip it
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _atomic_json(data: Any, path: Path) -> None:
    """Write ``data`` as JSON unless ``path`` already holds exactly that (keeps mtimes on reruns)."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def depth_to_png(depth: np.ndarray) -> np.ndarray:
    """Metres ``(H, W)`` → uint16 millimetres, 0 stays 0 (invalid), clamped to 65535 (65.535 m)."""
    return np.clip(np.rint(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def _encode(sample: dict[str, np.ndarray], folder: str) -> Image.Image:
    if folder == "images":
        return Image.fromarray(sample["image"])
    if folder == "depth":
        return Image.fromarray(depth_to_png(sample["depth"]))
    if folder == "semantic":
        im = Image.fromarray(sample["semantic"].astype(np.uint8))
        im.putpalette(palette())  # "L" → "P": pixel values stay the class ids
        return im
    return Image.fromarray(sample["instance"].astype(np.uint16))


def _write_one(
    out: Path, domain: str, seed: int, size: tuple[int, int], index: int
) -> list[list[float]] | None:
    """Render image ``index`` and write whichever of its four files are missing; its ``K`` (``None`` when
    nothing was missing)."""
    name = sample_id(domain, seed, index)
    missing = [f for f in _FOLDERS if not (out / f / f"{name}.png").exists()]
    if not missing:
        return None
    sample = render_sample(index, seed, domain, size)
    for folder in missing:
        _atomic_png(_encode(sample, folder), out / folder / f"{name}.png")
    return sample["K"].tolist()


def _merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, f"unreadable JSON ({err}); delete it or write to another folder") from None


def _check_meta(out: Path, domain: str, seed: int, size: tuple[int, int]) -> list[list[int]]:
    """Ranges already written to ``out``; refuses to mix different domains, seeds, sizes or versions."""
    path = out / "meta.json"
    if not path.exists():
        return []
    meta = _read_json(path)
    if meta.get("generator") != GENERATOR:
        raise DataError(path, "this folder holds other data, not toyworld images; write to an empty folder")
    ours = {"domain": domain, "seed": seed, "size": list(size), "generator_version": GENERATOR_VERSION}
    theirs = {k: meta.get(k) for k in ours}
    if theirs != ours:
        raise DataError(path, f"folder holds toyworld {theirs}, refusing to add {ours}; use another folder")
    return [list(r) for r in meta.get("ranges", [])]


def check_toyworld_args(**values: int) -> None:
    """Refuse a ``count``/``size`` below 1 or a ``seed``/``start``/``workers`` below 0 with a
    :class:`~anydistill.errors.ConfigError` naming the argument (``bool`` and non-integers too)."""
    for key, value in values.items():
        minimum = 1 if key in ("count", "size") else 0
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value!r}")


def write_toyworld(
    out: Path,
    count: int,
    size: int,
    domain: str,
    seed: int,
    start: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Render images ``start .. start+count-1`` of ``(domain, seed)`` at ``size`` into ``out`` (folder format).

    Resumable and idempotent: existing complete files are kept, so rerunning rewrites nothing.
    ``workers > 0`` renders in that many processes. Returns ``out``.

    Raises:
        ConfigError: ``count`` or ``size`` below 1, ``start``, ``seed`` or ``workers`` below 0, or an
            unknown ``domain``; one line naming the argument.
        DataError: ``out`` holds other data (another generator, domain, seed or size), or is a file or
            a folder that cannot be created.
    """
    out = Path(out)
    check_toyworld_args(count=count, size=size, seed=seed, start=start, workers=workers)
    name = get_domain(domain).name
    hw = image_size(size)
    make_output_folder(out)  # a file, or a folder that cannot be created: one line naming it
    ranges = _check_meta(out, name, seed, hw)
    for folder in _FOLDERS:
        make_output_folder(out / folder)
    indices = range(start, start + count)
    cameras_path = out / "cameras.json"
    cameras = _read_json(cameras_path) if cameras_path.exists() else {}
    jobs = [(out, name, seed, hw, i) for i in indices]
    bar = tqdm(total=count, desc=f"toyworld {name}", unit="img", disable=not progress)
    if workers > 0 and count > 1:
        # fork (Linux; what torch's DataLoader uses) shares the already imported modules: a spawned
        # worker would spend seconds importing torch through ``anydistill.data`` before its first image.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            results = pool.map(_write_one_packed, jobs, chunksize=max(1, min(64, count // (8 * workers))))
            for i, K in zip(indices, results, strict=True):
                if K is not None:
                    cameras[sample_id(name, seed, i)] = K
                bar.update()
    else:
        for i, job in zip(indices, jobs, strict=True):
            K = _write_one(*job)
            if K is not None:
                cameras[sample_id(name, seed, i)] = K
            bar.update()
    bar.close()

    for i in indices:
        key = sample_id(name, seed, i)
        if key not in cameras:  # a complete image from an earlier run: K needs only the scene draw
            cameras[key] = make_scene(i, seed, name, hw).camera.K().tolist()
    _atomic_json(cameras, cameras_path)
    _atomic_json({"classes": class_table(), "ignore_index": IGNORE_INDEX}, out / "classes.json")
    ranges = _merge_ranges(ranges + ([[start, start + count]] if count else []))
    meta = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "domain": name,
        "seed": seed,
        "size": list(hw),
        "ranges": ranges,
        "count": sum(b - a for a, b in ranges),
        "depth_scale": DEPTH_SCALE,
        "depth": "camera z in millimetres; 0 = invalid (sky or beyond the far plane)",
    }
    _atomic_json(meta, out / "meta.json")
    return out


def _write_one_packed(job: tuple[Path, str, int, tuple[int, int], int]) -> list[list[float]] | None:
    return _write_one(*job)
