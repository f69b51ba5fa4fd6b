"""toyworld: determinism, exact geometry against closed forms, shadows, labels, domains, writer."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anydistill.data.toyworld import (
    CLASSES,
    Box,
    Camera,
    Cone,
    Cylinder,
    Ellipsoid,
    Light,
    Material,
    Room,
    Scene,
    Sphere,
    ToyWorldDataset,
    class_table,
    get_domain,
    make_scene,
    render,
    render_sample,
    write_toyworld,
)
from anydistill.data.toyworld.classes import CLASS_IDS
from anydistill.data.toyworld.domains import DOMAINS, subdomain_violations
from anydistill.errors import ConfigError, DataError

KEYS = ("image", "depth", "semantic", "instance", "K")
SHELL = {CLASS_IDS[n] for n in ("floor", "wall", "sky", "ceiling")}
GREY = Material("solid", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _camera(
    pitch_deg: float, height: float = 1.5, size: tuple[int, int] = (33, 33), hfov: float = 60.0
) -> Camera:
    return Camera.from_fov(
        (0.0, 0.0, height), 0.0, math.radians(pitch_deg), 0.0, math.radians(hfov), size[1], size[0]
    )


# ---------------------------------------------------------------- sampling API


@pytest.mark.parametrize("domain", ["narrow", "wide", "outdoor", "indoor"])
def test_shapes_dtypes_and_ranges(domain: str) -> None:
    for index in range(3):
        s = render_sample(index, seed=1, domain=domain, size=(24, 40))
        assert set(s) == set(KEYS)
        assert s["image"].dtype == np.uint8 and s["image"].shape == (24, 40, 3)
        assert s["depth"].dtype == np.float32 and s["depth"].shape == (24, 40)
        assert s["semantic"].dtype == np.uint8 and s["semantic"].shape == (24, 40)
        assert s["instance"].dtype == np.int32 and s["instance"].shape == (24, 40)
        assert s["K"].dtype == np.float32 and s["K"].shape == (3, 3)
        assert np.isfinite(s["depth"]).all() and (s["depth"] >= 0).all()
        assert s["depth"].max() <= get_domain(domain).far
        assert set(np.unique(s["semantic"]).tolist()) <= {c[0] for c in CLASSES}
        assert s["instance"].min() >= 0
        assert s["K"][0, 2] == pytest.approx(19.5) and s["K"][1, 2] == pytest.approx(11.5)
        assert s["K"][0, 0] > 0 and s["K"][2, 2] == 1


def test_deterministic_and_random_access() -> None:
    a = render_sample(5, seed=3, domain="wide", size=32)
    sequence = [render_sample(i, seed=3, domain="wide", size=32) for i in range(6)]
    b = render_sample(5, seed=3, domain="wide", size=32)
    for key in KEYS:
        assert np.array_equal(a[key], b[key]) and np.array_equal(a[key], sequence[5][key])
    assert not np.array_equal(a["image"], sequence[4]["image"])
    assert not np.array_equal(a["image"], render_sample(5, seed=4, domain="wide", size=32)["image"])
    assert not np.array_equal(a["image"], render_sample(5, seed=3, domain="outdoor", size=32)["image"])


def test_dataset_items_ids_and_transform() -> None:
    ds = ToyWorldDataset("narrow", 24, length=4, seed=2, start=10)
    assert len(ds) == 4
    item = ds[3]
    assert item["id"] == "narrow_2_0000013"
    assert np.array_equal(item["image"], render_sample(13, 2, "narrow", 24)["image"])
    assert ds[-1]["id"] == item["id"]
    with pytest.raises(IndexError):
        ds[4]
    marked = ToyWorldDataset("narrow", 24, length=1, transform=lambda s: s["id"])
    assert marked[0] == "narrow_0_0000000"
    with pytest.raises(ConfigError, match="unknown toyworld domain"):
        ToyWorldDataset("nope", 24, length=1)


def test_class_table() -> None:
    table = class_table()
    assert [c["id"] for c in table] == list(range(len(CLASSES)))
    assert len({c["name"] for c in table}) == len(table)
    assert all(len(c["color"]) == 3 for c in table)
    json.dumps(table)
    assert ToyWorldDataset.class_table() == table


# ---------------------------------------------------------------- geometry against closed forms


@pytest.mark.parametrize("pitch_deg", [25.0, 90.0])
def test_floor_depth_matches_closed_form(pitch_deg: float) -> None:
    """Ground plane z = 0 seen from height h: in camera coordinates the plane is
    ``sinθ·z + cosθ·y = h`` (θ = pitch), so a pixel row v has depth ``h / (sinθ + cosθ·(v − cy)/fy)``."""
    h, size = 1.7, (31, 45)
    cam = _camera(pitch_deg, h, size, hfov=70.0)
    out = render(Scene(cam, floor=GREY, far=1e4))
    theta = math.radians(pitch_deg)
    rows = (np.arange(size[0]) - cam.cy) / cam.fy  # (H,)
    denom = math.sin(theta) + math.cos(theta) * rows
    expected = np.where(denom > 1e-9, h / np.where(denom > 1e-9, denom, 1.0), 0.0)  # 0 = sky
    expected = np.repeat(expected[:, None], size[1], axis=1)  # (H, W)
    expected[expected > 1e4] = 0.0
    np.testing.assert_allclose(out["depth"], expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(out["semantic"] == CLASS_IDS["sky"], expected == 0)
    if pitch_deg == 90.0:
        np.testing.assert_allclose(out["depth"], h, rtol=1e-6)


def test_sphere_depth_and_mask_match_closed_form() -> None:
    """A sphere of radius r straight ahead at distance D, i.e. centre (0, 0, D) in camera coordinates:
    the ray t·(x, y, 1) hits where ``t = (D − √(D² − a(D² − r²)))/a``, ``a = x² + y² + 1``."""
    dist, r = 5.0, 1.2
    cam = _camera(0.0, 1.5, (33, 33))
    out = render(Scene(cam, objects=(Sphere((0.0, dist, 1.5), r, GREY),), floor=GREY, far=1e4))
    x = (np.arange(33) - cam.cx) / cam.fx
    a = x[None, :] ** 2 + x[:, None] ** 2 + 1.0  # (H, W), fy == fx
    disc = dist**2 - a * (dist**2 - r**2)
    hit = disc >= 0
    expected = (dist - np.sqrt(np.where(hit, disc, 0.0))) / a
    sphere = out["semantic"] == CLASS_IDS["sphere"]
    clear = np.abs(disc) > 1e-3  # leave out pixels whose ray grazes the silhouette
    assert np.array_equal(sphere[clear], hit[clear])
    np.testing.assert_allclose(out["depth"][sphere], expected[sphere], rtol=1e-5)
    assert out["depth"][16, 16] == pytest.approx(dist - r, rel=1e-6)
    assert set(np.unique(out["instance"][sphere])) == {1}


def _inside(obj, p: np.ndarray) -> np.ndarray:
    """Independent point-membership tests ``(N, 3) → (N,)`` for every primitive kind."""
    if isinstance(obj, Sphere):
        return np.linalg.norm(p - obj.center, axis=1) <= obj.radius
    if isinstance(obj, Cylinder | Cone):
        rel = p - obj.base
        radial = np.hypot(rel[:, 0], rel[:, 1])
        if isinstance(obj, Cylinder):
            allowed = obj.radius
        else:
            allowed = obj.radius * (1 - rel[:, 2] / obj.height)
        return (radial <= allowed) & (rel[:, 2] >= 0) & (rel[:, 2] <= obj.height)
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # object → world
    local = (p - obj.center) @ rot  # (N, 3)
    if isinstance(obj, Box):
        return (np.abs(local) <= obj.half).all(axis=1)
    return ((local / obj.radii) ** 2).sum(axis=1) <= 1.0


def _implicit(obj, p: np.ndarray) -> np.ndarray:
    """An independent implicit function ``(N, 3) → (N,)``, negative inside, whose gradient is the normal."""
    if isinstance(obj, Sphere):
        return np.linalg.norm(p - obj.center, axis=1) - obj.radius
    if isinstance(obj, Cylinder | Cone):
        rel = p - obj.base
        radial = np.hypot(rel[:, 0], rel[:, 1])
        if isinstance(obj, Cylinder):
            side = radial - obj.radius
        else:
            side = radial - obj.radius / obj.height * (obj.height - rel[:, 2])
        return np.maximum(side, rel[:, 2] - obj.height if isinstance(obj, Cylinder) else side)
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    local = (p - obj.center) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # (N, 3)
    if isinstance(obj, Box):
        return (np.abs(local) - obj.half).max(axis=1)
    return ((local / obj.radii) ** 2).sum(axis=1) - 1.0


def _march(obj, o: np.ndarray, d: np.ndarray, t_max: float = 20.0, steps: int = 4000) -> np.ndarray:
    """First entry ``t`` by dense marching plus bisection (``inf`` for no hit)."""
    ts = np.linspace(1e-3, t_max, steps)
    out = np.full(len(d), np.inf)
    for i in range(len(d)):
        inside = _inside(obj, o + ts[:, None] * d[i])
        if not inside.any():
            continue
        k = int(np.argmax(inside))
        lo, hi = ts[max(k - 1, 0)], ts[k]
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if _inside(obj, (o + mid * d[i])[None])[0] else (mid, hi)
        out[i] = hi
    return out


@pytest.mark.parametrize(
    "obj",
    [
        Sphere((0.3, 4.0, 0.8), 0.8),
        Box((0.2, 4.0, 0.6), 0.5, (0.9, 0.4, 0.6)),
        Cylinder((-0.2, 4.0, 0.0), 0.6, 1.8),
        Cone((0.1, 4.0, 0.0), 0.9, 2.0),
        Ellipsoid((0.0, 4.0, 1.0), 0.7, (1.0, 0.5, 0.7)),
    ],
    ids=lambda o: o.kind,
)
@pytest.mark.parametrize("origin", [(0.0, 0.0, 1.6), (0.3, 3.6, 6.0)], ids=["side", "above"])
def test_primitive_intersections_match_ray_marching(obj, origin: tuple[float, float, float]) -> None:
    """``t`` of the first hit against dense marching of an independent inside test; normals against the
    numerical gradient of an independent implicit function."""
    rng = np.random.default_rng(0)
    o = np.array(origin)
    centre, radius = obj.bounding_sphere()
    target = np.asarray(centre) + rng.uniform(-0.7, 0.7, size=(80, 3)) * radius
    d = target - o  # (N, 3), not unit on purpose
    with np.errstate(invalid="ignore", divide="ignore"):
        t = obj.intersect(*o, *(d.astype(np.float32).T))
    ref = _march(obj, o, d.astype(np.float32).astype(np.float64))
    assert np.isinf(ref).sum() > 5 and np.isfinite(ref).sum() > 15  # both cases are exercised
    with np.errstate(invalid="ignore"):
        same = (t == ref) | (np.abs(t - ref) <= 1e-3)  # both inf, or the same hit
    grazing = ~same
    assert grazing.sum() <= 1, (t[grazing], ref[grazing])
    np.testing.assert_allclose(t[~grazing], ref[~grazing], rtol=1e-3)
    hit = np.isfinite(t) & ~grazing
    p = (o + t[hit, None] * d[hit]).astype(np.float32)  # (N, 3) surface points
    n = np.stack(obj.normal(*p.T), axis=1).astype(np.float64)  # (N, 3)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, rtol=1e-5)
    assert _inside(obj, p - 2e-3 * n).all() and not _inside(obj, p + 2e-3 * n).any()
    p64, step = p.astype(np.float64), 1e-5
    grad = np.stack(
        [_implicit(obj, p64 + step * e) - _implicit(obj, p64 - step * e) for e in np.eye(3)], axis=1
    )  # (N, 3)
    grad /= np.linalg.norm(grad, axis=1, keepdims=True)
    smooth = (grad * n).sum(1) > 0.0  # drop the odd point on a box edge or cap rim
    assert smooth.mean() > 0.9
    np.testing.assert_allclose(n[smooth], grad[smooth], atol=2e-3)
    # shadow rays: many origins, one direction (the broadcast the renderer uses)
    origins = o + rng.uniform(-0.5, 0.5, size=(40, 3))
    direction = (d[0] / np.linalg.norm(d[0])).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        t2 = obj.intersect(*origins.astype(np.float32).T, *direction.tolist())
    ref2 = np.array([_march(obj, p, direction[None])[0] for p in origins])
    assert np.array_equal(np.isfinite(t2), np.isfinite(ref2))


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 5])
def test_screen_culling_is_exact(index: int) -> None:
    scene = make_scene(index, seed=0, domain="wide", size=40)
    culled, full = render(scene), render(scene, cull=False)
    for key in KEYS:
        assert np.array_equal(culled[key], full[key]), key


@pytest.mark.parametrize("yaw, pitch", [(0.3, -10.0), (0.0, 0.0)])
def test_room_walls_and_ceiling_labels(yaw: float, pitch: float) -> None:
    """Inside a closed room every ray hits the shell: no sky, walls/ceiling/floor depths match planes.
    ``yaw = pitch = 0`` with odd sizes has rays with exactly zero x or z direction components."""
    cam = Camera.from_fov((0.5, -1.0, 1.5), yaw, math.radians(pitch), 0.0, math.radians(90), 47, 33)
    room = Room(-2.0, 3.0, -4.0, 2.5, ceiling=2.8)
    box = Box((0.5, 1.0, 1.5), 0.0, (0.3, 0.4, 0.3))  # front face at y = 0.6, straight ahead when yaw = 0
    out = render(Scene(cam, room=room, objects=(box,)))
    assert CLASS_IDS["sky"] not in out["semantic"]
    assert {CLASS_IDS["wall"], CLASS_IDS["ceiling"], CLASS_IDS["floor"]} <= set(np.unique(out["semantic"]))
    if yaw == 0.0:
        assert out["semantic"][16, 23] == CLASS_IDS["box"]
        assert out["depth"][16, 23] == pytest.approx(1.6, rel=1e-6)
    # back-project every pixel with K and depth: it must lie on the plane its label names
    K = out["K"].astype(np.float64)
    v, u = np.mgrid[0:33, 0:47]
    rays = np.stack(
        [(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1
    )  # (H, W, 3)
    world = (rays * out["depth"][..., None]) @ cam.rotation().T + np.asarray(cam.position)  # (H, W, 3)
    uv = cam.project(world.reshape(-1, 3))  # (H*W, 2) back to the pixel grid
    np.testing.assert_allclose(uv, np.stack([u.ravel(), v.ravel()], 1), atol=1e-3)
    sem = out["semantic"]
    np.testing.assert_allclose(world[sem == CLASS_IDS["floor"]][:, 2], 0.0, atol=1e-4)
    np.testing.assert_allclose(world[sem == CLASS_IDS["ceiling"]][:, 2], 2.8, atol=1e-4)
    walls = world[sem == CLASS_IDS["wall"]]
    gap = np.min(np.abs(walls[:, :2, None] - np.array([[-2.0, 3.0], [-4.0, 2.5]])[None]), axis=(1, 2))
    np.testing.assert_allclose(gap, 0.0, atol=1e-4)


# ---------------------------------------------------------------- shading


@pytest.mark.parametrize("kind", ["sphere", "box"])
def test_cast_shadow_is_darker_than_lit_floor(kind: str) -> None:
    """Sun straight overhead, an object hovering over (0, 6): floor points under its outline (a disk of
    radius 0.5 or a 1 m square) get ambient light only, the rest ambient + sun (a uniform grey floor, so
    the colours are closed-form)."""
    cam = Camera.from_fov((0.0, 0.0, 2.0), 0.0, math.radians(20.0), 0.0, math.radians(60), 64, 48)
    light = Light((0.0, 0.0, 1.0), (0.6, 0.6, 0.6), (0.2, 0.2, 0.2))
    if kind == "sphere":
        obj = Sphere((0.0, 6.0, 1.5), 0.5, GREY)
    else:
        obj = Box((0.0, 6.0, 1.5), 0.0, (0.5, 0.5, 0.2), GREY)
    out = render(Scene(cam, light=light, objects=(obj,), floor=GREY, far=1e4))
    K = out["K"].astype(np.float64)
    v, u = np.mgrid[0:48, 0:64]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    world = (rays * out["depth"][..., None]) @ cam.rotation().T + np.asarray(cam.position)  # (H, W, 3)
    if kind == "sphere":
        r_xy = np.hypot(world[..., 0], world[..., 1] - 6.0)  # (H, W) distance from the axis
    else:
        r_xy = np.maximum(np.abs(world[..., 0]), np.abs(world[..., 1] - 6.0))  # (H, W) square "radius"
    floor = out["semantic"] == CLASS_IDS["floor"]
    red = out["image"][..., 0].astype(int)
    shadow = floor & (r_xy < 0.49)
    lit = floor & (r_xy > 0.51)
    assert shadow.sum() > 10 and lit.sum() > 100
    assert (red[shadow] == round(255 * 0.5 * 0.2)).all()
    assert (red[lit] == round(255 * 0.5 * 0.8)).all()
    if kind == "sphere":  # Lambert on the sphere itself: 255 · albedo · (ambient + sun · max(0, n·l))
        on_sphere = out["semantic"] == CLASS_IDS["sphere"]
        nz = (world[..., 2][on_sphere] - 1.5) / 0.5
        expected = 255 * 0.5 * (0.2 + 0.6 * np.clip(nz, 0, 1))
        assert on_sphere.sum() > 20 and np.abs(red[on_sphere] - expected).max() <= 1.0
    # the same scene without the object has no dark floor at all
    bare = render(Scene(cam, light=light, floor=GREY, far=1e4))
    assert (bare["image"][..., 0][bare["semantic"] == CLASS_IDS["floor"]] == round(255 * 0.5 * 0.8)).all()


# ---------------------------------------------------------------- labels and domains


def test_semantic_instance_depth_consistency() -> None:
    objects_seen = 0
    for index in range(8):
        s = render_sample(index, seed=5, domain="wide", size=40)
        sem, inst, depth = s["semantic"], s["instance"], s["depth"]
        assert np.array_equal(sem == CLASS_IDS["sky"], depth == 0)
        assert set(np.unique(sem[inst == 0]).tolist()) <= SHELL
        for i in np.unique(inst[inst > 0]):
            classes = np.unique(sem[inst == i])
            assert len(classes) == 1 and classes[0] not in SHELL
            objects_seen += 1
        n_objects = len(make_scene(index, seed=5, domain="wide", size=40).objects)
        assert inst.max() <= n_objects
    assert objects_seen > 5


def test_narrow_is_a_subdomain_of_wide_and_differs() -> None:
    narrow, wide = get_domain("narrow"), get_domain("wide")
    assert subdomain_violations(narrow, wide) == []
    assert subdomain_violations(wide, narrow) != []
    assert {"narrow", "wide", "outdoor"} <= set(DOMAINS.names())
    sky = CLASS_IDS["sky"]
    narrow_sky = [sky in render_sample(i, 0, "narrow", 24)["semantic"] for i in range(12)]
    wide_sky = [sky in render_sample(i, 0, "wide", 24)["semantic"] for i in range(12)]
    assert not any(narrow_sky) and any(wide_sky)
    kinds = {type(o).__name__ for i in range(30) for o in make_scene(i, 0, "narrow", 24).objects}
    assert kinds <= {"Sphere", "Box", "Cylinder"}


# ---------------------------------------------------------------- writer


def test_writer_round_trip_and_resume(tmp_path: Path) -> None:
    out = write_toyworld(tmp_path / "toy", count=3, size=32, domain="wide", seed=4, progress=False)
    ids = [f"wide_4_{i:07d}" for i in range(3)]
    for index, name in enumerate(ids):
        ref = render_sample(index, 4, "wide", 32)
        image = np.array(Image.open(out / "images" / f"{name}.png"))
        assert np.array_equal(image, ref["image"])
        depth_png = Image.open(out / "depth" / f"{name}.png")
        depth = np.array(depth_png).astype(np.float64) / 1000.0
        assert np.abs(depth - ref["depth"]).max() <= 0.001
        assert np.array_equal(depth == 0, ref["depth"] == 0)
        sem_png = Image.open(out / "semantic" / f"{name}.png")
        assert sem_png.mode == "P"
        assert np.array_equal(np.array(sem_png), ref["semantic"])
        assert tuple(sem_png.getpalette()[3 * 4 : 3 * 4 + 3]) == CLASSES[4][2]
        assert np.array_equal(np.array(Image.open(out / "instances" / f"{name}.png")), ref["instance"])
    classes = json.loads((out / "classes.json").read_text())
    assert classes["ignore_index"] == 255 and classes["classes"] == class_table()
    meta = json.loads((out / "meta.json").read_text())
    assert (
        meta["depth_scale"] == 1000.0
        and meta["domain"] == "wide"
        and meta["seed"] == 4
        and meta["count"] == 3
    )
    cameras = json.loads((out / "cameras.json").read_text())
    assert sorted(cameras) == ids
    np.testing.assert_allclose(cameras[ids[1]], render_sample(1, 4, "wide", 32)["K"])

    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 3 * 4 + 3
    past = 1_000_000_000
    for p in files:
        os.utime(p, (past, past))
    write_toyworld(out, count=3, size=32, domain="wide", seed=4, progress=False)
    assert all(p.stat().st_mtime == past for p in files)
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files

    (out / "depth" / f"{ids[2]}.png").unlink()  # an interrupted run: one file missing
    write_toyworld(out, count=4, size=32, domain="wide", seed=4, progress=False)
    assert (out / "images" / f"{ids[2]}.png").stat().st_mtime == past
    assert (out / "depth" / f"{ids[2]}.png").exists() and (out / "images" / "wide_4_0000003.png").exists()
    assert json.loads((out / "meta.json").read_text())["count"] == 4
    assert not list(out.rglob("*.tmp*"))
    with pytest.raises(DataError, match="refusing"):
        write_toyworld(out, count=1, size=32, domain="wide", seed=5, progress=False)


def test_writer_with_worker_processes(tmp_path: Path) -> None:
    out = write_toyworld(
        tmp_path, count=3, size=24, domain="outdoor", seed=1, start=7, workers=2, progress=False
    )
    for index in (7, 8, 9):
        name = f"outdoor_1_{index:07d}"
        ref = render_sample(index, 1, "outdoor", 24)
        assert np.array_equal(np.array(Image.open(out / "images" / f"{name}.png")), ref["image"])
        assert np.array_equal(np.array(Image.open(out / "semantic" / f"{name}.png")), ref["semantic"])
    assert json.loads((out / "meta.json").read_text())["ranges"] == [[7, 10]]
    assert len(json.loads((out / "cameras.json").read_text())) == 3
