"""The worker's HTTP side: /healthz, /readyz, /metrics and /status (streamconv.health's app).

It runs in a daemon thread with its own event loop and only reads: the worker's state flag,
its loop heartbeat and its Stats. It never touches sockets or tensors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from streamconv import health as shared
from streamconv.health import STALL_S, Health
from streamconv.httpserver import HttpServer
from streamconv.worker.stats import Stats


def app(health: Health, stats: Stats, registry: CollectorRegistry) -> Starlette:
    """/status adds the worker's Stats to its phase, info and live part."""
    return shared.app(health, registry, stats.snapshot)


__all__ = ["STALL_S", "Health", "HttpServer", "app"]
