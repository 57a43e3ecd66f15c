"""HTTP health for every long-running role: /healthz, /readyz, /metrics and /status.

One app for the worker, the capture and the proxy (starlette, served by `httpserver` from a
daemon thread). It only reads: the role's phase and loop heartbeat (`Health`), a registry of
Prometheus collectors, and a function that returns the role's own part of /status. A role's
counters are read at scrape time (`Value`), never copied into a second set of counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from streamconv.config import parse_http
from streamconv.httpserver import HttpServer

log = logging.getLogger(__name__)

STALL_S = 30.0  # /healthz fails when a watched loop has not turned for this long
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PATHS = "/healthz /readyz /metrics /status"


@dataclass
class Health:
    """What a role tells the HTTP thread: its phase and when its loop last turned.

    `watch_loop` off: /healthz answers 200 while the process serves HTTP, for a role whose
    loop may wait as long as it must (a lossless capture waiting for its worker).
    """

    phase: str = "starting"  # starting | ready | stopping
    beat: float = field(default_factory=time.monotonic)
    info: dict[str, Any] = field(default_factory=dict)
    live: Callable[[], dict[str, Any]] = dict  # more of /status, computed when asked
    watch_loop: bool = True

    def alive(self) -> bool:
        if not self.watch_loop or self.phase != "ready":
            return True
        return time.monotonic() - self.beat < STALL_S


@dataclass(frozen=True)
class Value:
    """One unlabelled metric read from its owner when scraped (`name` without `_total`)."""

    name: str
    doc: str
    kind: Literal["counter", "gauge"]
    read: Callable[[], float]


class ValuesCollector(Collector):
    def __init__(self, values: Sequence[Value]) -> None:
        self.values = list(values)

    def collect(self) -> Iterator[Metric]:
        for v in self.values:
            family = CounterMetricFamily if v.kind == "counter" else GaugeMetricFamily
            yield family(v.name, v.doc, value=v.read())


def registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own (not the global one): the role's collectors plus the process
    metrics (process_resident_memory_bytes, process_cpu_seconds_total, ...)."""
    reg = CollectorRegistry()
    for collector in collectors:
        reg.register(collector)
    ProcessCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)


def app(
    health: Health, reg: CollectorRegistry, status: Callable[[], dict[str, Any]] = dict,
    more: list[Route] | None = None,
) -> Starlette:  # fmt: skip
    async def healthz(request: Request) -> Response:
        ok = health.alive()
        return PlainTextResponse("ok\n" if ok else "stalled\n", status_code=200 if ok else 503)

    async def readyz(request: Request) -> Response:
        ok = health.phase == "ready"
        return PlainTextResponse(f"{health.phase}\n", status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(render(reg), media_type=CONTENT_TYPE)

    async def status_(request: Request) -> Response:
        return JSONResponse({"phase": health.phase, **health.info, **health.live(), **status()})

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/status", status_),
        *(more or []),
    ]
    return Starlette(routes=routes)


def serve(
    address: str | None,
    role: str,
    health: Health,
    reg: CollectorRegistry,
    status: Callable[[], dict[str, Any]] = dict,
) -> HttpServer | None:
    """Start serving on 'HOST:PORT' (None or 'off': nothing); logs "ROLE http on URL". A taken
    port is a StartupError (exit code 3) before the role does anything else."""
    where = parse_http(address) if address is not None else None
    if where is None:
        return None
    server = HttpServer(*where, app(health, reg, status))
    server.start()
    log.info("%s http on %s (%s)", role, server.url, PATHS)
    return server
