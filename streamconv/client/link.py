"""A sender's link to its worker: has a worker completed the handshake, did it go away, is it
back. It reads the socket monitor (transport.PeerWatch) and logs each change once; it sends
nothing. Waiting for the first worker and for one to come back are bounded by `wait_s`
(0: forever) and end early when the sender is stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streamconv.client.routing import Router
from streamconv.errors import AuthError, StartupError, StreamconvError
from streamconv.wire import transport

log = logging.getLogger(__name__)

POLL_MS = 100  # the longest single wait: a stop request is seen within this
ANNOUNCE_S = 1.0  # waiting this long for a worker is logged (once)


class WorkerLostError(StreamconvError):
    """The worker went away mid-stream and did not come back within the wait."""


class Link:
    def __init__(
        self, watch: transport.PeerWatch, endpoint: str, mode: str, wait_s: float,
        stop: threading.Event, sent: Callable[[], int],
    ) -> None:  # fmt: skip
        self.watch, self.endpoint, self.mode, self.wait_s = watch, endpoint, mode, wait_s
        self._stop = stop
        self._sent = sent  # frames queued so far, for the log lines
        self.ready = False  # a worker completed the handshake once
        self.gone_since: float | None = None
        self._disconnects_seen = 0
        self.resume_pending = False  # a resume found no answer: ask again

    @property
    def disconnects(self) -> int:
        """How often the worker's connection closed after it was first made."""
        return self.watch.disconnects

    def peers(self, timeout_ms: int = 0) -> int:
        """The peer count, logging each time the worker goes away or comes back."""
        peers = self.watch.update(timeout_ms)
        if peers and self.gone_since is not None:
            gone_s = time.monotonic() - self.gone_since
            log.info("the worker at %s is back after %.1f s", self.endpoint, gone_s)
            self.gone_since = None
        elif not peers and self.gone_since is None and self.ready:
            self.gone_since = time.monotonic()
            limit = f" up to {self.wait_s:g} s" if self.wait_s else ""
            then = f"waiting{limit} for it to come back"
            if self.mode == "live":
                then = "dropping frames until it is back"
            log.warning(
                "the worker at %s disconnected after %d frames were queued; frames "
                "queued since may be lost; %s",
                self.endpoint,
                self._sent(),
                then,
            )
        return peers

    def wait_first(self) -> bool:
        """Wait until a worker has completed the handshake: True; False if stopped first.
        AuthError at once if its handshakes refuse this sender; StartupError after `wait_s`."""
        start = time.monotonic()
        announced = False
        while not self._stop.is_set():
            if self.watch.update(POLL_MS) > 0:
                self.ready = True
                level = logging.INFO if announced else logging.DEBUG
                log.log(level, "the worker at %s answered", self.endpoint)
                return True
            if self.watch.refused:  # it answered, and the keys do not match: no use waiting
                why = self.watch.refused
                msg = f"the worker at {self.endpoint} did not let this capture in: {why}"
                raise AuthError(msg)
            waited = time.monotonic() - start
            if self.wait_s and waited >= self.wait_s:
                msg = (
                    f"no worker answered at {self.endpoint} within {self.wait_s:g} s; "
                    "is `streamconv worker` running? (--wait to wait longer)"
                )
                raise StartupError(msg)
            if not announced and waited >= ANNOUNCE_S:
                announced = True
                limit = f"up to {self.wait_s:g} s" if self.wait_s else "no time limit"
                log.info("waiting for a worker at %s (%s)", self.endpoint, limit)
        return False

    def reconnected(self) -> bool:
        """A reconnect not yet answered by a resume (maybe to a restarted worker)."""
        if self.watch.disconnects == self._disconnects_seen and not self.resume_pending:
            return False
        self._disconnects_seen, self.resume_pending = self.watch.disconnects, False
        return True

    def await_back(
        self, router: Router | None, retarget: Callable[[str, str], None]
    ) -> bool:  # fmt: skip
        """Wait for the worker to reconnect (or, sharded, for the stream's owner to change:
        then `retarget(endpoint, output)`); False if stopped, WorkerLostError after `wait_s`."""
        if router is not None:
            router.rearm()
        while not self._stop.is_set():
            if self.peers(POLL_MS) > 0:
                return True
            target = router.reroute() if router is not None else None
            if target is not None:
                retarget(*target)
            gone_s = time.monotonic() - (self.gone_since or time.monotonic())
            if self.wait_s and gone_s >= self.wait_s:
                msg = (
                    f"the worker at {self.endpoint} went away after {self._sent()} frames were "
                    f"queued and did not come back within {self.wait_s:g} s; frames queued "
                    "after it left may be lost (--wait to wait longer)"
                )
                raise WorkerLostError(msg)
        return False
