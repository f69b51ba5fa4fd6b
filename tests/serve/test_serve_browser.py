"""The demo as a user meets it: ``anydistill serve`` in its own process (a tiny SAM and a tiny depth student,
started side by side on free loopback ports), driven by a real headless Chromium through Playwright.

The browser tests need Debian's ``/usr/bin/chromium`` (the CI installs it, see .ci/run; Playwright's own
browser download is not used) and the ``playwright`` package; without either they skip. Screenshots go to
each test's ``tmp_path`` and, when ``ANYDISTILL_SCREENSHOT_DIR`` is set, are copied there too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web demo needs the [serve] extra: pip install 'anydistill[serve]'")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
START_LINE = re.compile(r"anydistill serve: (http://127\.0\.0\.1:\d+) \(Ctrl-C to stop\)\n")


def _start(checkpoint: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models; the cores are shared with the tests
    cmd = [sys.executable, "-m", "anydistill.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _url(proc: subprocess.Popen, timeout: float = 180) -> str:
    """The address in the server's start line (read with a timeout: a server that never starts fails the test)."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line:
        proc.kill()
        pytest.fail(f"no start line from anydistill serve within {timeout} s")
    match = START_LINE.fullmatch(line[0])
    if match is None:
        proc.kill()
        pytest.fail(f"unexpected start line {line[0]!r}; stderr: {proc.stderr.read()[-2000:]}")
    return match.group(1)


@pytest.fixture(scope="module")
def servers(serve_checkpoints) -> Iterator[dict[str, tuple[subprocess.Popen, str]]]:
    """``{"promptable": (process, url), "depth": (process, url)}``, both started at once (start-up is mostly
    importing torch: seconds each)."""
    procs = {task: _start(serve_checkpoints[task]) for task in ("promptable", "depth")}
    try:
        yield {task: (proc, _url(proc)) for task, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is absent: the browser tests need Debian's chromium (apt-get install chromium)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need playwright (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _is_problem(message) -> bool:
    """A console error other than the browser's note on a 4xx answer the test asked for."""
    return message.type == "error" and not message.text.startswith(
        "Failed to load resource: the server responded with a status of 4"
    )


@pytest.fixture
def page(browser):
    """A fresh page; after the test: no script error, no CSP violation, no request outside the server."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if _is_problem(message) else None)
    page.on("request", lambda request: requests.append(request.url))
    yield page
    context.close()
    assert problems == []
    outside = [url for url in requests if not url.startswith(("http://127.0.0.1:", "data:"))]
    assert outside == []


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert Image.open(path).size[0] > 0
    if folder := os.environ.get("ANYDISTILL_SCREENSHOT_DIR"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)
    return path


def _scene(tmp_path: Path, index: int, size: tuple[int, int]) -> Path:
    from anydistill.data.toyworld import render_sample

    path = tmp_path / f"scene{index}.png"
    Image.fromarray(render_sample(index, 0, "wide", size)["image"]).save(path)
    return path


def test_promptable_clicks_and_a_box_draw_masks(browser, servers, page, tmp_path):
    _, url = servers["promptable"]
    page.goto(url)
    page.wait_for_selector("#main[data-task='promptable']")
    page.set_input_files("#file", str(_scene(tmp_path, 9, (180, 240))))
    page.wait_for_selector("#view[data-image-id]")
    view = page.locator("#view")
    box = view.bounding_box()
    assert box["width"] > 240  # enlarged to fit the page; clicks are mapped back to image pixels

    view.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.6})  # object point
    page.wait_for_selector("#view[data-responses='1']")
    assert int(view.get_attribute("data-mask-pixels")) > 0
    candidates = page.locator(".candidate")
    assert candidates.count() == 3 and page.locator(".candidate.best").count() == 1
    assert page.locator(".candidate.best.selected").count() == 1  # the best-scored mask is the one drawn
    scores = [float(candidates.nth(i).get_attribute("data-score")) for i in range(3)]
    best = int(page.locator(".candidate.best").get_attribute("data-index"))
    assert scores[best] == max(scores)

    view.click(position={"x": box["width"] * 0.1, "y": box["height"] * 0.1}, button="right")  # background
    page.wait_for_selector("#view[data-responses='2']")
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)  # drag a box
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.9, steps=6)
    page.mouse.up()
    page.wait_for_selector("#view[data-responses='3']")
    assert "2 point(s) and a box" in page.text_content("#status")

    other = (best + 1) % 3
    candidates.nth(other).click()  # show another of the 3 masks
    assert page.locator(".candidate.selected").get_attribute("data-index") == str(other)
    assert view.get_attribute("data-mask-pixels") == candidates.nth(other).get_attribute("data-pixels")
    candidates.nth(best).click()
    _screenshot(page, tmp_path, "serve_promptable.png")

    old = view.get_attribute("data-image-id")
    page.locator("#examples button").nth(0).click()  # an example replaces the image and its prompts
    page.wait_for_selector(f"#view:not([data-image-id='{old}'])")
    assert page.locator(".candidate").count() == 0


def test_depth_upload_shows_input_depth_and_a_wipe(browser, servers, page, tmp_path):
    _, url = servers["depth"]
    page.goto(url)
    page.wait_for_selector("#main[data-task='depth']")
    scene = _scene(tmp_path, 12, (150, 200))
    page.set_input_files("#file", str(scene))
    page.wait_for_selector("#dense[data-ready='1']")
    for picture in ("#input-img", "#result-img", "#wipe-top"):
        assert page.locator(picture).evaluate("img => [img.naturalWidth, img.naturalHeight]") == [200, 150]
        assert page.locator(picture).is_visible()
    page.locator("#wipe-slider").fill("30")
    assert "inset(0px 70% 0px 0px)" in page.locator("#wipe-top").get_attribute("style")
    assert "200×150 px" in page.text_content("#status")
    _screenshot(page, tmp_path, "serve_depth.png")

    page.set_input_files("#file", str(scene))  # the same file again
    page.wait_for_selector("#dense[data-ready='1']")
    (tmp_path / "notes.png").write_bytes(b"not really a png")
    page.set_input_files("#file", str(tmp_path / "notes.png"))
    page.wait_for_selector("#status.error")
    assert "not an image" in page.text_content("#status")  # the server's line, shown as it is
    page.locator("#examples button").nth(1).click()  # and the page goes on
    page.wait_for_selector("#status:not(.error)")
    page.wait_for_selector("#dense[data-ready='1']")


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_servers_print_one_line_and_stop_cleanly_on_ctrl_c(servers):
    """Last in this file: it stops the servers. After good and bad requests, stdout held only the start
    line and stderr nothing (no banner, no access log); Ctrl-C ends the process with status 0."""
    for proc, url in servers.values():
        assert _get(f"{url}/info")[0] == 200
        assert _get(f"{url}/example/99") == (404, {"error": "no example 99: there are 4 (0 to 3)"})
        proc.send_signal(signal.SIGINT)
    for proc, _ in servers.values():
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out, err) == (0, "", "")
