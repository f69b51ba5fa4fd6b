"""The demo's FastAPI app: one static page and a few JSON endpoints over one loaded model.

Endpoints (an error is ``{"error": "<one line>"}`` with a 4xx status, and the server goes on):

* ``GET /`` the page; ``GET /app.js``, ``GET /app.css`` its script and style (package data, read once:
  three fixed names, no path from the request is ever joined to a folder).
* ``GET /info``: ``{"task", "model", "classes", "examples", "max_upload_bytes", "max_side"}``.
* ``GET /example/{i}``: built-in example ``i`` as a PNG; ``POST /example/{i}``: run the model on it,
  answered as ``POST /image``.
* ``POST /image``: an image, as the raw request body (any ``Content-Type`` but a form) or as the field
  ``file`` of a ``multipart/form-data`` form. Depth/semantic: ``{"width", "height", "display", "image",
  "result", "range" | "legend", "ms"}``; promptable: ``{"image_id", "width", "height", "display",
  "image", "ms"}``, the image embedded once and kept (:class:`~.sessions.EmbeddingCache`).
* ``POST /segment`` (promptable): ``{"image_id", "points": [[x, y], ...], "labels": [1 | 0, ...],
  "box": [x0, y0, x1, y1] | null, "multimask": true}`` in original-image pixels →
  ``{"masks", "scores", "areas", "best", "refined", "ms"}`` (:func:`~.protocol.parse_segment`); a prompt
  that only adds clicks to the image's previous one is refined from that answer's best mask (``refined``,
  :class:`~.tasks.PromptableTask`).

Safety: bodies are read in chunks and cut off at the limit (``Content-Length`` is checked first, but a
client may lie or send none); images are checked by :func:`~.images.decode_image`, at most
:data:`IMAGES_IN_FLIGHT` at a time; a request whose
``Host`` is not one the server answers is refused (a DNS-rebinding page cannot reach a loopback server);
the page runs under a Content-Security-Policy that allows nothing from outside the server. No OpenAPI
or docs pages (they would load scripts from a CDN).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anydistill.errors import ConfigError
from anydistill.loading import LoadedModel
from anydistill.serve.examples import EXAMPLES, example_image
from anydistill.serve.images import decode_image, png_data_url
from anydistill.serve.protocol import RequestError, ServeLimits, parse_segment
from anydistill.serve.tasks import DenseTask, PromptableTask

__all__ = ["SECURITY_HEADERS", "create_app"]

#: Headers on every answer: the page may load only its own script, style and the pictures it is sent.
SECURITY_HEADERS: dict[str, str] = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

#: Uploads decoded and answered at once: peak memory is about this many full-size images (and their
#: predictions), plus the bodies being received (each at most ``max_upload_bytes``).
IMAGES_IN_FLIGHT = 2

#: The static files: URL path → (file in the package's static/ folder, media type). Nothing else is served.
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}


def create_app(loaded_model: LoadedModel, limits: ServeLimits | None = None) -> FastAPI:
    """The demo app for ``loaded_model`` (from :func:`anydistill.loading.load_model`: a depth or
    semantic student or a promptable model), refusing requests beyond ``limits``.

    Raises:
        ConfigError: a model of another task (a classifier).
    """
    limits = limits or ServeLimits()
    model_lock = threading.Lock()
    task: DenseTask | PromptableTask
    if loaded_model.task == "promptable":
        task = PromptableTask(loaded_model, limits.cache_images, model_lock)
        answer_image: Callable[[np.ndarray], dict[str, Any]] = task.add
    elif loaded_model.task in ("depth", "semantic"):
        task = DenseTask(loaded_model, model_lock)
        answer_image = task.run
    else:
        raise ConfigError(
            f"serve shows depth, semantic or promptable models, not a {loaded_model.task!r} model"
        )
    static = {route: (files("anydistill.serve").joinpath("static", name).read_bytes(), media)
              for route, (name, media) in STATIC_FILES.items()}  # fmt: skip
    info = {
        "task": loaded_model.task,
        "model": loaded_model.path.name if loaded_model.path is not None else "",
        "classes": task.legend() if isinstance(task, DenseTask) else [],
        "examples": [{"index": i, "name": f"toyworld {domain} #{scene}"} for i, (domain, _, scene) in enumerate(EXAMPLES)],
        "max_upload_bytes": limits.max_upload_bytes,
        "max_side": limits.max_side,
    }  # fmt: skip

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.task = task
    app.add_middleware(_Guard, hosts=limits.hosts)
    _add_error_handlers(app)

    def static_route(route: str) -> Callable[[], Response]:
        content, media = static[route]
        return lambda: Response(content, media_type=media)

    for route in static:
        app.add_api_route(route, static_route(route), methods=["GET"])

    @app.get("/info")
    def get_info() -> JSONResponse:
        return JSONResponse(info)

    @app.get("/example/{index}")
    async def get_example(index: int) -> JSONResponse:
        picture = await run_in_threadpool(
            lambda: png_data_url(example_image(index))
        )  # rendered once, then kept
        return JSONResponse({"index": index, "image": picture})

    @app.post("/example/{index}")
    async def post_example(index: int) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(lambda: answer_image(example_image(index))))

    images_in_flight = threading.BoundedSemaphore(IMAGES_IN_FLIGHT)

    def decode_and_answer(data: bytes) -> dict[str, Any]:
        with images_in_flight:
            return answer_image(decode_image(data, limits.max_side))

    @app.post("/image")
    async def post_image(request: Request) -> JSONResponse:
        data = await _upload_bytes(request, limits.max_upload_bytes)
        return JSONResponse(await run_in_threadpool(decode_and_answer, data))

    @app.post("/segment")
    async def post_segment(request: Request) -> JSONResponse:
        if not isinstance(task, PromptableTask):
            raise RequestError(400, f"this server shows a {task.task} model; /segment needs a promptable one")
        body = await _read_capped(request, limits.max_json_bytes, "request body")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise RequestError(400, f"malformed JSON: {exc}") from None
        prompt = parse_segment(payload, limits.max_points)
        return JSONResponse(await run_in_threadpool(task.segment, prompt))

    return app


async def _read_capped(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused (413) once it passes ``limit`` bytes: by its ``Content-Length`` before
    reading anything, and by the bytes received (a client may send more than it announced, or chunks)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise RequestError(400, f"bad Content-Length header {length[:20]!r}")
        if int(length) > limit:
            raise RequestError(413, f"{what} is {int(length)} bytes; this server takes at most {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"{what} is over {limit} bytes; this server takes at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload_bytes(request: Request, limit: int) -> bytes:
    """The uploaded image's bytes: the whole body, or a form's ``file`` field (parsed from the capped body)."""
    body = await _read_capped(request, limit, "upload")
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return body

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    try:
        field = form.get("file")
        if not isinstance(field, UploadFile):
            raise RequestError(400, "multipart upload: send the image in a file field named 'file'")
        return await field.read()
    finally:
        await form.close()


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answer is ``{"error": "<one line>"}``: ours, FastAPI's validation and Starlette's 404/405."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        what = f"{request.method} {request.url.path[:100]}"
        messages = {404: f"{what}: no such page", 405: f"{what}: method not allowed"}
        message = messages.get(exc.status_code, f"{what}: {exc.detail}")
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "path")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)


def _host_name(host: str) -> str:
    """``Host`` header → the name without its port (``[::1]:7860`` → ``::1``, ``localhost:80`` → ``localhost``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _Guard:
    """ASGI middleware: refuse a ``Host`` the server does not answer; add :data:`SECURITY_HEADERS`."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None:
            host = _host_name(Headers(scope=scope).get("host", ""))
            if host not in self.hosts:
                message = (
                    f"Host {host[:60]!r} is not served here (this server answers {', '.join(self.hosts)})"
                )
                await JSONResponse({"error": message}, 400, headers=SECURITY_HEADERS)(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
