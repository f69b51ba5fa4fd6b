"""A bounded load test of ``anydistill serve`` with a promptable model: latency, throughput, and no unexpected error.

For each model, ``anydistill serve`` runs in its own process on a free loopback port (``--cache-images 8``),
and ``--threads`` client threads (default 8, each a user with its own image and a keep-alive connection)
send ``--requests`` requests in all (default 500), drawn with a fixed seed:

* ~85% ``/segment``: 1-3 clicks (object or background) and sometimes a box, on the user's cached image;
* ~10% uploads (``/image``): the user switches to another image (toyworld scenes 240x320 and 480x640,
  a noise picture 256x256), which the server embeds;
* ~5% bad requests, each with the 4xx it must get: a click outside the image, a box with x0 >= x1, an
  unknown image id, malformed JSON, a text file as an image, an image over ``--max-side``, and an upload
  whose ``Content-Length`` passes ``--max-upload-mb``.

An unexpected error is any other status, a connection error or a timeout. When the server has dropped a
user's image from its cache (``404 unknown image id``), the client uploads it again and repeats the
prompt, as the page does; those re-uploads are counted apart. Models (random weights: the speed is the
architecture's): ``tiny`` (a 64 px ViT SAM of 0.6 MB, tests/tiny_students.py: what is measured is the
server) and ``sam_tiny`` (the default SAM student, MobileNetV4 encoder at 1024 px).

    python benchmarks/bench_serve_load.py [--requests 500] [--threads 8] [--models tiny,sam_tiny]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import markdown_table, write_results
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_students import save_tiny_sam  # noqa: E402

from anydistill.data.toyworld import render_sample  # noqa: E402

START_LINE = re.compile(r"anydistill serve: http://127\.0\.0\.1:(\d+) \(Ctrl-C to stop\)\n")
KINDS = ("segment", "upload", "bad request")


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_model(name: str, folder: Path) -> Path:
    if name == "tiny":
        return save_tiny_sam(folder / "tiny_sam.pth")
    import torch

    from anydistill.models import build_model

    torch.manual_seed(0)
    path = folder / f"{name}.pth"
    torch.save(build_model(name).state_dict(), path)
    return path


@dataclass
class Result:
    """Latencies (ms) by request kind, the unexpected errors, and the re-uploads after a cache drop."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    unexpected: list[str] = field(default_factory=list)
    reuploads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, ms: float, problem: str | None = None) -> None:
        with self.lock:
            self.latencies[kind].append(ms)
            if problem:
                self.unexpected.append(f"{kind}: {problem}")


