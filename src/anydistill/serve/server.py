"""``anydistill serve``: load a model, bind the address, run the app under uvicorn without its log lines.

The socket is bound here, before uvicorn starts, so a port in use is one clear line and ``--port 0``
takes a free port, whose number the start line prints (what the tests and benchmarks read).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace
from pathlib import Path

import uvicorn

from anydistill.errors import ConfigError, DataError, warn
from anydistill.loading import load_model
from anydistill.serve.app import create_app
from anydistill.serve.protocol import LOOPBACK_HOSTS, ServeLimits

__all__ = ["bind", "is_loopback", "serve"]

#: Tasks the demo shows.
SERVED_TASKS = ("depth", "semantic", "promptable")
#: Connections and requests served at once; beyond, uvicorn answers 503 (bounds the bodies held in memory).
MAX_CONNECTIONS = 32


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: ``localhost``, 127.x.x.x or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``port`` 0: a free one) and listening: connections made from
    now on wait in its backlog until the server takes them.

    Raises:
        ConfigError: the address cannot be resolved or bound (in use, not this machine's, no permission).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host}: cannot resolve the address ({exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: ServeLimits | None = None,
    device: str = "cpu",
) -> None:
    """Serve the demo of ``checkpoint`` at ``http://host:port`` until interrupted (Ctrl-C).

    Prints one line, ``anydistill serve: http://HOST:PORT (Ctrl-C to stop)``, once the address takes
    connections; uvicorn logs only warnings and errors (no banner, no access log). A ``host`` that is
    not loopback gets a one-line warning: the demo has no authentication.

    Raises:
        ConfigError: a bad ``device`` or an address that cannot be bound.
        DataError: the checkpoint is missing or broken, or not a depth, semantic or promptable model.
    """
    limits = limits or ServeLimits()
    loopback = is_loopback(host)
    loaded = load_model(checkpoint, device=device)
    if loaded.task not in SERVED_TASKS:
        raise DataError(
            checkpoint, f"is a {loaded.task!r} model; serve shows depth, semantic or promptable models"
        )
    sock = bind(host, port)
    if not loopback:
        warn(
            f"--host {host} is not a loopback address: anyone who can reach it can use this demo (no authentication)"
        )
    hosts = tuple(dict.fromkeys((*LOOPBACK_HOSTS, host.lower()))) if loopback else None
    app = create_app(loaded, replace(limits, hosts=hosts))
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        lifespan="off",
        limit_concurrency=MAX_CONNECTIONS,
    )
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"anydistill serve: http://{shown}:{bound} (Ctrl-C to stop)", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the signal it caught
        pass
    finally:
        sock.close()
