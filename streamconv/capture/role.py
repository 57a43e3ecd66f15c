"""The capture role: frames from a source, encoded by the protocol, pushed to a worker.

Modes:
- lossless: every frame is delivered. A send waits while the PUSH queue (SNDHWM) is full, so
  the worker's pace becomes the capture's pace; the wait is a short poll loop so a stop request
  is still honoured.
- live: a frame that cannot be queued at once is dropped and counted, so latency stays low.
  Drops are logged at the end and returned in the stats, never silent.
- auto: live for webcams and URLs, lossless for files, images and synthetic sources.

Sequence numbers count frames actually sent: 0, 1, 2, ... with no gaps in either mode. A frame
dropped in live mode takes no number, because the worker treats a gap in seq as lost data and
resets the stream's state; t_ns still carries each frame's true capture time. The closing eos
carries seq = frames sent. This module never imports torch.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from streamconv.capture.sources import Size, Source, open_source
from streamconv.config import CaptureSettings
from streamconv.errors import ConfigError, ProtocolError
from streamconv.logs import configure as configure_logging
from streamconv.wire import protocol, transport

log = logging.getLogger(__name__)

MODES = ("lossless", "live", "auto")
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_QUEUE = {"lossless": 8, "live": 2}
DEFAULT_LINGER_MS = {"lossless": 5000, "live": 1000}
POLL_MS = 100
STALL_WARN_S = 5.0  # a lossless send blocked this long is reported once
STOP_WAIT_MS = 1000  # after a stop request: the most time spent on eos, then on linger


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """What one run did; `stopped` is True when stop() or a signal ended it early."""

    sent: int
    dropped: int
    seconds: float
    stopped: bool = False
    eos_sent: bool = True


def derive_stream(spec: str) -> str:
    """A stream id from a source spec: '0' -> 'cam0', 'clips/a b.mp4' -> 'a_b'."""
    if spec.isdigit():
        return f"cam{spec}"
    if spec.startswith("synthetic"):
        return "synthetic"
    if "://" in spec:
        rest = spec.split("://", 1)[1]
        segments = [s for s in re.split(r"[/?#]", rest) if s]
        name = segments[-1] if segments else ""
    else:
        name = Path(spec.rstrip("/")).stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
    return name or "cam0"


class _Progress:
    """A one-line bar on stderr, only on a terminal and only when the length is known."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.total = total if total else None
        self.enabled = enabled and self.total is not None and sys.stderr.isatty()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or self.total is None or (now - self._last < 0.1 and not force):
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\rcapture {done}/{self.total} [{bar:<30}] {frac:4.0%}")
        sys.stderr.flush()

    def finish(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            sys.stderr.write("\n")


class Capture:
    """Push the frames of `source` (a spec for open_source, or a Source) to `endpoint`.

    `resize`, `gray`, `limit` and `loop` apply when `source` is a spec. `realtime` paces sends
    at the source fps (live sources pace themselves). `queue_size` is the PUSH SNDHWM.
    Shutdown is bounded by `eos_timeout_s` (waiting to queue the eos) plus `linger_ms` (letting
    queued frames drain). Call run() once: it closes a source it opened.
    """

    def __init__(
        self,
        source: str | Source,
        *,
        stream: str | None = None,
        endpoint: str = DEFAULT_ENDPOINT,
        mode: str = "auto",
        resize: Size | None = None,
        gray: bool = False,
        limit: int | None = None,
        loop: bool = False,
        realtime: bool = False,
        queue_size: int | None = None,
        progress: bool = False,
        linger_ms: int | None = None,
        eos_timeout_s: float = 5.0,
    ) -> None:
        if mode not in MODES:
            msg = f"capture mode must be one of {MODES}, got {mode!r}"
            raise ConfigError(msg)
        if queue_size is not None and queue_size < 1:
            msg = f"queue size must be >= 1, got {queue_size}"
            raise ConfigError(msg)
        spec_options = resize is not None or gray or limit is not None or loop
        if not isinstance(source, str) and spec_options:
            msg = "resize, gray, limit and loop apply to a source spec; set them on the Source"
            raise ConfigError(msg)
        default_stream = derive_stream(source) if isinstance(source, str) else "cam0"
        try:
            self.stream = protocol.check_name(stream or default_stream, "stream id")
        except ProtocolError as e:
            msg = f"{e}: pick another stream id"
            raise ConfigError(msg) from e
        self.source: Source
        if isinstance(source, str):  # opened last, so a bad option above leaks nothing
            self.source = open_source(source, resize=resize, gray=gray, limit=limit, loop=loop)
        else:
            self.source = source
        self._owns_source = isinstance(source, str)
        self.endpoint = endpoint
        self.mode = mode if mode != "auto" else ("live" if self.source.live else "lossless")
        self.queue_size = queue_size or DEFAULT_QUEUE[self.mode]
        self.linger_ms = DEFAULT_LINGER_MS[self.mode] if linger_ms is None else linger_ms
        self.realtime = realtime
        self.progress = progress
        self.eos_timeout_s = eos_timeout_s
        self.session = protocol.new_session()
        self._stop = threading.Event()
        self.sent = self.dropped = 0

    def stop(self) -> None:
        """Ask run() to finish: it sends eos and returns. Safe from any thread."""
        self._stop.set()

    def run(self) -> CaptureStats:
        """Send every frame (or until stopped), then eos; close the socket with a bounded linger."""
        restore = self._install_signals()
        ctx: transport.Context = zmq.Context()
        start = time.monotonic()
        eos_sent = False
        self.session, self.sent, self.dropped = protocol.new_session(), 0, 0
        try:
            try:
                sock = transport.push_socket(
                    ctx, self.endpoint, hwm=self.queue_size, linger_ms=self.linger_ms
                )
            except zmq.ZMQError as e:
                msg = f"cannot connect to {self.endpoint!r}: {e} (write e.g. tcp://HOST:PORT)"
                raise ConfigError(msg) from e
            log.info(
                "capture %s -> %s as stream %s (%s mode, queue %d)",
                self.source,
                self.endpoint,
                self.stream,
                self.mode,
                self.queue_size,
            )
            try:
                self._pump(sock)
            finally:
                eos_sent = self._send_eos(sock)
                # Once asked to stop, do not hold on to unsent frames for long.
                stopping = self._stop.is_set()
                transport.close(sock, min(self.linger_ms, STOP_WAIT_MS) if stopping else None)
        finally:
            ctx.term()  # bounded: every socket was closed with a finite linger
            restore()
            if self._owns_source:
                self.source.close()
        seconds = time.monotonic() - start
        stopped = self._stop.is_set()
        log.info(
            "capture: sent %d, dropped %d (%s mode) in %.2f s%s",
            self.sent,
            self.dropped,
            self.mode,
            seconds,
            " (stopped)" if stopped else "",
        )
        return CaptureStats(self.sent, self.dropped, seconds, stopped, eos_sent)

    def _pump(self, sock: transport.Socket) -> None:
        fps = self.source.fps
        pace = self.realtime and not self.source.live and fps is not None
        if self.realtime and fps is None:
            log.warning("capture: source has no fps, realtime pacing is off")
        bar = _Progress(self.progress, self.source.length)
        t0 = time.monotonic()
        for index, frame in enumerate(self.source):
            if pace and fps is not None:
                delay = t0 + index / fps - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            if self._stop.is_set():
                break
            parts = protocol.encode_frame(
                self.stream, self.session, self.sent, frame, protocol.now_ns(), fps
            )
            if self.mode == "live":
                if transport.send(sock, parts, block=False):
                    self.sent += 1
                else:
                    self.dropped += 1
            elif self._send_lossless(sock, parts):
                self.sent += 1
            else:
                break
            bar.update(self.sent + self.dropped)
        bar.finish(self.sent + self.dropped)
        if self._stop.is_set():
            log.info("capture: stop requested, finishing")

    def _send_lossless(self, sock: transport.Socket, parts: list[Any]) -> bool:
        waited_since = time.monotonic()
        warned = False
        while not self._stop.is_set():
            if transport.wait_writable(sock, POLL_MS) and transport.send(sock, parts, block=False):
                return True
            if not warned and time.monotonic() - waited_since > STALL_WARN_S:
                warned = True
                log.warning(
                    "capture: %s has taken no frame for %.0f s; still waiting (is the worker up?)",
                    self.endpoint,
                    STALL_WARN_S,
                )
        return False

    def _send_eos(self, sock: transport.Socket) -> bool:
        parts = protocol.encode_eos(self.stream, self.session, seq=self.sent)
        wait_s = self.eos_timeout_s
        if self._stop.is_set():
            wait_s = min(wait_s, STOP_WAIT_MS / 1000)
        deadline = time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline:
                if transport.wait_writable(sock, POLL_MS) and transport.send(
                    sock, parts, block=False
                ):
                    return True
        except zmq.ZMQError as e:
            log.warning("capture: could not send eos: %s", e)
            return False
        log.warning("capture: eos not queued within %.1f s; is the worker up?", wait_s)
        return False

    def _install_signals(self) -> Callable[[], None]:
        """SIGINT/SIGTERM set the stop flag; only the main thread may install handlers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, handler) for s in sigs}

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)

        return restore


def capture_kwargs(s: CaptureSettings, progress: bool = False) -> dict[str, Any]:
    """Capture() keyword arguments from validated settings (the CLI and `run` share them)."""
    return {
        "source": s.source,
        "stream": s.stream,
        "endpoint": s.connect,
        "mode": s.mode,
        "resize": s.resize,
        "gray": s.gray,
        "limit": s.limit,
        "loop": s.loop,
        "realtime": s.realtime,
        "queue_size": s.queue,
        "progress": progress,
    }


def capture_main(settings: CaptureSettings, level: int) -> None:
    """Child process entry: push every frame of the source, then eos."""
    configure_logging(level)
    Capture(**capture_kwargs(settings)).run()
