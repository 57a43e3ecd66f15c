"""Subscribe to worker outputs from any process: `Subscriber` yields (header, numpy array).

    with Subscriber("tcp://127.0.0.1:5556", stream="cam0", layers=["motion"]) as sub:
        for header, frame in sub:          # frame is (C, H, W) float32, None for eos
            ...

Every receive has a timeout (TimeoutError). Gaps in seq that the worker did not mark as a
discontinuity (a subscriber too slow for the PUB high-water mark) are counted in `gaps`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import numpy as np
import zmq

from streamconv.errors import ProtocolError
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import PROBE_STREAM

log = logging.getLogger(__name__)


class Subscriber:
    def __init__(
        self,
        endpoint: str,
        *,
        stream: str | None = None,
        layers: Iterable[str] | None = None,
        timeout_s: float = 10.0,
        hwm: int = 1000,
        ctx: transport.Context | None = None,
    ) -> None:
        self.stream, self.layers, self.timeout_s = stream, set(layers or []), timeout_s
        if stream is None:
            topics = [b""]  # layer filtering, if any, happens below: topics are prefixes
        elif self.layers:
            topics = [protocol.topic(stream, layer) for layer in sorted(self.layers)]
        else:
            topics = [protocol.stream_topic(stream)]
        self._own_ctx = ctx is None
        self._ctx: transport.Context = ctx or zmq.Context()
        self.sock = transport.sub_socket(self._ctx, endpoint, topics, hwm=hwm)
        self.gaps: Counter[tuple[str, str]] = Counter()
        self.bad_messages = 0
        self._last: dict[tuple[str, str], tuple[str, int]] = {}

    def recv(self, timeout_s: float | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
        """The next matching (header, array); TimeoutError if none comes in time."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            frames = transport.recv(self.sock, left_ms)
            if frames is None:
                msg = f"no output within {timeout} s"
                raise TimeoutError(msg)
            try:
                header, array = protocol.decode_output([f.buffer for f in frames])
            except ProtocolError as e:
                self.bad_messages += 1
                log.warning("subscriber: skipped a bad message: %s", e)
                continue
            if header["stream"] == PROBE_STREAM:
                continue
            if self.layers and header.get("layer") not in self.layers:
                continue
            self._check_gap(header)
            return header, array

    def _check_gap(self, header: dict[str, Any]) -> None:
        if header["kind"] != "output":
            return
        key = (header["stream"], header["layer"])
        last = self._last.get(key)
        continued = last is not None and last[0] == header["session"]
        if continued and last and header["seq"] != last[1] + 1 and not header.get("discontinuity"):
            self.gaps[key] += 1
        self._last[key] = (header["session"], header["seq"])

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
        while True:
            yield self.recv()

    def wait_ready(self, input_endpoint: str, timeout_s: float = 30.0) -> None:
        """Block until the worker's outputs reach this subscriber.

        PUB/SUB subscriptions take a moment to propagate, and messages published before then
        are lost to this subscriber. This sends eos probes on a private stream through the
        worker until one comes back, so everything published afterwards arrives.
        """
        probe = protocol.topic(PROBE_STREAM, "")[:-1]
        self.sock.setsockopt(zmq.SUBSCRIBE, probe)
        push = transport.push_socket(self._ctx, input_endpoint, linger_ms=0)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                transport.send(
                    push, protocol.encode_eos(PROBE_STREAM, uuid.uuid4().hex, 0), block=False
                )
                frames = transport.recv(self.sock, 100)
                if frames is not None and bytes(frames[0].buffer).startswith(probe):
                    return
            msg = f"worker at {input_endpoint} did not answer within {timeout_s} s"
            raise TimeoutError(msg)
        finally:
            transport.close(push, 0)
            self.sock.setsockopt(zmq.UNSUBSCRIBE, probe)

    def close(self) -> None:
        transport.close(self.sock, 0)
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def collect(
    sub: Subscriber, layers: Iterable[str], timeout_s: float = 30.0
) -> dict[str, list[tuple[dict[str, Any], np.ndarray]]]:
    """Receive outputs until eos has arrived on every one of `layers`."""
    want = set(layers)
    out: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {name: [] for name in want}
    ended: set[str] = set()
    while ended != want:
        header, array = sub.recv(timeout_s)
        layer = header["layer"]
        if layer not in want:
            continue
        if array is None:
            ended.add(layer)
        else:
            out[layer].append((header, array))
    return out
