"""Analytic ray–primitive intersections, vectorised over rays.

Every primitive answers, for rays ``o + t·d`` given as coordinate arrays, the parameter ``t`` of the
first surface hit (``inf`` where the ray misses or the hit is not in front, ``t ≤ EPS``). Origins and
directions broadcast against each other: primary rays pass one origin (floats) and ``(H, W)`` direction
arrays; shadow rays pass ``(N,)`` origin arrays and one direction (floats). Directions need not be unit:
primary rays use camera-space ``(x, y, 1)`` directions so that ``t`` *is* the camera-z depth.

Closed forms (``r = o − c`` relative to the primitive's centre/base):

- Sphere ``|p − c|² = R²``: ``t = (−b − √(b² − a·k)) / a`` with ``a = d·d``, ``b = d·r``, ``k = r·r − R²``.
- Box (yawed about z): slab method in the box frame, ``t_near = max_i min((±h_i − r_i)/d_i)``,
  ``t_far = min_i max((±h_i − r_i)/d_i)``, hit when ``t_near ≤ t_far``.
- Vertical cylinder ``x² + y² = R², 0 ≤ z ≤ H``: the xy quadratic for the side plus the top disk.
- Vertical cone (apex up) ``x² + y² = k²(z_apex − z)², k = R/H``: quadratic
  ``(dx²+dy²−k²dz²) t² + 2 (d_x r_x + d_y r_y + k² w d_z) t + (r_x²+r_y²−k² w²) = 0``, ``w = z_apex − o_z``,
  both roots kept where ``0 ≤ z ≤ H`` (the other nappe is rejected).
- Ellipsoid (radii ``(a, b, c)``, yawed about z): a unit sphere after scaling the box-frame ray by
  ``1/radii``.

Cylinders and cones stand on their base (the floor), so their bottom disk is never visible and is not
intersected. All primitives are convex, so a surface point never shadows itself on its lit side.

# Adapted from https://iquilezles.org/articles/intersectors/ (the standard closed forms).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from anydistill.data.toyworld.textures import Material

Vec3 = tuple[float, float, float]
Array = np.ndarray
Coord = Array | float

#: Smallest accepted hit distance (metres along a camera-z-normalised ray).
EPS = 1e-4


def _in_front(t: Array, ok: Array | None = None) -> Array:
    """``t`` where it is a valid hit (``t > EPS`` and ``ok``; NaN counts as a miss), else ``inf``."""
    keep = t > EPS
    if ok is not None:
        keep &= ok
    return np.where(keep, t, np.float32(np.inf))


def _as_arrays(dx: Coord, dy: Coord, dz: Coord) -> tuple[Array, Array, Array]:
    """Directions as float32 arrays (0-d for scalars), so that dividing by a zero component gives ±inf
    under ``np.errstate`` instead of raising ``ZeroDivisionError`` (e.g. a vertical sun)."""
    return np.asarray(dx, np.float32), np.asarray(dy, np.float32), np.asarray(dz, np.float32)


def _unit(x: Array, y: Array, z: Array) -> tuple[Array, Array, Array]:
    inv = 1.0 / np.sqrt(x * x + y * y + z * z)
    return x * inv, y * inv, z * inv


class Primitive(ABC):
    """A solid object: its semantic kind, material, intersection, normals and bounds."""

    kind: ClassVar[str]
    material: Material

    @abstractmethod
    def intersect(self, ox: Coord, oy: Coord, oz: Coord, dx: Coord, dy: Coord, dz: Coord) -> Array:
        """First hit ``t`` of rays ``o + t·d`` (broadcast shape), ``inf`` on a miss."""

    @abstractmethod
    def normal(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        """Outward unit normal at surface points ``(N,)``."""

    @abstractmethod
    def local(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        """Surface points in the object's own frame (texture coordinates, metres)."""

    @abstractmethod
    def aabb(self) -> tuple[Vec3, Vec3]:
        """World axis-aligned bounds ``(lo, hi)``."""

    def bounding_sphere(self) -> tuple[Vec3, float]:
        """A sphere containing the object: the AABB's centre and half diagonal."""
        lo, hi = self.aabb()
        centre = tuple(0.5 * (a + b) for a, b in zip(lo, hi, strict=True))
        radius = 0.5 * math.dist(lo, hi)
        return (centre[0], centre[1], centre[2]), radius


