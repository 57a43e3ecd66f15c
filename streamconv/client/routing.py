"""Shard routing for a sender: which worker a stream goes to, asked again while it is away.

A capture given `shards` (wire/shards.py) sends its stream to the stream's owner among them.
With `dns://` entries the list follows the pods behind a name: while the stream's worker is
away, or has not answered yet, the list is resolved again every REROUTE_S and the stream
moves to its owner under the new answer (the Sender retargets its socket).
"""

from __future__ import annotations

import logging
import time

from streamconv.config.roles import derive_output
from streamconv.errors import ConfigError
from streamconv.wire.shards import owner, parse_shards, resolve

log = logging.getLogger(__name__)

REROUTE_S = 10.0  # how often to resolve the shard list again while the stream's worker is away
DEFAULT_OUTPUT = "tcp://127.0.0.1:5556"  # the output when an endpoint has none to derive


class Router:
    """The owner of `stream` among `shards`: `endpoint` (its input) and `output` (its output,
    by convention the input's port + 1)."""

    def __init__(self, stream: str, shards: list[str], endpoint: str, output: str) -> None:
        self.stream, self.shards = stream, parse_shards(shards)
        self.endpoint, self.output = endpoint, output
        self.dns = any(s.startswith("dns://") for s in self.shards)
        self._next = 0.0  # when the list may be resolved again (while the worker is away)

    def route(self) -> bool:
        """Take the owner under the list as it resolves now; True if that moved the stream.
        Raises ConfigError when the list does not resolve."""
        target = owner(self.stream, resolve(self.shards))
        if target == self.endpoint:
            return False
        self.endpoint = target
        self.output = derive_output(target) or DEFAULT_OUTPUT
        log.info("stream %s -> shard %s (of %d)", self.stream, target, len(self.shards))
        return True

    def try_route(self) -> bool:
        """route(), with a list that does not resolve (yet) logged and taken as no move."""
        try:
            return self.route()
        except ConfigError as e:  # the name may resolve again later
            log.warning("capture: %s; trying again", e)
            return False

    def reroute(self, now: float | None = None) -> tuple[str, str] | None:
        """(input, output) of the stream's new owner, if it moved; None to stay. Asked while
        the worker is away: resolves at once, then at most every REROUTE_S."""
        now = time.monotonic() if now is None else now
        if not self.dns or now < self._next:
            return None
        self._next = now + REROUTE_S
        return (self.endpoint, self.output) if self.try_route() else None

    def rearm(self) -> None:
        """The worker is back: the next absence resolves at once."""
        self._next = 0.0
