"""The worker's periodic duties: small objects with one `tick(now)`, called every turn of the
serve loop (each decides itself whether its time has come)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from streamconv.wire import transport
from streamconv.worker.stats import Stats

log = logging.getLogger(__name__)

REFUSALS_EVERY_S = 0.1  # how often refused handshakes are taken from the socket monitors


class Duty(Protocol):
    def tick(self, now: float) -> None: ...


class Every:
    """`action(now)` at most every `every_s` seconds (0: every turn), the first time at once
    or one period after `since`."""

    def __init__(
        self, every_s: float, action: Callable[[float], object], since: float = float("-inf")
    ) -> None:
        self.every_s, self.action, self.last = every_s, action, since

    def tick(self, now: float) -> None:
        if now - self.last >= self.every_s:
            self.last = now
            self.action(now)


class RefusalCount:
    """Handshakes the sockets refused (socket monitors, read a few times a second, not per
    message): counted in curve_refused, and the first one per socket logged."""

    def __init__(self, watch: transport.RefusalWatch, stats: Stats) -> None:
        self.watch, self.stats = watch, stats
        self.last = float("-inf")
        self.logged: set[str] = set()

    def tick(self, now: float) -> None:
        if now - self.last < REFUSALS_EVERY_S:
            return
        self.last = now
        for name, n in self.watch.take().items():
            self.stats.count("curve_refused", n)
            if name not in self.logged:
                self.logged.add(name)
                log.warning("%s: refused a client's handshake (no CURVE keys where CURVE is "
                            "required, keys where it is not, a wrong worker key, or a key not "
                            "allowed); every one is counted in curve_refused", name)  # fmt: skip
