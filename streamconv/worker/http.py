"""The worker's HTTP side: /healthz, /readyz, /metrics and /status (starlette on uvicorn).

It runs in a daemon thread with its own event loop and only reads: the worker's state flag,
its loop heartbeat and its Stats. It never touches sockets or tensors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from streamconv.httpserver import HttpServer
from streamconv.worker.metrics import CONTENT_TYPE, render
from streamconv.worker.stats import Stats

log = logging.getLogger(__name__)

STALL_S = 30.0  # /healthz fails when the serve loop has not turned for this long


@dataclass
class Health:
    """What the worker tells the HTTP thread: its phase and when its loop last turned."""

    phase: str = "starting"  # starting | ready | stopping
    beat: float = field(default_factory=time.monotonic)
    info: dict[str, Any] = field(default_factory=dict)
    live: Callable[[], dict[str, Any]] = dict  # more of /status, computed when asked

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
        body = {"phase": health.phase, **health.info, **health.live(), **stats.snapshot()}
        return JSONResponse(body)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/status", status),
    ]
    return Starlette(routes=routes)


__all__ = ["Health", "HttpServer", "app"]
