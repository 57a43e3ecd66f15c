"""The worker role: PULL frames -> decode -> engine -> publisher -> PUB.

`Worker(settings).run()` does startup(), serve(), shutdown(). Bad input never stops it: each
bad message is dropped with one log line naming the reason and counted. SIGTERM/SIGINT only
set a flag; the loop polls with a short timeout, finishes the chunks in hand and exits.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

import zmq

from streamconv.config import Settings
from streamconv.errors import ProtocolError, StartupError, StreamconvError
from streamconv.model import (
    DTYPES,
    build_model,
    configure_torch,
    input_channels,
    resolve_device,
)
from streamconv.wire import transport
from streamconv.wire.protocol import decode_input
from streamconv.worker.engine import Engine, Result
from streamconv.worker.publisher import Publisher

log = logging.getLogger(__name__)

POLL_MS = 50  # how quickly a stop request is noticed when no input arrives
BATCH = 256  # messages drained per wake-up before partial chunks are checked
MAX_DROP_KINDS = 64  # distinct drop reasons counted before the rest go under "other"
SHUTDOWN_LINGER_MS = 2000  # time to deliver the outputs flushed at shutdown


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.dropped: Counter[str] = Counter()
        self.engine: Engine | None = None
        self.publisher: Publisher | None = None
        self._ctx: transport.Context | None = None
        self._pull: transport.Socket | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        restore = self._install_signals()  # before startup: a signal then ends it cleanly
        try:
            self.startup()
            self.serve()
        finally:
            restore()
            self.shutdown()

    def startup(self) -> None:
        w = self.settings.worker
        configure_torch(w)
        device = resolve_device(w.device)
        model = build_model(self.settings, device)
        publish = [spec.name for spec in self.settings.layers if spec.publish]
        self.engine = Engine(
            model,
            device=device,
            dtype=DTYPES[w.dtype],
            chunk=w.chunk,
            max_wait_s=w.max_wait_ms / 1000,
            color=w.color,
            in_channels=input_channels(w),
            max_streams=w.max_streams,
            publish=publish,
            output_dtype=w.output_dtype,
        )
        self._ctx = zmq.Context()
        try:
            # The socket limit is a backstop (a larger part disconnects its sender); the
            # configured limit itself is checked per message below, so it is counted.
            self._pull = transport.pull_socket(
                self._ctx, w.input, hwm=w.input_hwm, max_msg_bytes=2 * w.max_message_bytes
            )
            pub = transport.pub_socket(self._ctx, w.output, hwm=w.output_hwm)
        except zmq.ZMQError as e:
            self._ctx.destroy(linger=0)
            msg = f"cannot bind worker sockets ({w.input}, {w.output}): {e}"
            raise StartupError(msg) from e
        self.publisher = Publisher(pub, publish, w.output_dtype)
        log.info(
            "worker ready on input %s output %s (layers: %s)",
            transport.endpoint(self._pull),
            transport.endpoint(pub),
            ", ".join(publish),
        )

    def _started(self) -> tuple[Engine, Publisher, transport.Socket]:
        if self.engine is None or self.publisher is None or self._pull is None:
            msg = "call startup() before serve()"
            raise StreamconvError(msg)
        return self.engine, self.publisher, self._pull

    def serve(self) -> None:
        engine, publisher, pull = self._started()
        last_evict = time.monotonic()
        while not self.stop_event.is_set():
            deadline = engine.next_deadline()
            timeout = POLL_MS
            if deadline is not None:
                timeout = max(0, min(POLL_MS, int((deadline - time.monotonic()) * 1000) + 1))
            if pull.poll(timeout, zmq.POLLIN):
                for _ in range(BATCH):
                    try:
                        parts = pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    publisher.publish(self._handle(parts))
            now = time.monotonic()
            publisher.publish(self._guard(engine.due, now))
            if now - last_evict > 1.0:
                last_evict = now
                idle_s = self.settings.worker.idle_timeout_s
                publisher.publish(self._guard(engine.evict_idle, now, idle_s))

    def _handle(self, parts: list[zmq.Frame]) -> list[Result]:
        size = sum(len(p) for p in parts)
        limit = self.settings.worker.max_message_bytes
        if size > limit:
            self._drop(f"message of {size} bytes exceeds max_message_bytes {limit}")
            return []
        try:
            msg = decode_input([p.buffer for p in parts])
        except ProtocolError as e:
            self._drop(str(e))
            return []
        except Exception as e:  # a decoder bug must not take the daemon down with it
            if not self.dropped[f"undecodable message: {type(e).__name__}"]:
                log.exception("decoder failed on a message")  # the traceback, once per kind
            self._drop(f"undecodable message: {type(e).__name__}")
            return []
        engine = self._started()[0]
        return self._guard(engine.submit, msg, time.monotonic())

    def _guard(self, step: Callable[..., list[Result]], *args: Any) -> list[Result]:
        """Run an engine step; its errors and failed chunks become counted drops."""
        try:
            results = step(*args)
        except StreamconvError as e:
            self._drop(str(e))
            results = []
        if self.engine is not None:
            for reason in self.engine.take_failures():
                self._drop(reason)
        return results

    def _drop(self, reason: str) -> None:
        # Count by kind of fault, not by the offending value, so the counter stays small.
        kind = re.sub(r"\d+", "N", reason.split(", got ")[0].split(": ")[0])[:80]
        if kind not in self.dropped and len(self.dropped) >= MAX_DROP_KINDS:
            kind = "other"
        self.dropped[kind] += 1
        log.warning("dropped input: %s (%d dropped so far)", reason, sum(self.dropped.values()))

    def shutdown(self) -> None:
        log.info("shutting down")
        if self.engine is not None and self.publisher is not None:
            self.publisher.publish(self._guard(self.engine.flush_all))
            stats = dict(self.engine.stats)
            log.info("worker stats: %s; dropped: %s", stats, dict(self.dropped) or "none")
        if self.publisher is not None:
            # PUB sends are asynchronous: linger 0 would discard the outputs just flushed.
            transport.close(self.publisher.sock, SHUTDOWN_LINGER_MS)
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
        log.info("worker stopped")

    def _install_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop_event.set()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore
