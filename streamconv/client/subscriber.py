"""Subscribe to worker outputs from any process: `Subscriber` yields (header, numpy array).

    with Subscriber("tcp://127.0.0.1:5556", stream="cam0", layers=["motion"]) as sub:
        for header, frame in sub:          # frame is (C, H, W) float32, None for eos
            ...

The endpoint may be a list: every shard's output, fanned in by one socket.

Every receive has a timeout (TimeoutError). With a `stream`, iterating ends (StopIteration) once
that stream's session has sent eos on every layer: the `layers` given, or else every layer seen
on the stream (a layer that published outputs is seen before its eos). Without a `stream` the
outputs of all streams interleave and have no common end: iterating goes on until a receive
times out. Gaps in seq that the worker did not mark as a discontinuity (a subscriber too slow
for the PUB high-water mark, or a worker restart) are counted in `gaps` (events); `losses`
counts the outputs missed, per stream, layer and session: at the start (joined late), in gaps,
at the end (known from the eos), and the sessions that never ended (client/losses.py). Outputs
a restarted worker computed again (`replay`) that this subscriber already has are skipped and
counted in `duplicates`. To see a stream from its first output, subscribe (and `wait_ready`)
before its sender starts. `previews` takes the worker's previews too, or only them (a viewer;
`streamconv view` reads through this class); `strict=False` reports a refused handshake in
`refused` instead of raising AuthError, for a caller that keeps trying and shows why.
`shm`: payloads from the worker's shared memory (same host, worker --shm): True asks for it,
"auto" (the default) takes it when `wait_ready` learns the worker offers it and the endpoint
is on this host, False never does; a lossless subscriber never reads it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from streamconv.client.acks import Acker
from streamconv.client.losses import Losses
from streamconv.client.shared import Mode, Shared
from streamconv.errors import AuthError, ConfigError, ProtocolError
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import INPUT, PREVIEW_PREFIX, PROBE_STREAM

log = logging.getLogger(__name__)

Message = tuple[dict[str, Any], np.ndarray | None]
# Previews (small, rate-limited copies the worker makes while someone subscribes to them):
# "none" takes none, "only" takes them and no outputs (a viewer), "input" takes the outputs
# and the previews of each stream's input (the worker keeps no full-rate copy of its input).
Previews = Literal["none", "only", "input"]
SLICE_S = 1.0  # the longest single wait on the socket: any timeout, even math.inf, is safe
LOSSLESS_HWM = 1_000_000  # lossless: the worker's credit bounds what waits, not this queue
ACK_SLICE_S = 0.25  # lossless: the longest wait between two looks at the acks due


class Subscriber:
    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        stream: str | None = None,
        layers: Iterable[str] | None = None,
        timeout_s: float = 10.0,
        hwm: int = 1000,
        ctx: transport.Context | None = None,
        curve_secret: Path | None = None,
        curve_server: Path | None = None,
        lossless: bool = False,
        inputs: Sequence[str] | None = None,
        previews: Previews = "none",
        strict: bool = True,
        shm: Mode = "auto",
    ) -> None:
        self.stream, self.layers, self.timeout_s = stream, set(layers or []), timeout_s
        self.previews, self.strict = previews, strict
        # Several endpoints: every shard's output (wire/shards.py), fanned in by one socket.
        outputs = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        # Same host as a worker with [worker] shm: payloads from its shared memory (shared.py).
        self.shm = Shared(shm, lossless, previews != "none", outputs)
        if not outputs:
            msg = "a subscriber needs at least one endpoint to connect to"
            raise ConfigError(msg)
        if lossless and previews == "only":
            msg = "previews are samples: a lossless subscriber takes the outputs"
            raise ConfigError(msg)
        self.endpoint = ", ".join(outputs)
        self._own_ctx, self._ctx = ctx is None, transport.context() if ctx is None else ctx
        self._keys: dict[str, Any] = {"curve_secret": curve_secret, "curve_server": curve_server}
        self._topics = _topics(stream, self.layers, previews)
        self._connect(outputs, self.shm.topics(self._topics), hwm, lossless, inputs)
        self.gaps: Counter[tuple[str, str]] = Counter()
        self.losses = Losses()
        self.bad_messages = self.duplicates = 0  # duplicates: replayed outputs, skipped
        self._last: dict[tuple[str, str], tuple[str, int]] = {}
        # End of stream: the layers seen in, and ended by, the stream's current session.
        self._session: str | None = None
        self._seen, self._ended = set[str](), set[str]()

    def _connect(
        self, outputs: list[str], topics: list[bytes], hwm: int, lossless: bool,
        inputs: Sequence[str] | None,
    ) -> None:  # fmt: skip
        """Open the SUB (and, lossless, the acks toward the workers' `inputs`); on failure,
        close what was opened."""
        # Lossless: (almost) no queue limit here; the worker's credit bounds what can wait.
        queue = LOSSLESS_HWM if lossless else hwm
        # A refused handshake (a key not allowed, or CURVE on one end only: a subscriber
        # without keys at a CURVE worker) is reported instead of a silent timeout. The watch
        # listens from before the connect, so no handshake goes unseen.
        try:
            first = transport.socket_settings(outputs[0], False, queue, 0, **self._keys)
            self.sock, watch = transport.open_watched(self._ctx, "sub", first, topics=topics,
                                                      more=outputs[1:])  # fmt: skip
        except BaseException:
            self._term()
            raise
        self._watch: transport.PeerWatch | None = watch
        self.acker: Acker | None = None
        if not lossless:
            return
        try:
            self.acker = Acker(self._ctx, outputs, inputs, self._keys)
        except BaseException:
            self.close()
            raise
        if self.stream is not None:
            self.acker.follow(self.stream)
            self.acker.tick()

    @property
    def ended(self) -> bool:
        """True once the stream's current session has sent eos on every subscribed layer (the
        `layers` given, or else every layer seen); always False without a `stream`."""
        if self.stream is None:
            return False
        want = self.layers or self._seen
        return bool(want) and want <= self._ended

    def poll(self, timeout_s: float) -> Message | None:
        """The next matching (header, array), or None if none comes within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.acker is not None:
                self.acker.tick()
            left_s = deadline - time.monotonic()
            slice_s = ACK_SLICE_S if self.acker is not None else SLICE_S
            frames = transport.recv(self.sock, int(max(0.0, min(left_s, slice_s)) * 1000))
            if frames is None:
                self._check_refused()
                if left_s <= slice_s:
                    return None
                continue
            try:
                header, array = protocol.decode_output([f.buffer for f in frames])
            except ProtocolError as e:
                self.bad_messages += 1
                # Logged once; a stream of bad messages must not flood the log.
                level = logging.WARNING if self.bad_messages == 1 else logging.DEBUG
                log.log(level, "subscriber: skipped a bad message (counted): %s", e)
                continue
            if not self._wanted(header):
                continue
            if "shm" in header and header["kind"] == "output":
                array = self.shm.payload(header, self.sock, self._topics)
                if array is None:
                    continue  # overwritten before it was read: counted, seen as a gap
            if header.get("preview"):  # samples: no seq order, nothing to count or ack
                self._track_end(header)
                return header, array
            if self._duplicate(header):
                self.duplicates += 1
                continue
            self._check_gap(header)
            if header["kind"] == "output":
                self.losses.output(header)
            else:
                self.losses.eos(header)
            if self.acker is not None:
                self.acker.consumed(header)
            self._track_end(header)
            return header, array

    @property
    def torn(self) -> int:
        """Shared-memory outputs overwritten before this subscriber read them (lost)."""
        return self.shm.torn

    def _wanted(self, header: dict[str, Any]) -> bool:
        if header["stream"] == PROBE_STREAM:
            return False  # control traffic (wait_ready's probes)
        if ("shm" in header) != self.shm.on:
            return False  # the other way of the same outputs
        input_preview = header["layer"] == INPUT
        if self.layers and header["layer"] not in self.layers and not input_preview:
            return False
        if header.get("preview"):
            return self.previews == "only" or (self.previews == "input" and input_preview)
        return self.previews != "only"

    def take(self, timeout_s: float, most: int) -> list[Message]:
        """Every matching message waiting, up to `most`, after waiting up to `timeout_s` for
        the first: a viewer that fell behind catches up in one go."""
        first = self.poll(timeout_s)
        if first is None:
            return []
        got = [first]
        while len(got) < most:
            more = self.poll(0.0)
            if more is None:
                break
            got.append(more)
        return got

    @property
    def connected(self) -> bool:
        """Whether a handshake with a worker holds now (events from the socket monitor)."""
        return self._watch is not None and self._watch.update() > 0

    @property
    def refused(self) -> str | None:
        """Why the worker refuses this subscriber's handshakes, once they keep failing."""
        if self._watch is None:
            return None
        self._watch.update()
        return self._watch.refused

    def _check_refused(self) -> None:
        """A refusal raises AuthError (strict), or waits in `refused` for the caller to show."""
        if not self.strict or self.connected:
            return
        why = self.refused
        if why:
            msg = f"the worker at {self.endpoint} did not let this subscriber in: {why}"
            raise AuthError(msg)

    def recv(self, timeout_s: float | None = None) -> Message:
        """The next matching (header, array); TimeoutError if none comes in time."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        got = self.poll(timeout)
        if got is None:
            msg = f"no output within {timeout} s"
            raise TimeoutError(msg)
        return got

    def _duplicate(self, header: dict[str, Any]) -> bool:
        """An output computed again after a resume that this subscriber already has."""
        if header["kind"] != "output" or not header.get("replay"):
            return False
        last = self._last.get((header["stream"], header["layer"]))
        return last is not None and last[0] == header["session"] and header["seq"] <= last[1]

    def _check_gap(self, header: dict[str, Any]) -> None:
        if header["kind"] != "output":
            return
        key = (header["stream"], header["layer"])
        last = self._last.get(key)
        continued = last is not None and last[0] == header["session"]
        if continued and last and header["seq"] != last[1] + 1 and not header.get("discontinuity"):
            self.gaps[key] += 1
        self._last[key] = (header["session"], header["seq"])

    def _track_end(self, header: dict[str, Any]) -> None:
        """Count eos per layer of the stream's current session (the latest one with output)."""
        if self.stream is None or header["stream"] != self.stream:
            return
        if header["layer"] == INPUT:
            return  # the input preview has no eos of its own: the stream ends with its layers
        session, layer = header["session"], header["layer"]
        if header["kind"] == "output":
            if session != self._session:  # a new session: its layers start over
                self._session, self._seen, self._ended = session, set(), set()
            self._seen.add(layer)
            self._ended.discard(layer)  # output after an idle eos: the layer is live again
            return
        if self._session is None:  # eos before any output: that session ended
            self._session = session
        if session == self._session:  # an eos of an earlier session leaves this one alone
            self._seen.add(layer)
            self._ended.add(layer)

    def __iter__(self) -> Iterator[Message]:
        """Every output and eos (frame None); ends when `ended` (only with a `stream`)."""
        while not self.ended:
            yield self.recv()

    def wait_ready(self, input_endpoint: str, timeout_s: float = 30.0) -> None:
        """Block until the worker's outputs reach this subscriber.

        PUB/SUB subscriptions take a moment to propagate, and messages published before then
        are lost to this subscriber. This sends eos probes on a private stream through the
        worker until one comes back, so everything published afterwards arrives.
        """
        probe = protocol.stream_topic(PROBE_STREAM)
        self.shm.prepare(self.sock, self._topics)  # before the probe's topic: see shared.py
        transport.subscribe(self.sock, probe)
        push = transport.push_socket(self._ctx, input_endpoint, linger_ms=0, **self._keys)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                transport.send(
                    push, protocol.encode_eos(PROBE_STREAM, uuid.uuid4().hex, 0), block=False
                )
                frames = transport.recv(self.sock, 100)
                if frames is not None and bytes(frames[0].buffer).startswith(probe):
                    self.shm.settle(self.sock, self._topics, frames)
                    return
            msg = f"worker at {input_endpoint} did not answer within {timeout_s} s"
            raise TimeoutError(msg)
        finally:
            transport.close(push, 0)
            transport.unsubscribe(self.sock, probe)

    def close(self) -> None:
        if self.acker is not None:
            self.acker.close()
        self.shm.close()
        if self._watch is not None:
            self._watch.close()
        transport.close(self.sock, 0)
        self._term()

    def _term(self) -> None:
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


def _topics(stream: str | None, layers: set[str], previews: Previews) -> list[bytes]:
    """The topic prefixes to subscribe to. No stream: every topic (layer filtering, if any,
    happens in poll: topics are prefixes)."""
    if stream is None:
        outputs = [b""]
    elif layers:
        outputs = [protocol.topic(stream, x) for x in sorted(layers)]
    else:
        outputs = [protocol.stream_topic(stream)]
    # The worker makes previews only for subscriptions that name them ("everything" does not).
    prefix = PREVIEW_PREFIX.encode()
    if previews == "only":
        return [prefix + t for t in outputs]
    if previews == "input":  # every stream's: the layers' previews too, skipped in poll
        return [*outputs, protocol.preview_topic(stream, INPUT) if stream else prefix]
    return outputs
