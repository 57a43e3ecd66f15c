"""The worker's HTTP side: /healthz, /readyz, /metrics and /status (starlette on uvicorn).

It runs in a daemon thread with its own event loop and only reads: the worker's state flag,
its loop heartbeat and its Stats. It never touches sockets or tensors.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from streamconv.errors import StartupError
from streamconv.worker.metrics import CONTENT_TYPE, render
from streamconv.worker.stats import Stats

log = logging.getLogger(__name__)

STALL_S = 30.0  # /healthz fails when the serve loop has not turned for this long
START_TIMEOUT_S = 10.0


@dataclass
class Health:
    """What the worker tells the HTTP thread: its phase and when its loop last turned."""

    phase: str = "starting"  # starting | ready | stopping
    beat: float = field(default_factory=time.monotonic)
    info: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.phase != "ready" or time.monotonic() - self.beat < STALL_S


def app(health: Health, stats: Stats, registry: CollectorRegistry) -> Starlette:
    async def healthz(request: Request) -> Response:
        ok = health.alive()
        return PlainTextResponse("ok\n" if ok else "stalled\n", status_code=200 if ok else 503)

    async def readyz(request: Request) -> Response:
        ok = health.phase == "ready"
        return PlainTextResponse(f"{health.phase}\n", status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE)

    async def status(request: Request) -> Response:
        return JSONResponse({"phase": health.phase, **health.info, **stats.snapshot()})

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/status", status),
    ]
    return Starlette(routes=routes)


class HttpServer:
    """Binds at once (so a taken port is a StartupError), then serves from a thread."""

    def __init__(self, host: str, port: int, application: Starlette) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            msg = f"cannot serve HTTP on {host}:{port}: {e} (use --http HOST:PORT or 'off')"
            raise StartupError(msg) from e
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(application, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)

    def stop(self, timeout_s: float = 2.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        self.sock.close()
