"""Seeded random access: image ``index`` of ``(domain, seed)`` from nothing but those three values."""

from __future__ import annotations

import zlib

import numpy as np

from anydistill.data.toyworld.domains import Domain, get_domain
from anydistill.data.toyworld.render import render
from anydistill.data.toyworld.scene import Scene, sample_scene

#: Bumped whenever the same ``(domain, seed, index)`` would render differently; written to ``meta.json``.
GENERATOR_VERSION = 1


def image_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` from an int (square) or an ``(H, W)`` pair."""
    h, w = (size, size) if isinstance(size, int) else size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    return int(h), int(w)


def sample_id(domain: str, seed: int, index: int) -> str:
    """The ``"id"`` of a toyworld sample, also its file name stem on disk: ``"<domain>_<seed>_<index:07d>"``."""
    return f"{domain}_{seed}_{index:07d}"


def scene_rng(index: int, seed: int, domain: str | Domain) -> np.random.Generator:
    """The generator of one image: ``default_rng([seed, index, crc32(domain name)])``, independent of
    any other index (no shared state, so images can be made in any order, in any process)."""
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    name = get_domain(domain).name
    return np.random.default_rng([int(seed), int(index), zlib.crc32(name.encode())])


def make_scene(
    index: int, seed: int = 0, domain: str | Domain = "wide", size: int | tuple[int, int] = 128
) -> Scene:
    """The scene of image ``index`` (cheap: no rendering)."""
    h, w = image_size(size)
    dom = get_domain(domain)
    return sample_scene(scene_rng(index, seed, dom), dom, w, h)


def render_sample(
    index: int, seed: int = 0, domain: str | Domain = "wide", size: int | tuple[int, int] = 128
) -> dict[str, np.ndarray]:
    """Raw sample of image ``index``: ``image``, ``depth``, ``semantic``, ``instance``, ``K`` (see
    :func:`~.render.render`). Same arguments, bit-identical arrays."""
    return render(make_scene(index, seed, domain, size))
