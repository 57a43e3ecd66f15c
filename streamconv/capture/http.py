"""The capture's HTTP side: /healthz, /readyz, /metrics and /status (streamconv.health's app).

Read at request time from the capture's current Sender (its plain counters, never its sockets).
/readyz says ready once a worker has answered. /healthz watches no loop: a lossless capture may
wait for its worker for as long as it takes (`wait_s` 0), and restarting it would only open a
new session, its stream starting afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from streamconv import health
from streamconv.httpserver import HttpServer

if TYPE_CHECKING:
    from streamconv.capture.role import Capture

PREFIX = "streamconv_capture_"


def serve(capture: Capture) -> HttpServer | None:
    """Serve the capture's endpoints on `capture.http` ('off': nothing, None)."""

    def count(name: str) -> Callable[[], float]:
        return lambda: 0 if capture.sender is None else getattr(capture.sender, name)

    values = [
        health.Value(f"{PREFIX}frames_sent", "Frames queued to the worker", "counter",
                     count("sent")),
        health.Value(f"{PREFIX}frames_dropped", "Live frames not queued", "counter",
                     count("dropped")),
        health.Value(f"{PREFIX}disconnects", "Times the worker's connection closed mid-run",
                     "counter", count("disconnects")),
    ]  # fmt: skip
    capture.health.info = {"stream": capture.stream, "mode": capture.mode}
    capture.health.live = lambda: {
        "worker": capture.endpoint,
        **{v.name.removeprefix(PREFIX): v.read() for v in values},
    }
    reg = health.registry(health.ValuesCollector(values))
    return health.serve(capture.http, "capture", capture.health, reg)
