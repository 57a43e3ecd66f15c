"""A lossless subscriber's acknowledgements: how far it has consumed each stream, told to the
worker so that lossless senders wait for it instead of it losing outputs (worker/credits.py,
docs/PROTOCOL.md "Lossless subscribers").

Acks go to each worker's input (by convention the output port - 1, or given), as probes that
the worker does not answer: after every ACK_EVERY frames consumed, and at least every
KEEPALIVE_S per stream (a subscriber silent for the worker's expiry is no longer waited for).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from streamconv.config.roles import derive_input
from streamconv.errors import ConfigError
from streamconv.wire import protocol, transport

log = logging.getLogger(__name__)

ACK_EVERY = 8  # frames consumed between two acks of a stream
KEEPALIVE_S = 1.0  # the longest time between two acks of a stream
KEPT = 64  # streams acknowledged at once (the most recently seen)
UNREACHED_S = 3.0  # an ack socket with no worker after this long is reported (once)


class Acker:
    def __init__(
        self, ctx: transport.Context, outputs: Sequence[str], inputs: Sequence[str] | None,
        keys: dict[str, Any],
    ) -> None:  # fmt: skip
        if inputs is None:
            derived = [derive_input(o) for o in outputs]
            if any(d is None for d in derived):
                msg = (f"a lossless subscriber acknowledges to the worker's input: give it "
                       f"(inputs=...) for {', '.join(outputs)}")  # fmt: skip
                raise ConfigError(msg)
            inputs = [d for d in derived if d is not None]
        self.id = "sub." + uuid.uuid4().hex[:16]
        self.inputs = list(inputs)
        self.socks: list[transport.Socket] = []
        self._watches: list[transport.PeerWatch] = []
        try:
            for i in inputs:  # watched from before the connect: no handshake goes unseen
                settings = transport.socket_settings(i, False, 64, 0, **keys)
                sock, watch = transport.open_watched(ctx, "push", settings)
                self.socks.append(sock)
                self._watches.append(watch)
        except BaseException:
            self.close()  # the ones already open (the caller may terminate the context)
            raise
        self._since = time.monotonic()
        # stream -> [session or None, next seq to ack, next seq acked, time acked]
        self.streams: dict[str, list[Any]] = {}
        self.sent = 0

    def follow(self, stream: str) -> None:
        """Hold `stream`'s senders back from its first frame on (before any output came)."""
        self.streams.setdefault(stream, [None, 0, -1, 0.0])

    def consumed(self, header: dict[str, Any]) -> None:
        """An output the application took: every output of its frame before it was taken too."""
        st = self.streams.get(header["stream"])
        if st is None or st[0] != header["session"]:
            st = self.streams[header["stream"]] = [header["session"], 0, -1, 0.0]
            while len(self.streams) > KEPT:
                del self.streams[next(iter(self.streams))]
        # Outputs go frame by frame, every layer of frame i before frame i + 1: once frame i's
        # output arrived, the subscriber needs no frame before i (its other layers came first
        # or come next, within the worker's window).
        st[1] = max(st[1], header["seq"])
        if header["kind"] == "eos":
            st[1] = max(st[1], header["seq"])

    def tick(self, now: float | None = None) -> None:
        """Send the acks that are due."""
        now = time.monotonic() if now is None else now
        if self._watches and now - self._since > UNREACHED_S:
            for watch, where in zip(self._watches, self.inputs, strict=True):
                if watch.update() == 0:
                    log.warning(
                        "lossless subscriber: no worker at %s takes its acks, so no "
                        "sender waits for it; give the worker's input (--input)",
                        where,
                    )
            for watch in self._watches:
                watch.close()
            self._watches = []
        for stream, st in self.streams.items():
            session, upto, acked, at = st
            if upto - acked >= ACK_EVERY or now - at >= KEEPALIVE_S:
                parts = protocol.encode_ack(self.id, stream, upto, session)
                for sock in self.socks:
                    transport.send(sock, parts, block=False)
                self.sent += 1
                st[2], st[3] = upto, now

    def close(self) -> None:
        for watch in self._watches:
            watch.close()
        for sock in self.socks:
            transport.close(sock, 0)
