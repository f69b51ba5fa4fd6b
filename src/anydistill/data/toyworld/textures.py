"""Procedural materials: a pattern ``s(p) ∈ [0, 1]`` of the surface point mixes two colours.

``albedo(p) = color_a + s(p) · (color_b − color_a)`` with, for a point ``p = (u, v, w)`` in metres
(in the surface's own frame, see each primitive's ``local``):

- ``solid``:   ``s = noise(p)`` (a plain colour when ``color_b == color_a``, else a faint variation)
- ``checker``: ``s = (⌊u'/L⌋ + ⌊v'/L⌋ + ⌊w'/L⌋) mod 2``        with ``p' = p + offset``, ``L = scale``
- ``stripes``: ``s = [sin(2π (p·a / L + offset_u)) > 0]``           ``a`` = ``direction`` (unit)
- ``noise``:   ``s = ½ + ½ Σ_i A_i sin(k_i·p + φ_i) / Σ_i A_i``      three octaves, ``A = (1, ½, ¼)``
- ``marble``:  ``s = ½ + ½ sin(2π p·a / L + 4 (noise(p) − ½))``

The "noise" is a sum of three random plane waves rather than Perlin noise: it costs a handful of array
operations per pixel, which keeps the renderer at hundreds of images per second per core (a lattice
noise would need gathers from a random table per octave and is several times slower in numpy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]
Array = np.ndarray

TEXTURE_KINDS: tuple[str, ...] = ("solid", "checker", "stripes", "noise", "marble")
_OCTAVE_AMPLITUDES = (1.0, 0.5, 0.25)
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class Material:
    """A two-colour procedural texture (see the module docstring for the patterns).

    Args:
        kind: one of :data:`TEXTURE_KINDS`.
        color_a, color_b: RGB albedos in ``[0, 1]``.
        scale: period of checker/stripes/marble in metres.
        direction: unit axis of stripes and marble veins.
        offset: shift of the pattern in metres (random per material, so lattice lines never sit exactly
            on a surface such as ``z = 0`` where float noise would flip the checker parity).
        waves: noise wave vectors in radians per metre, one per octave (empty = no noise).
        wave_phases: noise phases in radians, one per wave.
    """

    kind: str = "solid"
    color_a: Vec3 = (0.6, 0.6, 0.6)
    color_b: Vec3 = (0.6, 0.6, 0.6)
    scale: float = 1.0
    direction: Vec3 = (1.0, 0.0, 0.0)
    offset: Vec3 = (0.0, 0.0, 0.0)
    waves: tuple[Vec3, ...] = ()
    wave_phases: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TEXTURE_KINDS:
            raise ValueError(f"unknown texture kind {self.kind!r}; known: {', '.join(TEXTURE_KINDS)}")
        if len(self.waves) != len(self.wave_phases):
            raise ValueError("waves and wave_phases must have the same length")


def solid(color: Vec3) -> Material:
    """A plain colour (no pattern)."""
    return Material("solid", color, color)


def _noise01(m: Material, u: Array, v: Array | float, w: Array | float) -> Array:
    """``½ + ½ Σ A_i sin(k_i·p + φ_i) / Σ A_i`` over the material's waves; shape of ``u``."""
    total = np.zeros_like(u)
    norm = 0.0
    for (kx, ky, kz), phase, amp in zip(m.waves, m.wave_phases, _OCTAVE_AMPLITUDES, strict=False):
        total += amp * np.sin(u * kx + v * ky + w * kz + phase)
        norm += amp
    if norm == 0.0:
        return total
    return total * (0.5 / norm) + 0.5


def pattern(m: Material, u: Array, v: Array | float, w: Array | float) -> Array | None:
    """``s(p)`` in ``[0, 1]`` for points ``(u, v, w)`` (arrays of one shape, or scalars for constant
    coordinates on planes), or ``None`` when the material is a plain colour."""
    ox, oy, oz = m.offset
    if m.kind == "checker":
        inv = 1.0 / m.scale
        cells = np.floor((u + ox) * inv) + np.floor((v + oy) * inv) + np.floor((w + oz) * inv)
        return np.mod(cells, 2.0)
    if m.kind == "stripes":
        ax, ay, az = m.direction
        along = (u * ax + v * ay + w * az) * (_TWO_PI / m.scale) + _TWO_PI * ox
        return (np.sin(along) > 0).astype(u.dtype)
    if m.kind == "marble":
        ax, ay, az = m.direction
        along = (u * ax + v * ay + w * az) * (_TWO_PI / m.scale) + _TWO_PI * ox
        return np.sin(along + 8.0 * _noise01(m, u, v, w) - 4.0) * 0.5 + 0.5
    # "noise", and "solid" with a colour variation
    if m.color_a == m.color_b or not m.waves:
        return None
    return _noise01(m, u, v, w)


def albedo(m: Material, u: Array, v: Array | float, w: Array | float) -> tuple[Array, Array, Array]:
    """RGB albedo ``color_a + s · (color_b − color_a)`` at points ``(u, v, w)``; three arrays shaped like ``u``."""
    s = pattern(m, u, v, w)
    out = []
    for a, b in zip(m.color_a, m.color_b, strict=True):
        out.append(np.full_like(u, a) if s is None else s * (b - a) + a)
    return out[0], out[1], out[2]
