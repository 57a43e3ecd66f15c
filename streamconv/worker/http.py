"""The worker's HTTP side: /healthz, /readyz, /metrics and /status (streamconv.health's app).

It runs in a daemon thread with its own event loop and only reads: the worker's state flag,
its loop heartbeat and its Stats. It never touches sockets or tensors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streamconv import health as shared
from streamconv.config import WorkerSettings, parse_http
from streamconv.health import STALL_S, Health
from streamconv.httpserver import HttpServer
from streamconv.worker import metrics
from streamconv.worker.stats import Stats

log = logging.getLogger("streamconv.worker.role")  # the worker's lines, as before

RELOAD_WAIT_S = 30.0  # a reload answered after this long is reported as pending

Ask = Callable[[], "Future[dict[str, Any]] | None"]


def serve_http(
    w: WorkerSettings, health: Health, stats: Stats, device_memory: Callable[[], int | None],
    ask: Ask,
) -> HttpServer | None:  # fmt: skip
    """The worker's HTTP server on `w.http` (None for 'off'), started; POST /reload only with
    `w.reload_http`. Before the model is built: /healthz answers meanwhile."""
    where = parse_http(w.http)
    if where is None:
        return None
    registry = metrics.registry(stats, device_memory)
    server = HttpServer(*where, app(health, stats, registry, ask if w.reload_http else None))
    server.start()
    extra = " POST /reload" if w.reload_http else ""
    log.info("http on %s (/healthz /readyz /metrics /status%s)", server.url, extra)
    return server


def app(
    health: Health, stats: Stats, registry: CollectorRegistry, reload: Ask | None = None
) -> Starlette:
    """/status adds the worker's Stats to its phase, info and live part; POST /reload (when
    `reload` is given: [worker] reload_http) loads the weights again and answers the outcome."""
    routes = [] if reload is None else [Route("/reload", _reloader(reload), methods=["POST"])]
    return shared.app(health, registry, stats.snapshot, routes)


def _reloader(ask: Ask) -> Callable[[Request], Any]:
    async def reload_(request: Request) -> Response:
        future = ask()
        if future is None:
            return JSONResponse({"error": "the worker is not ready yet"}, status_code=503)
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(future), RELOAD_WAIT_S)
        except TimeoutError:
            return JSONResponse({"error": "asked; not done yet"}, status_code=202)
        return JSONResponse(outcome, status_code=409 if "error" in outcome else 200)

    return reload_


__all__ = ["STALL_S", "Health", "HttpServer", "app"]
