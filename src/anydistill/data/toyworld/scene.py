"""Scene description (room or open ground, objects, light, sky) and its random sampling from a domain.

A :class:`Scene` is plain data; :func:`sample_scene` draws one from a :class:`~.domains.Domain` with a
given ``numpy.random.Generator`` and nothing else, so a scene is a pure function of the generator state.
Hand-built scenes (tests, demos) use the same dataclasses.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, replace

import numpy as np

from anydistill.data.toyworld.camera import Camera
from anydistill.data.toyworld.domains import Domain
from anydistill.data.toyworld.primitives import Box, Cone, Cylinder, Ellipsoid, Primitive, Sphere
from anydistill.data.toyworld.textures import Material

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Room:
    """An axis-aligned room ``[x0, x1] × [y0, y1]`` on the floor ``z = 0``.

    ``ceiling`` is its height (``None``: open to the sky); ``walls`` says which of the walls at
    ``x0, x1, y0, y1`` exist (a missing wall lets the floor run on to the horizon). The renderer assumes
    the camera is inside the room (and, like every scene, above the floor).
    """

    x0: float
    x1: float
    y0: float
    y1: float
    ceiling: float | None = 3.0
    walls: tuple[bool, bool, bool, bool] = (True, True, True, True)

    @property
    def closed(self) -> bool:
        """No sky can be seen from inside."""
        return self.ceiling is not None and all(self.walls)


@dataclass(frozen=True)
class Light:
    """A directional sun plus ambient light (RGB irradiances; ``direction`` is a unit vector toward the sun)."""

    direction: Vec3 = (0.0, 0.0, 1.0)
    color: Vec3 = (0.8, 0.8, 0.8)
    ambient: Vec3 = (0.3, 0.3, 0.3)


@dataclass(frozen=True)
class Sky:
    """A vertical gradient from ``horizon`` to ``zenith`` (RGB in ``[0, 1]``)."""

    zenith: Vec3 = (0.35, 0.55, 0.9)
    horizon: Vec3 = (0.8, 0.88, 0.95)


@dataclass(frozen=True)
class Scene:
    """Everything the renderer needs for one image.

    ``room=None`` is an open scene: an unbounded ground plane under the sky. Ground (or any surface)
    farther than ``far`` metres in depth is rendered as sky. ``fog`` is the haze distance ``D`` in
    ``f = exp(−(depth / D)²)`` (mix toward the horizon colour), ``None`` for no haze.
    """

    camera: Camera
    light: Light = Light()
    objects: tuple[Primitive, ...] = ()
    floor: Material = Material()
    wall: Material = Material()
    ceiling: Material = Material()
    room: Room | None = None
    sky: Sky = Sky()
    far: float = 60.0
    fog: float | None = None


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return lo if lo == hi else float(rng.uniform(lo, hi))


def _hsv(rng: np.random.Generator, domain: Domain) -> Vec3:
    h = _uniform(rng, domain.hue) % 1.0
    rgb = colorsys.hsv_to_rgb(h, _uniform(rng, domain.saturation), _uniform(rng, domain.value))
    return rgb[0], rgb[1], rgb[2]


def sample_material(
    rng: np.random.Generator, domain: Domain, kinds: tuple[str, ...] | None = None
) -> Material:
    """A random material of one of ``kinds`` (default: the domain's texture kinds)."""
    kinds = kinds or domain.texture_kinds
    kind = kinds[int(rng.integers(len(kinds)))]
    scale = _uniform(rng, domain.texture_scale)
    a = _hsv(rng, domain)
    if kind == "solid":
        shade = 1.0 + float(rng.uniform(-0.15, 0.15))  # a faint large-scale variation of brightness
        b = tuple(min(1.0, c * shade) for c in a)
    elif kind in ("noise", "marble") and rng.random() < 0.5:
        shade = float(rng.uniform(0.4, 0.8))  # darker veins / blotches of the same hue
        b = tuple(c * shade for c in a)
    else:
        b = _hsv(rng, domain)
    axes = rng.normal(size=(4, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True) + 1e-12  # (4, 3) random unit vectors
    offsets_phases = rng.uniform(0.0, 1.0, size=6)
    freq = 2.0 * math.pi / (scale * (4.0 if kind == "solid" else 1.0))
    waves = tuple(
        tuple(freq * octave * c for c in axis)
        for octave, axis in zip((1.0, 2.03, 4.1), axes[1:].tolist(), strict=True)
    )
    direction = axes[0].tolist()
    off = (offsets_phases[:3] * scale).tolist()
    return Material(
        kind=kind,
        color_a=a,
        color_b=(b[0], b[1], b[2]),
        scale=scale,
        direction=(direction[0], direction[1], direction[2]),
        offset=(off[0], off[1], off[2]),
        waves=waves,  # type: ignore[arg-type]
        wave_phases=tuple((offsets_phases[3:] * (2 * math.pi)).tolist()),
    )


def _sample_shape(
    rng: np.random.Generator, kind: str, size: float, floats: bool, material: Material
) -> Primitive:
    """An object of ``kind`` centred at the origin's vertical axis (moved into place by :func:`_placed`)."""
    lift = float(rng.uniform(0.2, 1.2)) * size if floats else 0.0
    if kind == "sphere":
        return Sphere((0.0, 0.0, size + lift), size, material)
    if kind == "ellipsoid":
        radii = tuple(size * float(rng.uniform(0.5, 1.3)) for _ in range(3))
        return Ellipsoid((0.0, 0.0, radii[2] + lift), float(rng.uniform(0, math.pi)), radii, material)  # type: ignore[arg-type]
    if kind == "box":
        half = (
            size * float(rng.uniform(0.6, 1.4)),
            size * float(rng.uniform(0.6, 1.4)),
            size * float(rng.uniform(0.5, 1.6)),
        )
        return Box((0.0, 0.0, half[2]), float(rng.uniform(0, 0.5 * math.pi)), half, material)
    if kind == "cylinder":
        return Cylinder(
            (0.0, 0.0, 0.0),
            size * float(rng.uniform(0.5, 1.0)),
            size * float(rng.uniform(1.5, 4.0)),
            material,
        )
    if kind == "cone":
        return Cone(
            (0.0, 0.0, 0.0),
            size * float(rng.uniform(0.6, 1.1)),
            size * float(rng.uniform(1.5, 3.5)),
            material,
        )
    raise ValueError(f"unknown object kind {kind!r}")


def _placed(shape: Primitive, x: float, y: float) -> Primitive:
    """``shape`` moved horizontally to ``(x, y)``."""
    if isinstance(shape, Cylinder | Cone):
        return replace(shape, base=(x, y, shape.base[2]))
    return replace(shape, center=(x, y, shape.center[2]))  # type: ignore[call-arg]


def _footprint(shape: Primitive) -> float:
    """Radius of a vertical cylinder around the object's axis that contains it."""
    lo, hi = shape.aabb()
    return 0.5 * math.hypot(hi[0] - lo[0], hi[1] - lo[1])


def _sample_objects(
    rng: np.random.Generator,
    domain: Domain,
    camera_xy: tuple[float, float],
    yaw: float,
    hfov: float,
    room: Room | None,
) -> tuple[Primitive, ...]:
    """Objects standing (or hovering) on the floor, mostly in view, not touching each other or the camera."""
    lo, hi = domain.object_count
    count = int(rng.integers(lo, hi + 1))
    placed: list[tuple[Primitive, float, float, float]] = []  # (shape, x, y, footprint)
    reach = 15.0 if room is None else math.hypot(room.x1 - room.x0, room.y1 - room.y0)
    for _ in range(count):
        kind = domain.object_kinds[int(rng.integers(len(domain.object_kinds)))]
        floats = kind in ("sphere", "ellipsoid") and rng.random() < domain.float_prob
        shape = _sample_shape(
            rng, kind, _uniform(rng, domain.object_size), floats, sample_material(rng, domain)
        )
        if room is not None and room.ceiling is not None and shape.aabb()[1][2] > room.ceiling - 0.05:
            continue  # would pierce the ceiling
        radius = _footprint(shape)
        for _attempt in range(20):
            if rng.random() < 0.85:  # in the view wedge
                bearing = yaw + float(rng.uniform(-0.45, 0.45)) * hfov
                dist = float(rng.uniform(radius + 0.8, max(radius + 1.0, reach)))
                x, y = camera_xy[0] + dist * math.sin(bearing), camera_xy[1] + dist * math.cos(bearing)
            elif room is not None:
                x, y = float(rng.uniform(room.x0, room.x1)), float(rng.uniform(room.y0, room.y1))
            else:
                x, y = (
                    camera_xy[0] + float(rng.uniform(-reach, reach)),
                    camera_xy[1] + float(rng.uniform(-reach, reach)),
                )
            if room is not None and not (
                room.x0 + radius + 0.05 < x < room.x1 - radius - 0.05
                and room.y0 + radius + 0.05 < y < room.y1 - radius - 0.05
            ):
                continue
            if math.hypot(x - camera_xy[0], y - camera_xy[1]) < radius + 0.5:
                continue
            if any(math.hypot(x - px, y - py) < radius + pr + 0.1 for _, px, py, pr in placed):
                continue
            placed.append((_placed(shape, x, y), x, y, radius))
            break
    return tuple(p[0] for p in placed)


def _sample_light_and_sky(rng: np.random.Generator, domain: Domain, indoor: bool) -> tuple[Light, Sky]:
    elevation = math.radians(_uniform(rng, domain.light_elevation))
    azimuth = float(rng.uniform(0, 2 * math.pi))
    direction = (
        math.cos(elevation) * math.sin(azimuth),
        math.cos(elevation) * math.cos(azimuth),
        math.sin(elevation),
    )
    warm = float(rng.uniform(-domain.light_tint, domain.light_tint)) if domain.light_tint > 0 else 0.0
    sun = _uniform(rng, domain.light_intensity)
    ambient = _uniform(rng, domain.ambient)
    zh = _uniform(rng, domain.sky_hue)
    zenith = colorsys.hsv_to_rgb(zh, _uniform(rng, domain.sky_saturation), _uniform(rng, domain.sky_value))
    glow = max(0.0, 1.0 - math.degrees(elevation) / 30.0)  # a low sun warms the horizon
    horizon = tuple(
        0.45 * z + 0.55 * w for z, w in zip(zenith, (1.0, 1.0 - 0.25 * glow, 1.0 - 0.5 * glow), strict=True)
    )
    sun_rgb = (sun * (1 + warm), sun, sun * (1 - warm))
    if indoor:
        amb_rgb = (ambient * (1 - 0.5 * warm), ambient, ambient * (1 + 0.5 * warm))
    else:  # skylight: the ambient takes a little of the sky's colour
        amb_rgb = tuple(ambient * (0.7 + 0.3 * z / max(zenith)) for z in zenith)
    light = Light(direction, sun_rgb, (amb_rgb[0], amb_rgb[1], amb_rgb[2]))
    return light, Sky((zenith[0], zenith[1], zenith[2]), (horizon[0], horizon[1], horizon[2]))


def sample_scene(rng: np.random.Generator, domain: Domain, width: int, height: int) -> Scene:
    """Draw a random scene of ``domain`` for a ``width × height`` image from ``rng`` alone."""
    indoor = rng.random() < domain.indoor_prob
    room = None
    cam_height = _uniform(rng, domain.camera_height)
    if indoor:
        sx, sy = _uniform(rng, domain.room_size), _uniform(rng, domain.room_size)
        ceiling = _uniform(rng, domain.room_height) if rng.random() < domain.ceiling_prob else None
        walls = tuple(bool(rng.random() >= domain.wall_missing_prob) for _ in range(4))
        room = Room(-0.5 * sx, 0.5 * sx, -0.5 * sy, 0.5 * sy, ceiling, walls)  # type: ignore[arg-type]
        cam_xy = (
            float(rng.uniform(room.x0 + 0.5, room.x1 - 0.5)),
            float(rng.uniform(room.y0 + 0.5, room.y1 - 0.5)),
        )
        if ceiling is not None:
            cam_height = min(cam_height, ceiling - 0.3)
    else:
        cam_xy = (0.0, 0.0)
    if indoor:  # look into the room rather than at the nearest wall: toward the centre, ±70°
        yaw = math.atan2(-cam_xy[0], -cam_xy[1]) + math.radians(float(rng.uniform(-70.0, 70.0)))
    else:
        yaw = float(rng.uniform(0, 2 * math.pi))
    pitch = math.radians(_uniform(rng, domain.camera_pitch))
    roll = math.radians(_uniform(rng, domain.camera_roll))
    hfov = math.radians(_uniform(rng, domain.hfov))
    camera = Camera.from_fov((cam_xy[0], cam_xy[1], cam_height), yaw, pitch, roll, hfov, width, height)
    light, sky = _sample_light_and_sky(rng, domain, indoor)
    floor = sample_material(rng, domain)
    wall = sample_material(rng, domain)
    ceiling_material = sample_material(rng, domain, kinds=("solid",))
    objects = _sample_objects(rng, domain, cam_xy, yaw, hfov, room)
    open_to_sky = room is None or not room.closed
    fog = domain.far * float(rng.uniform(0.4, 0.6)) if open_to_sky else None
    return Scene(camera, light, objects, floor, wall, ceiling_material, room, sky, domain.far, fog)
