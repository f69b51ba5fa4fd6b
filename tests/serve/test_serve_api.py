"""The demo server's HTTP API through FastAPI's TestClient (in-process, tiny untrained models): every
endpoint answers, every bad request is one 4xx JSON line and the next good request still works, and a
promptable image is embedded once however many prompts follow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from serve_helpers import data_url_image, png_bytes, random_image

pytest.importorskip("fastapi", reason="the web demo needs the [serve] extra: pip install 'anydistill[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from anydistill.data.toyworld import CLASSES  # noqa: E402
from anydistill.loading import load_model  # noqa: E402
from anydistill.promptable import SamPredictor  # noqa: E402
from anydistill.serve import ServeLimits, create_app  # noqa: E402
from anydistill.serve.app import STATIC_FILES  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

LIMITS = ServeLimits(
    max_upload_bytes=100_000, max_side=256, cache_images=2, max_points=8, max_json_bytes=4096
)
IMAGE = random_image(48, 64)


def _client(checkpoint, limits: ServeLimits = LIMITS) -> TestClient:
    return TestClient(create_app(load_model(checkpoint), limits), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def clients(serve_checkpoints) -> dict[str, TestClient]:
    return {task: _client(path) for task, path in serve_checkpoints.items()}


@pytest.fixture(scope="module")
def sam(clients) -> TestClient:
    return clients["promptable"]


def _error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    return body["error"]


# ------------------------------------------------------------------------------------ page and info


def test_the_page_is_three_static_files_with_nothing_from_outside(sam):
    page = sam.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="app.js"></script>' in page.text and 'href="app.css"' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for route in STATIC_FILES:
        text = sam.get(route).text
        assert "http://" not in text and "https://" not in text, route  # no CDN: the page works offline
    assert sam.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert "server" not in page.headers  # no framework banner
    for path in ("/docs", "/openapi.json", "/static/../pyproject.toml", "/app.js/..%2F..%2Fcli.py"):
        assert "no such page" in _error(sam.get(path), 404)


@pytest.mark.parametrize("task", ["depth", "semantic", "promptable"])
def test_info_names_the_task_examples_and_limits(clients, task):
    info = clients[task].get("/info").json()
    assert info["task"] == task and info["max_upload_bytes"] == 100_000 and info["max_side"] == 256
    assert [e["index"] for e in info["examples"]] == [0, 1, 2, 3]
    names = [c["name"] for c in info["classes"]]
    assert names == ([name for _, name, _ in CLASSES] if task == "semantic" else [])


def test_examples_are_served_by_index(clients):
    example = clients["depth"].get("/example/2").json()
    assert example["index"] == 2 and data_url_image(example["image"]).shape == (240, 320, 3)
    assert "no example 4" in _error(clients["depth"].get("/example/4"), 404)
    assert "no example -1" in _error(clients["depth"].post("/example/-1"), 404)
    assert "index" in _error(clients["depth"].post("/example/first"), 422)
    assert "no such page" in _error(clients["depth"].post("/example/..%2F..%2Fetc%2Fpasswd"), 404)


# ------------------------------------------------------------------------------------ depth and semantic


def test_depth_upload_gives_the_input_and_its_colour_depth(clients):
    for kwargs in (
        {"content": png_bytes(IMAGE)},
        {"files": {"file": ("a.png", png_bytes(IMAGE), "image/png")}},
    ):
        reply = clients["depth"].post("/image", **kwargs).json()
        assert (reply["task"], reply["width"], reply["height"], reply["display"]) == (
            "depth",
            64,
            48,
            [64, 48],
        )
        assert data_url_image(reply["image"]).shape == (48, 64, 3)
        depth = data_url_image(reply["result"])
        assert depth.shape == (48, 64, 3) and depth.std() > 0  # colour-mapped, not blank
        assert reply["range"][0] <= reply["range"][1]
    reply = clients["depth"].post("/example/0").json()
    assert (reply["width"], reply["height"]) == (320, 240) and "result" in reply


def test_depth_picture_is_the_predictor_s(serve_checkpoints, clients):
    from anydistill.inference import Predictor, load_student
    from anydistill.viz import colorize_depth

    disparity = Predictor(load_student(serve_checkpoints["depth"])).predict([IMAGE])[0]
    lo, hi = np.percentile(disparity, [2, 98])
    reply = clients["depth"].post("/image", content=png_bytes(IMAGE)).json()
    assert np.allclose(reply["range"], [lo, hi], atol=1e-4)
    expected = colorize_depth(disparity, lo=lo, hi=hi).astype(int)
    assert np.abs(data_url_image(reply["result"]).astype(int) - expected).max() <= 1


def test_semantic_upload_gives_the_overlay_and_a_legend(clients):
    reply = clients["semantic"].post("/image", content=png_bytes(IMAGE)).json()
    assert reply["task"] == "semantic" and data_url_image(reply["result"]).shape == (48, 64, 3)
    names = {name for _, name, _ in CLASSES}
    assert reply["legend"] and {entry["name"] for entry in reply["legend"]} <= names
    assert sum(entry["fraction"] for entry in reply["legend"]) == pytest.approx(1.0, abs=1e-3)
    assert all(entry["color"].startswith("#") and len(entry["color"]) == 7 for entry in reply["legend"])


def test_large_images_come_back_at_display_size(serve_checkpoints):
    from anydistill.serve.images import DISPLAY_SIDE

    client = _client(serve_checkpoints["depth"], ServeLimits(max_upload_bytes=10**7, max_side=2048))
    reply = client.post("/image", content=png_bytes(np.zeros((600, 1200, 3), np.uint8))).json()
    assert (reply["width"], reply["height"], reply["display"]) == (
        1200,
        600,
        [DISPLAY_SIDE, DISPLAY_SIDE // 2],
    )
    assert data_url_image(reply["result"]).shape == (DISPLAY_SIDE // 2, DISPLAY_SIDE, 3)


# ------------------------------------------------------------------------------------ promptable


@pytest.fixture
def encoder_calls(sam):
    """How many times the SAM image encoder has run since the test began."""
    calls = []
    handle = sam.app.state.task.cache.model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def _upload(client: TestClient, image: np.ndarray = IMAGE) -> str:
    response = client.post("/image", content=png_bytes(image), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()["image_id"]


def test_an_image_is_embedded_once_for_all_its_prompts(sam, encoder_calls):
    image_id = _upload(sam)
    assert len(encoder_calls) == 1
    prompts = [
        {"points": [[10, 20]], "labels": [1]},
        {"points": [[10, 20], [50, 5]], "labels": [1, 0]},
        {"box": [5, 5, 40, 30]},
        {"points": [[64, 48]], "labels": [1], "box": [0, 0, 64, 48], "multimask": False},
    ]
    for prompt in prompts:
        reply = sam.post("/segment", json={"image_id": image_id, **prompt}).json()
        count = 1 if prompt.get("multimask") is False else 3
        assert len(reply["masks"]) == len(reply["scores"]) == len(reply["areas"]) == count
        assert reply["best"] == int(np.argmax(reply["scores"]))
        for url, area in zip(reply["masks"], reply["areas"], strict=True):
            mask = data_url_image(url)
            assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
            assert int((mask > 127).sum()) == area  # display size is the image's size here
    assert len(encoder_calls) == 1  # the prompts reused the embedding
    _upload(sam)
    assert len(encoder_calls) == 2


def test_masks_are_the_sam_predictor_s(serve_checkpoints, sam):
    image_id = _upload(sam)
    reply = sam.post(
        "/segment", json={"image_id": image_id, "points": [[30, 20], [5, 40]], "labels": [1, 0]}
    ).json()
    predictor = SamPredictor(load_model(serve_checkpoints["promptable"]).model)
    predictor.set_image(IMAGE)
    masks, scores, _ = predictor.predict(np.array([[30, 20], [5, 40]]), np.array([1, 0]))
    assert reply["areas"] == [int(m.sum()) for m in masks]
    assert np.allclose(reply["scores"], scores, atol=1e-4)
    assert any(area > 0 for area in reply["areas"])  # the tiny random model's masks are not all empty


def test_the_cache_keeps_the_most_recently_used_images(sam):
    first, second = _upload(sam), _upload(sam)
    click = {"points": [[1, 1]], "labels": [1]}
    assert (
        sam.post("/segment", json={"image_id": first, **click}).status_code == 200
    )  # first is now the newest
    third = _upload(sam)  # capacity 2: second, the least recently used, is dropped
    assert "unknown image id" in _error(sam.post("/segment", json={"image_id": second, **click}), 404)
    for image_id in (first, third):
        assert sam.post("/segment", json={"image_id": image_id, **click}).status_code == 200
    assert len(sam.app.state.task.cache) == 2


def test_a_dense_server_has_no_segment(clients):
    message = _error(clients["depth"].post("/segment", json={"image_id": "a", "box": [0, 0, 1, 1]}), 400)
    assert "depth model" in message and "promptable" in message


# ------------------------------------------------------------------------------------ bad requests


def _chunks(total: int):
    for _ in range(total // 10_000):
        yield b"\0" * 10_000


def _truncated_png() -> bytes:
    return png_bytes(random_image(20, 20))[:-30]


def _multipart_without_file():
    return {"data": {"note": "no file here"}, "files": {"other": ("x.txt", b"hi", "text/plain")}}


BAD_UPLOADS = [
    ("over the byte limit (Content-Length)", lambda: {"content": b"\0" * 100_001}, 413, "100001 bytes"),
    ("over the byte limit, streamed", lambda: {"content": _chunks(200_000)}, 413, "over 100000 bytes"),
    (
        "over the pixel limit",
        lambda: {"content": png_bytes(np.zeros((10, 300, 3), np.uint8))},
        413,
        "300x10 px",
    ),
    ("not an image", lambda: {"content": b"print('hello')"}, 415, "not an image"),
    ("empty", lambda: {"content": b""}, 400, "empty upload"),
    ("truncated", lambda: {"content": _truncated_png()}, 400, "truncated"),
    ("a form without its file", _multipart_without_file, 400, "field named 'file'"),
]


@pytest.mark.parametrize(
    ("what", "request_kwargs", "status", "words"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS]
)
def test_a_bad_upload_is_one_4xx_line_and_the_server_goes_on(clients, what, request_kwargs, status, words):
    for task, client in clients.items():
        assert words in _error(client.post("/image", **request_kwargs()), status), task
        assert client.post("/image", content=png_bytes(IMAGE)).status_code == 200


BAD_SEGMENTS = [
    ("a click outside the image", {"points": [[65, 10]], "labels": [1]}, 400, "outside the image"),
    ("a negative click", {"points": [[-1, 10]], "labels": [0]}, 400, "outside the image"),
    ("a box with x0 >= x1", {"box": [30, 5, 30, 20]}, 400, "x0 < x1"),
    ("a box outside the image", {"box": [0, 0, 80, 20]}, 400, "outside the image"),
    ("an unknown image id", {"image_id": "nope", "box": [0, 0, 5, 5]}, 404, "unknown image id 'nope'"),
    ("a label per point", {"points": [[1, 1], [2, 2]], "labels": [1]}, 400, "one label per point"),
    ("too many points", {"points": [[1, 1]] * 9, "labels": [1] * 9}, 400, "at most 8"),
    ("no prompt", {}, 400, "no prompt"),
]


@pytest.mark.parametrize(("what", "body", "status", "words"), BAD_SEGMENTS, ids=[b[0] for b in BAD_SEGMENTS])
def test_a_bad_prompt_is_one_4xx_line_and_the_server_goes_on(sam, what, body, status, words):
    image_id = _upload(sam)
    assert words in _error(sam.post("/segment", json={"image_id": image_id, **body}), status)
    good = sam.post("/segment", json={"image_id": image_id, "points": [[64, 48]], "labels": [1]})
    assert good.status_code == 200 and len(good.json()["masks"]) == 3


BAD_BODIES = [
    ("malformed JSON", b'{"image_id": "a", "box": [0, 0', 400, "malformed JSON"),
    ("not UTF-8", b'{"image_id": "\xff"}', 400, "malformed JSON"),
    ("a JSON list", b"[1, 2, 3]", 400, "must be a JSON object"),
    ("NaN", b'{"image_id": "a", "points": [[NaN, 1]], "labels": [1]}', 400, "finite number"),
    ("deeply nested", b"[" * 2000 + b"]" * 2000, 400, "malformed JSON"),
    ("over the JSON byte limit", b" " * 4097, 413, "4097 bytes"),
]


@pytest.mark.parametrize(("what", "body", "status", "words"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_a_malformed_body_is_one_4xx_line_and_the_server_goes_on(sam, what, body, status, words):
    assert words in _error(
        sam.post("/segment", content=body, headers={"content-type": "application/json"}), status
    )
    image_id = _upload(sam)
    assert sam.post("/segment", json={"image_id": image_id, "box": [0, 0, 10, 10]}).status_code == 200


def test_other_bad_requests_are_json_lines_too(serve_checkpoints, sam):
    assert "method not allowed" in _error(sam.get("/image"), 405)
    assert "method not allowed" in _error(sam.delete("/segment"), 405)
    assert "Host 'evil.example'" in _error(sam.get("/info", headers={"host": "evil.example"}), 400)
    assert sam.get("/info", headers={"host": "localhost:7860"}).status_code == 200
    anyone = _client(serve_checkpoints["depth"], ServeLimits(hosts=None))  # a non-loopback --host
    assert anyone.get("/info", headers={"host": "my-box.lan:7860"}).status_code == 200


# ------------------------------------------------------------------------------------ without the extra


def test_the_library_imports_without_the_serve_extra(tmp_path):
    """With FastAPI and uvicorn absent, the package and the CLI import, and ``anydistill serve`` says in one
    line what to install."""
    code = f"""
