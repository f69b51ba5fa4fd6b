"""Vectorised ray casting of a :class:`~.scene.Scene` into image, depth, semantic and instance maps.

Per image (all numpy, float32, no per-pixel Python loop):

1. Primary rays ``o + t·d`` with camera-space direction ``((u − cx)/fx, (v − cy)/fy, 1)``, so ``t`` is the
   camera-z depth. The room shell is intersected in closed form (for each axis only the plane the ray
   moves toward can be hit: ``t = (plane − o) / d``), then every object inside the screen rectangle that
   bounds the projection of its AABB (exact culling: the projected convex hull contains the object).
2. Labels come from the same winning hit per pixel: ``semantic`` by surface kind, ``instance`` 1..n for
   objects (0 for floor, walls, ceiling and sky), ``depth = t`` (0 for sky and beyond ``scene.far``).
   No anti-aliasing anywhere: every label is exactly the surface whose colour the pixel shows.
3. Shading: ``c = albedo ⊙ (ambient + sun · max(0, n·l) · lit)``, where ``lit`` comes from shadow rays
   ``p + s·l`` against every object (only objects whose bounding sphere the ray can reach are tested:
   the point's coordinates in a plane orthogonal to ``l`` must fall within the sphere's radius of its
   centre). The room shell casts no shadows (the sun acts as a skylight indoors). Open scenes are hazed,
   ``c ← f·c + (1 − f)·horizon``, ``f = exp(−(depth/fog)²)``; the sky is a horizon→zenith gradient with a
   sun glow ``max(0, d̂·l)^64``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from anydistill.data.toyworld.classes import CEILING, CLASS_IDS, FLOOR, SKY, WALL
from anydistill.data.toyworld.primitives import Primitive
from anydistill.data.toyworld.scene import Scene
from anydistill.data.toyworld.textures import albedo

Array = np.ndarray
Window = tuple[slice, slice]
Vec3 = tuple[float, float, float]

# Surface codes of the per-pixel winner map; objects are FIRST_OBJECT + their index.
S_SKY, S_FLOOR, S_CEILING, S_WALL_X0, S_WALL_X1, S_WALL_Y0, S_WALL_Y1 = range(7)
FIRST_OBJECT = 7
_SHELL_SEMANTIC = (SKY, FLOOR, CEILING, WALL, WALL, WALL, WALL)
# Inward normals of the shell (x, y, z per surface code); sky has none.
_SHELL_NORMALS = ((0, 0, 0), (0, 0, 1), (0, 0, -1), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0))
_INF = np.float32(np.inf)


def _trace_shell(
    scene: Scene, o: tuple[float, float, float], d: tuple[Array, Array, Array]
) -> tuple[Array, Array]:
    """Depth ``t`` and surface code of the floor/ceiling/walls hit by each ray, ``(H, W)`` each."""
    ox, oy, oz = o
    dx, dy, dz = d
    room = scene.room
    down = dz < 0
    t = -oz / dz  # the floor (positive only for rays going down)
    if room is None or room.ceiling is None:
        surface = down.astype(np.uint8)  # S_FLOOR = 1, S_SKY = 0
    else:
        np.copyto(t, (room.ceiling - oz) / dz, where=~down)
        surface = np.where(down, np.uint8(S_FLOOR), np.uint8(S_CEILING))
    np.copyto(t, _INF, where=~(t > 0))  # rays away from the plane; dz = ±0 gives ±inf or NaN
    if room is None:
        return t, surface
    x0, x1, y0, y1 = room.x0, room.x1, room.y0, room.y1
    for axis, (lo, hi), (has_lo, has_hi), (code_lo, code_hi) in (
        (dx, (x0, x1), room.walls[:2], (S_WALL_X0, S_WALL_X1)),
        (dy, (y0, y1), room.walls[2:], (S_WALL_Y0, S_WALL_Y1)),
    ):
        if not (has_lo or has_hi):
            continue
        origin = ox if axis is dx else oy
        forward = axis > 0
        plane = np.where(forward, hi if has_hi else np.inf, lo if has_lo else -np.inf).astype(np.float32)
        tw = (plane - origin) / axis
        closer = tw < t
        closer &= tw > 0  # a ray with d = ±0 along this axis gives ±inf or NaN: never a wall hit
        np.copyto(t, tw, where=closer)
        np.copyto(surface, np.where(forward, np.uint8(code_hi), np.uint8(code_lo)), where=closer)
    return t, surface


def _screen_window(scene: Scene, rot: Array, obj: Primitive) -> Window | None:
    """Pixel rectangle containing the projection of ``obj`` (``None``: off screen; everything when a
    corner of its bounds is behind the camera)."""
    cam = scene.camera
    lo, hi = obj.aabb()
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))  # (8, 3)
    pc = (corners - np.asarray(cam.position)) @ rot  # (8, 3) camera coordinates
    if pc[:, 2].min() <= 1e-3:
        return slice(None), slice(None)
    u = cam.fx * pc[:, 0] / pc[:, 2] + cam.cx
    v = cam.fy * pc[:, 1] / pc[:, 2] + cam.cy
    u0, u1 = max(0, math.floor(u.min()) - 1), min(cam.width, math.floor(u.max()) + 2)
    v0, v1 = max(0, math.floor(v.min()) - 1), min(cam.height, math.floor(v.max()) + 2)
    if u0 >= u1 or v0 >= v1:
        return None
    return slice(v0, v1), slice(u0, u1)


def _trace_objects(
    scene: Scene,
    rot: Array,
    o: tuple[float, float, float],
    d: tuple[Array, Array, Array],
    t: Array,
    surface: Array,
    cull: bool,
) -> list[Window | None]:
    """Let every object win the pixels where it is nearer than ``t``; updates ``t`` and ``surface`` in place
    and returns each object's screen window."""
    dx, dy, dz = d
    windows: list[Window | None] = []
    for k, obj in enumerate(scene.objects):
        win = _screen_window(scene, rot, obj) if cull else (slice(None), slice(None))
        windows.append(win)
        if win is None:
            continue
        ts = obj.intersect(*o, dx[win], dy[win], dz[win])
        tv, sv = t[win], surface[win]  # views
        nearer = ts < tv
        np.copyto(tv, ts, where=nearer)
        np.copyto(sv, np.uint8(FIRST_OBJECT + k), where=nearer)
    return windows