@dataclass(frozen=True)
class Sphere(Primitive):
    """A sphere of ``radius`` around ``center``."""

    center: Vec3
    radius: float
    material: Material = Material()
    kind: ClassVar[str] = "sphere"

    def intersect(self, ox: Coord, oy: Coord, oz: Coord, dx: Coord, dy: Coord, dz: Coord) -> Array:
        dx, dy, dz = _as_arrays(dx, dy, dz)
        cx, cy, cz = self.center
        rx, ry, rz = ox - cx, oy - cy, oz - cz
        a = dx * dx + dy * dy + dz * dz
        b = dx * rx + dy * ry + dz * rz
        k = rx * rx + ry * ry + rz * rz - self.radius * self.radius
        t = (-b - np.sqrt(b * b - a * k)) / a  # NaN where the ray misses
        return _in_front(t)

    def normal(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        cx, cy, cz = self.center
        inv = 1.0 / self.radius
        return (px - cx) * inv, (py - cy) * inv, (pz - cz) * inv

    def local(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        cx, cy, cz = self.center
        return px - cx, py - cy, pz - cz

    def aabb(self) -> tuple[Vec3, Vec3]:
        (cx, cy, cz), r = self.center, self.radius
        return (cx - r, cy - r, cz - r), (cx + r, cy + r, cz + r)


@dataclass(frozen=True)
class _Yawed(Primitive, ABC):
    """Shared frame maths of primitives rotated by ``yaw`` (radians) about the vertical axis."""

    center: Vec3
    yaw: float

    def _to_local(self, x: Coord, y: Coord) -> tuple[Coord, Coord]:
        """Rotate world xy offsets into the object frame: ``R_z(−yaw)``."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return c * x + s * y, c * y - s * x

    def _to_world(self, x: Array, y: Array) -> tuple[Array, Array]:
        """Rotate object-frame xy vectors back to the world: ``R_z(yaw)``."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return c * x - s * y, s * x + c * y

    def local(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        cx, cy, cz = self.center
        lx, ly = self._to_local(px - cx, py - cy)
        return lx, ly, pz - cz  # type: ignore[return-value]

    def _xy_extent(self, ax: float, ay: float, ellipse: bool) -> tuple[float, float]:
        c, s = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
        if ellipse:
            return math.hypot(c * ax, s * ay), math.hypot(s * ax, c * ay)
        return c * ax + s * ay, s * ax + c * ay


@dataclass(frozen=True)
class Box(_Yawed):
    """A box of half extents ``half`` around ``center``, turned by ``yaw`` about z."""

    half: Vec3 = (0.5, 0.5, 0.5)
    material: Material = Material()
    kind: ClassVar[str] = "box"

    def intersect(self, ox: Coord, oy: Coord, oz: Coord, dx: Coord, dy: Coord, dz: Coord) -> Array:
        dx, dy, dz = _as_arrays(dx, dy, dz)
        cx, cy, cz = self.center
        rx, ry = self._to_local(ox - cx, oy - cy)
        lx, ly = self._to_local(dx, dy)
        near, far = None, None
        for r, d, h in ((rx, lx, self.half[0]), (ry, ly, self.half[1]), (oz - cz, dz, self.half[2])):
            inv = 1.0 / d  # ±inf for a ray parallel to the slab: then t1, t2 = ∓inf, ±inf inside it
            t1, t2 = (-h - r) * inv, (h - r) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            near = lo if near is None else np.maximum(near, lo)
            far = hi if far is None else np.minimum(far, hi)
        return _in_front(near, near <= far)

    def normal(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        lx, ly, lz = self.local(px, py, pz)
        qx, qy, qz = lx / self.half[0], ly / self.half[1], lz / self.half[2]  # face = largest |q|
        ax, ay, az = np.abs(qx), np.abs(qy), np.abs(qz)
        on_x = (ax >= ay) & (ax >= az)
        on_y = ~on_x & (ay >= az)
        on_z = ~on_x & ~on_y
        nx, ny = self._to_world(on_x * np.sign(qx), on_y * np.sign(qy))
        return nx, ny, (on_z * np.sign(qz)).astype(px.dtype)

    def aabb(self) -> tuple[Vec3, Vec3]:
        (cx, cy, cz), (hx, hy, hz) = self.center, self.half
        ex, ey = self._xy_extent(hx, hy, ellipse=False)
        return (cx - ex, cy - ey, cz - hz), (cx + ex, cy + ey, cz + hz)


@dataclass(frozen=True)
class Ellipsoid(_Yawed):
    """An ellipsoid with semi-axes ``radii`` around ``center``, turned by ``yaw`` about z."""

    radii: Vec3 = (0.5, 0.5, 0.5)
    material: Material = Material()
    kind: ClassVar[str] = "ellipsoid"

    def intersect(self, ox: Coord, oy: Coord, oz: Coord, dx: Coord, dy: Coord, dz: Coord) -> Array:
        dx, dy, dz = _as_arrays(dx, dy, dz)
        cx, cy, cz = self.center
        ax, ay, az = (1.0 / r for r in self.radii)
        rx, ry = self._to_local(ox - cx, oy - cy)
        lx, ly = self._to_local(dx, dy)
        rx, ry, rz = rx * ax, ry * ay, (oz - cz) * az  # unit-sphere frame
        lx, ly, lz = lx * ax, ly * ay, dz * az
        a = lx * lx + ly * ly + lz * lz
        b = lx * rx + ly * ry + lz * rz
        k = rx * rx + ry * ry + rz * rz - 1.0
        t = (-b - np.sqrt(b * b - a * k)) / a
        return _in_front(t)

    def normal(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        lx, ly, lz = self.local(px, py, pz)
        ax, ay, az = self.radii
        gx, gy = self._to_world(lx / (ax * ax), ly / (ay * ay))  # gradient of Σ (x_i / a_i)²
        return _unit(gx, gy, lz / (az * az))

    def aabb(self) -> tuple[Vec3, Vec3]:
        (cx, cy, cz), (ax, ay, az) = self.center, self.radii
        ex, ey = self._xy_extent(ax, ay, ellipse=True)
        return (cx - ex, cy - ey, cz - az), (cx + ex, cy + ey, cz + az)


@dataclass(frozen=True)
class Cylinder(Primitive):
    """A vertical cylinder of ``radius`` and ``height`` standing on ``base`` (the bottom disk centre)."""

    base: Vec3
    radius: float
    height: float
    material: Material = Material()
    kind: ClassVar[str] = "cylinder"

    def intersect(self, ox: Coord, oy: Coord, oz: Coord, dx: Coord, dy: Coord, dz: Coord) -> Array:
        dx, dy, dz = _as_arrays(dx, dy, dz)
        bx, by, bz = self.base
        top = bz + self.height
        rx, ry = ox - bx, oy - by
        r2 = self.radius * self.radius
        a = dx * dx + dy * dy
        b = dx * rx + dy * ry
        k = rx * rx + ry * ry - r2
        t_side = (-b - np.sqrt(b * b - a * k)) / a
        z = oz + t_side * dz
        t_side = _in_front(t_side, (z >= bz) & (z <= top))
        t_cap = (top - oz) / dz  # the top disk, seen from above
        qx, qy = rx + t_cap * dx, ry + t_cap * dy
        t_cap = _in_front(t_cap, (qx * qx + qy * qy <= r2) & (oz > top))
        return np.minimum(t_side, t_cap)

    def normal(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        bx, by, bz = self.base
        rx, ry = px - bx, py - by
        radial = np.sqrt(rx * rx + ry * ry)
        cap = (bz + self.height - pz) < (self.radius - radial)  # nearer the top plane than the side
        inv = 1.0 / np.maximum(radial, 1e-6)
        side = ~cap
        return rx * inv * side, ry * inv * side, cap.astype(px.dtype)

    def local(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        bx, by, bz = self.base
        return px - bx, py - by, pz - bz

    def aabb(self) -> tuple[Vec3, Vec3]:
        (bx, by, bz), r = self.base, self.radius
        return (bx - r, by - r, bz), (bx + r, by + r, bz + self.height)


@dataclass(frozen=True)
class Cone(Primitive):
    """A vertical cone (apex up) of base ``radius`` and ``height`` standing on ``base``."""

    base: Vec3
    radius: float
    height: float
    material: Material = Material()
    kind: ClassVar[str] = "cone"

    def intersect(self, ox: Coord, oy: Coord, oz: Coord, dx: Coord, dy: Coord, dz: Coord) -> Array:
        dx, dy, dz = _as_arrays(dx, dy, dz)
        bx, by, bz = self.base
        apex = bz + self.height
        k2 = (self.radius / self.height) ** 2
        rx, ry, w = ox - bx, oy - by, apex - oz
        a = dx * dx + dy * dy - k2 * (dz * dz)
        b = dx * rx + dy * ry + k2 * w * dz
        k = rx * rx + ry * ry - k2 * (w * w)
        root = np.sqrt(b * b - a * k)
        best = None
        for t in ((-b - root) / a, (-b + root) / a):  # either root may be the near one when a < 0
            z = oz + t * dz
            t = _in_front(t, (z >= bz) & (z <= apex))
            best = t if best is None else np.minimum(best, t)
        return best

    def normal(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        bx, by, bz = self.base
        k2 = (self.radius / self.height) ** 2
        # gradient of x² + y² − k² (z_apex − z)²
        return _unit(px - bx, py - by, k2 * (bz + self.height - pz))

    def local(self, px: Array, py: Array, pz: Array) -> tuple[Array, Array, Array]:
        bx, by, bz = self.base
        return px - bx, py - by, pz - bz

    def aabb(self) -> tuple[Vec3, Vec3]:
        (bx, by, bz), r = self.base, self.radius
        return (bx - r, by - r, bz), (bx + r, by + r, bz + self.height)


#: Primitive classes by semantic kind name.
PRIMITIVES: dict[str, type[Primitive]] = {cls.kind: cls for cls in (Sphere, Box, Cylinder, Cone, Ellipsoid)}
