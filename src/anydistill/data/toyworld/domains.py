"""Named distributions of toyworld scene parameters.

A :class:`Domain` says from which ranges a scene's random parameters are drawn (uniformly within each
``(low, high)`` range). The labeled data of the Depth Anything story comes from ``narrow`` (closed rooms,
three object kinds, muted colours, two textures, near-fixed light and camera); unlabeled and test data
from ``wide`` (rooms and open scenes with sky, every object kind and texture, wide light, colour and
camera ranges). ``narrow``'s support lies inside ``wide``'s (checked by :func:`subdomain_violations`),
so pseudo-labels on ``wide`` images can teach a student what ``narrow`` labels never show.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from anydistill.errors import ConfigError
from anydistill.registry import Registry

Range = tuple[float, float]


@dataclass(frozen=True)
class Domain:
    """Scene-parameter distributions (lengths in metres, angles in degrees, colours as HSV in ``[0, 1]``).

    Args:
        name: registry name; also part of the per-image seed.
        indoor_prob: probability of a room (floor, walls, maybe ceiling) instead of an open ground with sky.
        ceiling_prob: probability that a room has a ceiling.
        wall_missing_prob: probability that each of the four walls is left out (the sky shows through).
        room_size: side lengths of the rectangular floor.
        room_height: ceiling height.
        object_count: inclusive range of the number of objects.
        object_kinds: kinds drawn uniformly (names from ``primitives.PRIMITIVES``).
        object_size: characteristic size (radius / half extent) of an object.
        float_prob: probability that a sphere or ellipsoid hovers above the floor.
        texture_kinds: texture kinds drawn uniformly for every surface (``textures.TEXTURE_KINDS``).
        texture_scale: texture period.
        hue, saturation, value: HSV ranges of surface colours.
        light_elevation, light_intensity, ambient: sun elevation above the horizon, sun and ambient strength.
        light_tint: largest warm/cool shift of the light colour away from white (0 = white light).
        camera_height, camera_pitch, camera_roll, hfov: camera pose (pitch > 0 looks down) and horizontal
            field of view.
        sky_hue, sky_saturation, sky_value: HSV ranges of the zenith colour.
        far: ground farther than this depth is sky (keeps depth finite and under the 16-bit PNG limit).
    """

    name: str
    indoor_prob: float
    ceiling_prob: float
    wall_missing_prob: float
    room_size: Range
    room_height: Range
    object_count: tuple[int, int]
    object_kinds: tuple[str, ...]
    object_size: Range
    float_prob: float
    texture_kinds: tuple[str, ...]
    texture_scale: Range
    hue: Range
    saturation: Range
    value: Range
    light_elevation: Range
    light_intensity: Range
    ambient: Range
    light_tint: float
    camera_height: Range
    camera_pitch: Range
    camera_roll: Range
    hfov: Range
    sky_hue: Range = (0.55, 0.62)
    sky_saturation: Range = (0.3, 0.6)
    sky_value: Range = (0.8, 1.0)
    far: float = 60.0


DOMAINS: Registry[Domain] = Registry("toyworld domain")

_NARROW = Domain(
    name="narrow",
    indoor_prob=1.0,
    ceiling_prob=1.0,
    wall_missing_prob=0.0,
    room_size=(5.0, 8.0),
    room_height=(2.6, 3.2),
    object_count=(1, 4),
    object_kinds=("sphere", "box", "cylinder"),
    object_size=(0.25, 0.6),
    float_prob=0.0,
    texture_kinds=("solid", "checker"),
    texture_scale=(0.3, 0.8),
    hue=(0.0, 1.0),
    saturation=(0.1, 0.4),
    value=(0.45, 0.8),
    light_elevation=(50.0, 60.0),
    light_intensity=(0.75, 0.85),
    ambient=(0.3, 0.35),
    light_tint=0.0,
    camera_height=(1.2, 1.8),
    camera_pitch=(10.0, 30.0),
    camera_roll=(0.0, 0.0),
    hfov=(55.0, 65.0),
)

_WIDE = Domain(
    name="wide",
    indoor_prob=0.5,
    ceiling_prob=0.5,
    wall_missing_prob=0.25,
    room_size=(3.5, 12.0),
    room_height=(2.2, 4.0),
    object_count=(0, 8),
    object_kinds=("sphere", "box", "cylinder", "cone", "ellipsoid"),
    object_size=(0.15, 1.2),
    float_prob=0.3,
    texture_kinds=("solid", "checker", "stripes", "noise", "marble"),
    texture_scale=(0.1, 2.0),
    hue=(0.0, 1.0),
    saturation=(0.0, 1.0),
    value=(0.2, 1.0),
    light_elevation=(15.0, 85.0),
    light_intensity=(0.4, 1.3),
    ambient=(0.1, 0.5),
    light_tint=0.25,
    camera_height=(0.4, 3.0),
    camera_pitch=(-5.0, 65.0),
    camera_roll=(-12.0, 12.0),
    hfov=(40.0, 100.0),
    sky_hue=(0.5, 0.68),
    sky_saturation=(0.1, 0.8),
    sky_value=(0.6, 1.0),
)


@DOMAINS.register("narrow")
def narrow() -> Domain:
    """Labeled data: closed rooms, spheres/boxes/cylinders, muted solid or checker surfaces, steady light."""
    return _NARROW


@DOMAINS.register("wide")
def wide() -> Domain:
    """Unlabeled and test data: rooms and open ground with sky, every kind, texture, light and camera."""
    return _WIDE


@DOMAINS.register("outdoor")
def outdoor() -> Domain:
    """``wide`` without rooms: open ground, sky and haze only."""
    return replace(_WIDE, name="outdoor", indoor_prob=0.0)


@DOMAINS.register("indoor")
def indoor() -> Domain:
    """``wide`` in rooms only (some open to the sky)."""
    return replace(_WIDE, name="indoor", indoor_prob=1.0)


def get_domain(domain: str | Domain) -> Domain:
    """The registered domain called ``domain`` (a :class:`Domain` passes through)."""
    if isinstance(domain, Domain):
        return domain
    if domain not in DOMAINS:
        raise ConfigError(f"unknown toyworld domain {domain!r}; known: {', '.join(DOMAINS.names())}")
    return DOMAINS.build(domain)


def subdomain_violations(inner: Domain, outer: Domain) -> list[str]:
    """Fields where ``inner`` can produce a value ``outer`` cannot (empty when ``inner ⊆ outer``).

    Ranges must nest, kind sets must be subsets, and a probability may only be 0 or 1 in ``inner`` where
    ``outer`` allows that outcome too.
    """
    bad = []
    for f in fields(Domain):
        a, b = getattr(inner, f.name), getattr(outer, f.name)
        if f.name == "name":
            continue
        if isinstance(a, tuple) and a and isinstance(a[0], str):
            if not set(a) <= set(b):
                bad.append(f.name)
        elif isinstance(a, tuple):
            if a[0] < b[0] or a[1] > b[1]:
                bad.append(f.name)
        elif f.name.endswith("_prob"):
            if (a > 0 and b == 0) or (a < 1 and b == 1):
                bad.append(f.name)
        elif f.name == "light_tint":
            if a > b:
                bad.append(f.name)
        elif a != b:
            bad.append(f.name)
    return bad