import sys
sys.modules["fastapi"] = None  # an import of it now raises ImportError, as when it is not installed
sys.modules["uvicorn"] = None
import anydistill, anydistill.cli
from anydistill.errors import ConfigError
try:
    import anydistill.serve
except ConfigError as exc:
    print("ConfigError:", exc)
sys.exit(anydistill.cli.main(["serve", "--checkpoint", {str(tmp_path / "x.ckpt")!r}]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stdout == "ConfigError: anydistill serve needs fastapi: pip install 'anydistill[serve]'\n"
    assert (
        out.stderr == "anydistill: error: anydistill serve needs fastapi: pip install 'anydistill[serve]'\n"
    )


def test_added_clicks_refine_the_previous_answer_as_sam_does(serve_checkpoints, sam):
    image_id = _upload(sam)
    first = sam.post("/segment", json={"image_id": image_id, "points": [[30, 20]], "labels": [1]}).json()
    second = sam.post("/segment", json={"image_id": image_id, "points": [[30, 20], [5, 40]], "labels": [1, 0],
                                        "multimask": False}).json()  # fmt: skip
    assert (first["refined"], second["refined"]) == (False, True)
    predictor = SamPredictor(load_model(serve_checkpoints["promptable"]).model)
    predictor.set_image(IMAGE)
    _, scores, low = predictor.predict(np.array([[30, 20]]), np.array([1]))
    best = int(np.argmax(scores))
    masks, scores, _ = predictor.predict(np.array([[30, 20], [5, 40]]), np.array([1, 0]),
                                         mask_input=low[best : best + 1], multimask_output=False)  # fmt: skip
    assert second["areas"] == [int(m.sum()) for m in masks]
    assert np.allclose(second["scores"], scores, atol=1e-4)
    fresh, _, _ = predictor.predict(np.array([[30, 20], [5, 40]]), np.array([1, 0]), multimask_output=False)
    assert not np.array_equal(fresh, masks) or fresh.sum() == 0  # the previous mask made a difference
    for prompt in ({"points": [[31, 20], [5, 40]], "labels": [1, 0]},  # the first click moved
                   {"points": [[30, 20], [5, 40]], "labels": [1, 0], "box": [0, 0, 50, 40]},  # a box added
                   {"points": [[30, 20]], "labels": [1]}):  # fmt: skip  # a click removed
        assert sam.post("/segment", json={"image_id": image_id, **prompt}).json()["refined"] is False