def _surface_attributes(
    scene: Scene, p: tuple[Array, Array, Array], surface: Array, windows: list[Window | None]
) -> tuple[list[Array], list[Array]]:
    """Unit normals ``[nx, ny, nz]`` and albedo ``[r, g, b]``, each ``(H, W)``, at the hit points ``p``."""
    px, py, pz = p
    n_codes = FIRST_OBJECT + len(scene.objects)
    lut = np.zeros((3, n_codes), np.float32)
    lut[:, :FIRST_OBJECT] = np.array(_SHELL_NORMALS, np.float32).T  # (3, 7)
    normal = [np.take(lut[i], surface) for i in range(3)]
    rgb = [np.zeros_like(px) for _ in range(3)]
    flat_s = surface.reshape(-1)  # (H*W,)
    fx, fy, fz = px.reshape(-1), py.reshape(-1), pz.reshape(-1)  # (H*W,) views

    def paint(idx: Array, colors: tuple[Array, Array, Array]) -> None:
        for channel, values in zip(rgb, colors, strict=True):
            channel.reshape(-1)[idx] = values  # (H*W,) view, (N,) values

    idx = np.flatnonzero(flat_s == S_FLOOR)
    if idx.size:
        paint(idx, albedo(scene.floor, fx[idx], fy[idx], 0.0))
    idx = np.flatnonzero(flat_s == S_CEILING)
    if idx.size:
        paint(idx, albedo(scene.ceiling, fx[idx], fy[idx], 0.0))
    idx = np.flatnonzero((flat_s >= S_WALL_X0) & (flat_s <= S_WALL_Y1))
    if idx.size:
        on_x_wall = flat_s[idx] <= S_WALL_X1  # walls at x = const are textured along y
        along = np.where(on_x_wall, fy[idx], fx[idx])
        paint(idx, albedo(scene.wall, along, fz[idx], 0.0))
    for k, (obj, win) in enumerate(zip(scene.objects, windows, strict=True)):
        if win is None:
            continue
        rows, cols = np.nonzero(surface[win] == FIRST_OBJECT + k)
        if rows.size == 0:
            continue
        q = (px[win][rows, cols], py[win][rows, cols], pz[win][rows, cols])  # (N,) each
        for channel, values in zip(normal, obj.normal(*q), strict=True):
            channel[win][rows, cols] = values
        for channel, values in zip(rgb, albedo(obj.material, *obj.local(*q)), strict=True):
            channel[win][rows, cols] = values
    return normal, rgb


def _light_basis(sun: tuple[float, float, float]) -> tuple[Vec3, Vec3]:
    """Two unit vectors orthogonal to the unit vector ``sun`` and to each other."""
    lx, ly, lz = sun
    if abs(lx) < 0.9:  # e1 = l × x̂
        e1 = (0.0, lz, -ly)
    else:  # e1 = l × ŷ
        e1 = (-lz, 0.0, lx)
    norm = math.sqrt(e1[0] ** 2 + e1[1] ** 2 + e1[2] ** 2)
    e1 = (e1[0] / norm, e1[1] / norm, e1[2] / norm)
    e2 = (ly * e1[2] - lz * e1[1], lz * e1[0] - lx * e1[2], lx * e1[1] - ly * e1[0])  # l × e1
    return e1, e2


