"""A subscriber's shared-memory side (worker --shm, docs/PROTOCOL.md "Outputs in shared
memory"): which topics to take, payloads copied out of the worker's ring, and the switch
between the ring and the socket.

`mode` True asks for the ring from the start; "auto" switches to it when the worker says it
offers one (a probe's answer, `Subscriber.wait_ready`) and its one endpoint is on this host
(not several shards: each would have to offer it), and back to the socket if the first ring
cannot be mapped (another container's memory); False never uses it. A lossless subscriber or
one that takes previews never does.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

from streamconv.errors import ConfigError, ProtocolError
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import SHM_PREFIX
from streamconv.wire.shm import Reader

log = logging.getLogger(__name__)

Mode = bool | Literal["auto"]
LOOPBACK = ("ipc://", "tcp://127.", "tcp://localhost:", "tcp://[::1]:")


class Shared:
    def __init__(self, mode: Mode, lossless: bool, previews: bool, endpoints: list[str]) -> None:
        if mode is True and previews:
            msg = "a shared-memory subscriber takes the outputs, not previews"
            raise ConfigError(msg)
        if mode is True and lossless:  # the ring does not wait for its readers
            msg = (
                "a shared-memory subscriber cannot be lossless (leave shm off to hold senders back)"
            )
            raise ConfigError(msg)
        self.reader = Reader() if mode is True else None
        self._torn = 0  # counted by readers closed since (a switch back to the socket)
        local = len(endpoints) == 1 and endpoints[0].startswith(LOOPBACK)
        self.auto = mode == "auto" and not lossless and not previews and local

    @property
    def on(self) -> bool:
        return self.reader is not None

    @property
    def torn(self) -> int:
        """Outputs refused: their slot was reused before they were read, or the ring gone."""
        return self._torn + (self.reader.torn if self.reader is not None else 0)

    def topics(self, plain: list[bytes]) -> list[bytes]:
        """The topics to subscribe to now: the ring's, or the socket's (`plain`)."""
        return [SHM_PREFIX.encode() + t for t in plain] if self.on else plain

    def prepare(self, sock: transport.Socket, plain: list[bytes]) -> None:
        """Before wait_ready's probes: subscribe to the ring's topics too (auto), so that an
        answer to a probe subscribed after them proves they reached the worker as well (one
        pipe, in order)."""
        if self.auto and not self.on:
            for t in plain:
                transport.subscribe(sock, SHM_PREFIX.encode() + t)

    def settle(self, sock: transport.Socket, plain: list[bytes], answer: list[Any]) -> None:
        """A probe's answer came: read the ring if the worker offers one (the socket's topics
        dropped), else drop the ring's topics again."""
        if not self.auto or self.on:
            return
        try:
            header = protocol.decode_output([f.buffer for f in answer])[0]
        except ProtocolError:
            header = {}
        offered = bool(header.get("shm_outputs"))
        for t in plain:
            transport.unsubscribe(sock, t if offered else SHM_PREFIX.encode() + t)
        if offered:
            self.reader = Reader()
            log.debug("subscriber: outputs from the worker's shared memory")

    def back_to_socket(self, sock: transport.Socket, plain: list[bytes]) -> None:
        """Take the outputs over the socket again (the ring's topics dropped, after)."""
        for t in plain:
            transport.subscribe(sock, t)
        for t in plain:
            transport.unsubscribe(sock, SHM_PREFIX.encode() + t)
        self._torn = self.torn
        self.close()
        self.reader, self.auto = None, False
        log.debug("subscriber: outputs from the worker's socket")

    def payload(self, header: dict[str, Any], sock: transport.Socket,
                plain: list[bytes]) -> np.ndarray | None:  # fmt: skip
        """The output's payload copied out of its slot; None if the slot was reused (counted
        in `torn`) or the ring is gone."""
        assert self.reader is not None
        dtype = protocol.OUTPUT_DTYPES[header["dtype"]]
        try:
            data = self.reader.get(header["shm"], dtype, tuple(header["shape"]))
        except (OSError, ValueError):  # its ring is gone (a restarted worker): lost
            self.reader.torn += 1
            if self.auto and not self.reader.mapped:  # never mapped one: not this host's
                log.warning("subscriber: the worker's shared memory cannot be mapped here; "
                            "reading its outputs over the socket")  # fmt: skip
                self.back_to_socket(sock, plain)
            return None
        return None if data is None else protocol.shm_payload(header, data)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