class User:
    """One client thread: its own keep-alive connection and its current image."""

    def __init__(
        self, port: int, images: list[tuple[bytes, tuple[int, int]]], rng: random.Random, result: Result
    ):
        self.port, self.images, self.rng, self.result = port, images, rng, result
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.image_id = ""
        self.size = (0, 0)  # (W, H)
        self.data = b""

    def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict, float]:
        start = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # a connection the server closed: open a new one, once
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            payload = response.read()
        ms = (time.perf_counter() - start) * 1000
        try:
            data = json.loads(payload)
        except ValueError:
            data = {"error": f"not JSON: {payload[:80]!r}"}
        if response.getheader("connection", "").lower() == "close":
            self.conn.close()
        return response.status, data, ms

    def upload(self, choice: int | None = None) -> None:
        self.data, self.size = self.images[self.rng.randrange(len(self.images)) if choice is None else choice]
        status, data, ms = self.request("POST", "/image", self.data, {"Content-Type": "image/png"})
        self.result.add("upload", ms, None if status == 200 else f"{status} {data.get('error')}")
        self.image_id = data.get("image_id", "")

    def segment(self) -> None:
        w, h = self.size
        n = self.rng.randint(1, 3)
        body = {
            "image_id": self.image_id,
            "points": [[self.rng.uniform(0, w), self.rng.uniform(0, h)] for _ in range(n)],
            "labels": [1] + [self.rng.randint(0, 1) for _ in range(n - 1)],
        }
        if self.rng.random() < 0.3:
            x0, y0 = self.rng.uniform(0, w / 2), self.rng.uniform(0, h / 2)
            body["box"] = [x0, y0, x0 + self.rng.uniform(1, w / 2), y0 + self.rng.uniform(1, h / 2)]
        encoded = json.dumps(body).encode()
        status, data, ms = self.request("POST", "/segment", encoded, {"Content-Type": "application/json"})
        if status == 404 and "unknown image id" in data.get(
            "error", ""
        ):  # dropped from the cache: as the page does
            self.result.add("segment", ms)
            with self.result.lock:
                self.result.reuploads += 1
            status, data, ms = self.request("POST", "/image", self.data, {"Content-Type": "image/png"})
            self.result.add("upload", ms, None if status == 200 else f"{status} {data.get('error')}")
            self.image_id = data.get("image_id", "")
            body["image_id"] = self.image_id
            status, data, ms = self.request(
                "POST", "/segment", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
        ok = status == 200 and len(data.get("masks", [])) == 3
        self.result.add("segment", ms, None if ok else f"{status} {data.get('error')}")

    def bad(self, case: int) -> None:
        w, h = self.size
        close = {"Connection": "close"}
        cases = [
            (
                "/segment",
                json.dumps({"image_id": self.image_id, "points": [[w + 5, 1]], "labels": [1]}).encode(),
                400,
            ),
            ("/segment", json.dumps({"image_id": self.image_id, "box": [5, 1, 5, 9]}).encode(), 400),
            ("/segment", json.dumps({"image_id": "never-uploaded", "box": [0, 0, 1, 1]}).encode(), 404),
            ("/segment", b'{"image_id": "a", "points": [[1, ', 400),
            ("/image", b"this is a text file, not an image", 415),
            ("/image", BIG_SIDE_PNG, 413),
            ("/image", b"\0" * 1024, 413),  # announced as 64 MB below
        ]
        path, body, expected = cases[case % len(cases)]
        headers = {**close, "Content-Type": "application/json" if path == "/segment" else "image/png"}
        if case % len(cases) == len(cases) - 1:
            headers["Content-Length"] = str(64 * 2**20)
            status, data, ms = self.raw_announced(path, body, headers)
        else:
            status, data, ms = self.request("POST", path, body, headers)
        problem = None
        if status != expected or set(data) != {"error"}:
            problem = f"{path} case {case % len(cases)}: got {status} {data}, expected {expected}"
        self.result.add("bad request", ms, problem)

    def raw_announced(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, float]:
        """A request that announces more bytes than it sends (a fresh connection, closed after)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        start = time.perf_counter()
        try:
            conn.putrequest("POST", path)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders(body)
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        return response.status, json.loads(payload), (time.perf_counter() - start) * 1000


BIG_SIDE_PNG = png(np.zeros((8, 5000, 3), np.uint8))


def start_server(checkpoint: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "anydistill.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0",
           "--cache-images", "8"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = START_LINE.fullmatch(line)
    if match is None:
        proc.kill()
        raise SystemExit(f"serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, int(match.group(1))


def run_load(port: int, requests: int, threads: int, seed: int) -> tuple[Result, float]:
    images = [(png(render_sample(i, 0, "wide", (240, 320))["image"]), (320, 240)) for i in range(3)] + [
        (png(render_sample(5, 0, "wide", (480, 640))["image"]), (640, 480)),
        (png(np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)), (256, 256)),
    ]
    plan_rng = random.Random(seed)
    plan = [plan_rng.choices(KINDS, weights=(85, 10, 5))[0] for _ in range(requests)]
    result = Result()
    users = [User(port, images, random.Random(seed * 100 + i), result) for i in range(threads)]
    for i, user in enumerate(users):  # each user's first image, before the clock starts
        user.upload(choice=i % len(images))
    result.latencies["upload"].clear()
    cursor = iter(enumerate(plan))
    cursor_lock = threading.Lock()

    def work(user: User) -> None:
        while True:
            with cursor_lock:
                item = next(cursor, None)
            if item is None:
                return
            i, kind = item
            try:
                if kind == "segment":
                    user.segment()
                elif kind == "upload":
                    user.upload()
                else:
                    user.bad(i)
            except Exception as exc:  # a connection error, a timeout: unexpected
                result.add(kind, float("nan"), f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(user,)) for user in users]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return result, time.perf_counter() - start


def percentiles(values: list[float]) -> list[str]:
    finite = [v for v in values if v == v]
    if not finite:
        return ["–"] * 3
    if len(finite) == 1:
        return [f"{finite[0]:.1f}"] * 3
    q = statistics.quantiles(finite, n=100, method="inclusive")
    return [f"{q[49]:.1f}", f"{q[89]:.1f}", f"{q[98]:.1f}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--models", default="tiny,sam_tiny", help="comma-separated: tiny, sam_tiny, sam_small"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    load_before = load_average()
    rows, data = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            proc, port = start_server(save_model(name, Path(tmp)))
            try:
                result, seconds = run_load(port, args.requests, args.threads, args.seed)
            finally:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
            total = sum(len(v) for v in result.latencies.values())
            for kind in (*KINDS, "all"):
                values = sum(result.latencies.values(), []) if kind == "all" else result.latencies[kind]
                errors = (
                    len(result.unexpected)
                    if kind == "all"
                    else sum(e.startswith(kind) for e in result.unexpected)
                )
                rate = f"{total / seconds:.1f}" if kind == "all" else ""
                rows.append([name, kind, len(values), errors, *percentiles(values), rate])
            data[name] = {
                "seconds": seconds,
                "requests_sent": total,
                "requests_per_s": total / seconds,
                "reuploads_after_cache_drop": result.reuploads,
                "unexpected": result.unexpected[:20],
                "latency_ms": {k: v for k, v in result.latencies.items()},
                "server_exit": proc.returncode,
                "server_output": (out + err)[-2000:],
            }
            print(f"{name}: {total} requests in {seconds:.1f} s, {len(result.unexpected)} unexpected, "
                  f"{result.reuploads} re-uploads, server exit {proc.returncode}, output {(out + err)!r}",
                  flush=True)  # fmt: skip
    load_after = load_average()
    table = markdown_table(
        ["model", "requests", "count", "unexpected errors", "p50 ms", "p90 ms", "p99 ms", "requests/s"], rows
    )
    reuploads = ", ".join(f"{name} {d['reuploads_after_cache_drop']}" for name, d in data.items())
    note = (
        f"\n\n{args.requests} planned requests from {args.threads} client threads (keep-alive connections, "
        f"one user and image each), ~85% /segment, ~10% uploads, ~5% bad requests (each must get its 4xx); "
        f"server `--cache-images 8`, random weights. Re-uploads after the server dropped an image from its "
        f"cache (counted in uploads): {reuploads}. Client and server share this machine's cores. "
        f"1-min load average before/after: {load_before:.2f}/{load_after:.2f}."
    )
    print(table + note)
    command = "python benchmarks/bench_serve_load.py"
    if argv is None:
        command += "".join(f" {a}" for a in sys.argv[1:])
    path = write_results(
        "serve_load",
        table + note,
        {"models": data, "requests": args.requests, "threads": args.threads, "load_before": load_before,
         "load_after": load_after},
        command,
    )  # fmt: skip
    print(f"wrote {path}")
    if any(d["unexpected"] for d in data.values()):
        raise SystemExit("unexpected errors: see the table")


if __name__ == "__main__":
    main()