def _shadowed(scene: Scene, p: tuple[Array, Array, Array], surface: Array, idx: Array) -> Array:
    """Boolean ``(N,)``: whether the flat pixels ``idx`` see an object between them and the sun."""
    shadow = np.zeros(idx.size, bool)
    if not scene.objects or idx.size == 0:
        return shadow
    lx, ly, lz = (float(c) for c in scene.light.direction)
    qx, qy, qz = (c.reshape(-1)[idx] for c in p)  # (N,) each
    owner = surface.reshape(-1)[idx]  # (N,)
    e1, e2 = _light_basis((lx, ly, lz))
    a = qx * e1[0] + qy * e1[1] + qz * e1[2]  # (N,) coordinates across the light
    b = qx * e2[0] + qy * e2[1] + qz * e2[2]
    c = qx * lx + qy * ly + qz * lz  # (N,) coordinate along the light
    for k, obj in enumerate(scene.objects):
        centre, radius = obj.bounding_sphere()
        ca = e1[0] * centre[0] + e1[1] * centre[1] + e1[2] * centre[2]
        cb = e2[0] * centre[0] + e2[1] * centre[1] + e2[2] * centre[2]
        cc = lx * centre[0] + ly * centre[1] + lz * centre[2]
        reach = np.square(a - ca) + np.square(b - cb) <= radius * radius
        reach &= c < cc + radius
        reach &= owner != FIRST_OBJECT + k  # convex: no self-shadowing on the lit side
        cand = np.flatnonzero(reach)
        if cand.size == 0:
            continue
        ts = obj.intersect(qx[cand], qy[cand], qz[cand], lx, ly, lz)
        shadow[cand[np.isfinite(ts)]] = True
    return shadow


def _sky_colors(scene: Scene, d: tuple[Array, Array, Array], idx: Array) -> list[Array]:
    """Sky RGB for the flat pixels ``idx``: horizon→zenith by ray elevation plus a glow around the sun."""
    dx, dy, dz = (c.reshape(-1)[idx] for c in d)  # (N,) each
    inv_len = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
    up = np.sqrt(np.clip(dz * inv_len, 0.0, 1.0))
    lx, ly, lz = scene.light.direction
    glow = np.clip((dx * lx + dy * ly + dz * lz) * inv_len, 0.0, 1.0)
    for _ in range(6):  # glow ** 64
        glow = glow * glow
    out = []
    for zen, hor, sun in zip(scene.sky.zenith, scene.sky.horizon, scene.light.color, strict=True):
        out.append(hor + (zen - hor) * up + (0.6 * sun) * glow)
    return out


def render(scene: Scene, cull: bool = True) -> dict[str, np.ndarray]:
    """Ray-cast ``scene``.

    Returns the raw-sample maps: ``"image"`` uint8 ``(H, W, 3)``; ``"depth"`` float32 ``(H, W)`` camera-z
    metres, 0 for sky (invalid); ``"semantic"`` uint8 ``(H, W)`` class ids of :data:`~.classes.CLASSES`;
    ``"instance"`` int32 ``(H, W)`` (0 none, object ``i`` of ``scene.objects`` is ``i + 1``); ``"K"``
    float32 ``(3, 3)``. ``cull=False`` intersects every object with every ray (for checking the culling).
    """
    cam = scene.camera
    o = tuple(float(c) for c in cam.position)
    rot = cam.rotation()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = cam.ray_directions()
        t, surface = _trace_shell(scene, o, d)
        windows = _trace_objects(scene, rot, o, d, t, surface, cull)
        sky = ~((t > 0) & (t <= scene.far))  # also catches inf and NaN
        np.copyto(t, 0.0, where=sky)
        np.copyto(surface, np.uint8(S_SKY), where=sky)
        p = (o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2])  # (H, W) hit points
        normal, rgb = _surface_attributes(scene, p, surface, windows)
        lx, ly, lz = (float(c) for c in scene.light.direction)
        ndl = np.maximum(normal[0] * lx + normal[1] * ly + normal[2] * lz, 0.0)  # (H, W)
        lit = np.flatnonzero(ndl)
        ndl.reshape(-1)[lit[_shadowed(scene, p, surface, lit)]] = 0.0  # (H*W,) view
        if scene.fog is not None:
            haze = np.exp(-np.square(t * (1.0 / scene.fog)))
        image = np.empty((cam.height, cam.width, 3), np.float32)
        for i in range(3):
            c = rgb[i] * (ndl * scene.light.color[i] + scene.light.ambient[i])
            if scene.fog is not None:
                c = (c - scene.sky.horizon[i]) * haze + scene.sky.horizon[i]
            image[..., i] = c
        sky_idx = np.flatnonzero(surface == S_SKY)
        if sky_idx.size:
            flat = image.reshape(-1, 3)  # (H*W, 3)
            for i, values in enumerate(_sky_colors(scene, d, sky_idx)):
                flat[sky_idx, i] = values
        image = np.minimum(image * 255.0 + 0.5, 255.0).astype(np.uint8)
    semantic_lut = np.array(_SHELL_SEMANTIC + tuple(CLASS_IDS[obj.kind] for obj in scene.objects), np.uint8)
    instance_lut = np.concatenate(
        [np.zeros(FIRST_OBJECT, np.int32), np.arange(1, len(scene.objects) + 1, dtype=np.int32)]
    )
    return {
        "image": image,
        "depth": t,
        "semantic": np.take(semantic_lut, surface),
        "instance": np.take(instance_lut, surface),
        "K": cam.K(),
    }
