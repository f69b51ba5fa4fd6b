"""``anydistill serve`` up to the point uvicorn takes over (in-process, uvicorn's loop stubbed out): the start
line, the warning for a non-loopback address, the quiet uvicorn settings, and one-line errors."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the web demo needs the [serve] extra: pip install 'anydistill[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from anydistill.cli import main  # noqa: E402
from anydistill.serve import server  # noqa: E402


@pytest.fixture
def started(monkeypatch) -> dict:
    """What ``serve`` handed to uvicorn (its config and sockets) instead of running it; the address is
    always bound on loopback, whatever host the test names."""
    seen: dict = {}
    real_bind = server.bind

    def bind(host: str, port: int):
        sock = real_bind("127.0.0.1", 0)
        seen["port"] = sock.getsockname()[1]
        return sock  # serve closes it

    monkeypatch.setattr(server, "bind", bind)
    monkeypatch.setattr(server.uvicorn.Server, "run", lambda self, sockets: seen.update(config=self.config))
    return seen


def test_serve_prints_one_line_and_runs_uvicorn_quietly(serve_checkpoints, started, capsys):
    assert main(["serve", "--checkpoint", str(serve_checkpoints["depth"]), "--port", "0"]) == 0
    port = started["port"]
    out, err = capsys.readouterr()
    assert (out, err) == (f"anydistill serve: http://127.0.0.1:{port} (Ctrl-C to stop)\n", "")
    config = started["config"]
    assert config.log_level == "warning" and config.access_log is False
    assert config.server_header is False and config.date_header is False
    assert config.limit_concurrency == server.MAX_CONNECTIONS  # bounded: beyond it uvicorn answers 503
    client = TestClient(config.app)
    assert client.get("/info", headers={"host": f"127.0.0.1:{port}"}).json()["task"] == "depth"
    assert "is not served here" in client.get("/info", headers={"host": "attacker.example"}).json()["error"]


def test_a_non_loopback_host_gets_a_one_line_warning(serve_checkpoints, started, capsys):
    server.serve(serve_checkpoints["promptable"], host="192.0.2.7", port=0)
    out, err = capsys.readouterr()
    assert out == f"anydistill serve: http://192.0.2.7:{started['port']} (Ctrl-C to stop)\n"
    assert err == (
        "anydistill: warning: --host 192.0.2.7 is not a loopback address: anyone who can reach it can use "
        "this demo (no authentication)\n"
    )
    client = TestClient(started["config"].app)  # answers whatever name the machine is reached by
    assert client.get("/info", headers={"host": "my-box.lan:7860"}).json()["task"] == "promptable"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "70000"], "--port: must be 0 (any free port) to 65535, got 70000"),
        (["--max-side", "0"], "--max-side: must be at least 1, got 0"),
        (["--max-upload-mb", "0"], "--max-upload-mb: must be at least 1, got 0"),
        (["--device", "banana"], "device 'banana': not a device name"),
    ],
)
def test_bad_options_are_one_line(serve_checkpoints, started, capsys, argv, words):
    assert main(["serve", "--checkpoint", str(serve_checkpoints["depth"]), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("anydistill: error: ") and words in err and err.count("\n") == 1


def test_a_missing_or_wrong_checkpoint_is_one_line(tmp_path, started, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anydistill: error: ") and "missing.ckpt" in err and err.count("\n") == 1
    assert "port" not in started  # nothing was bound
