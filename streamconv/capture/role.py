"""The capture role: frames from a source, pushed to a worker by a client.Sender.

Modes (the Sender implements them; this role picks one and paces the source):
- lossless: every frame is queued. A send waits while the PUSH queue (SNDHWM) is full, so the
  worker's pace becomes the capture's pace; the wait is a short poll loop so a stop request
  is still honoured.
- live: a frame that cannot be queued at once is dropped and counted, so latency stays low.
  Drops are logged at the end and returned in the stats, never silent.
- auto: live for webcams and URLs, lossless for files, images and synthetic sources.

Before frame 0 the capture waits (up to `wait_s`, 0 = forever) for a worker to complete the
connection, and with `wait_subscriber` for the worker to report a subscriber of the stream;
either wait running out is a StartupError (exit code 3). Sequence numbers count frames
actually queued: 0, 1, 2, ... with no gaps in either mode. A frame dropped in live mode takes
no number, because the worker treats a gap in seq as lost data and resets the stream's state;
t_ns still carries each frame's true capture time. The closing eos carries seq = frames
queued. SIGINT and SIGTERM end a run cleanly (eos, summary). This module never imports torch.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamconv import health
from streamconv.capture import http as capture_http
from streamconv.capture.sources import Size, Source, open_source
from streamconv.client.sender import (
    DEFAULT_ENDPOINT,
    DEFAULT_LINGER_MS,
    DEFAULT_OUTPUT,
    DEFAULT_QUEUE,
    Sender,
)
from streamconv.config import CaptureSettings
from streamconv.config.roles import derive_output
from streamconv.errors import AuthError, ConfigError, ProtocolError, RefusedError, StartupError
from streamconv.httpserver import HttpServer
from streamconv.signals import on_stop
from streamconv.wire import protocol
from streamconv.wire.shards import owner, parse_shards, resolve

log = logging.getLogger(__name__)

MODES = ("lossless", "live", "auto")
REROUTE_S = 10.0  # with dns:// shards: resolve again after a worker this long silent
GLOB_CHARS = "*?["


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """What one run did; `stopped` is True when stop() or a signal ended it early.

    `sent` counts frames queued (delivery cannot be known), `dropped` live frames not queued,
    of which `dropped_no_worker` while no worker was connected; `disconnects` counts the times
    the worker's connection closed mid-run; `drained` is False when the queue had not drained
    when the socket's linger ran out (None: unknown, nothing was sent).
    """

    sent: int
    dropped: int
    seconds: float
    stopped: bool = False
    eos_sent: bool = True
    dropped_no_worker: int = 0
    disconnects: int = 0
    drained: bool | None = None


def derive_stream(spec: str) -> str:
    """A stream id from a source spec: '0' -> 'cam0', 'clips/a b.mp4' -> 'a_b',
    'frames/*.png' -> 'frames' (a glob is named after the folder it searches)."""
    if spec.isdigit():
        return f"cam{spec}"
    if spec.startswith("synthetic"):
        return "synthetic"
    if "://" in spec:
        rest = spec.split("://", 1)[1]
        segments = [s for s in re.split(r"[/?#]", rest) if s]
        name = segments[-1] if segments else ""
    elif any(c in spec for c in GLOB_CHARS) and not Path(spec).expanduser().exists():
        name = _glob_folder(spec)
    else:
        name = Path(spec.rstrip("/")).stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
    return name or "cam0"


def _glob_folder(spec: str) -> str:
    """The name of the deepest folder of a glob before its first wildcard: 'a/frames/*.png'
    -> 'frames', '*.png' -> the current folder's name; 'images' at the file system root."""
    path = Path(spec).expanduser()
    parts = path.parts
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    folder = Path(*parts[:fixed]) if fixed else Path()
    return folder.resolve().name or "images"


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
    at the source fps (live sources pace themselves). `queue_size` is the PUSH SNDHWM. `wait_s`
    bounds the waits for a worker, for its return after a disconnect (lossless), and, with
    `wait_subscriber`, for a subscriber of the stream on the worker's `output` (0: forever).
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
        wait_s: float = 30.0,
        output: str | None = None,
        resume: bool = True,
        wait_subscriber: bool = False,
        curve_secret: Path | None = None,
        curve_server: Path | None = None,
        shards: list[str] | None = None,
    ) -> None:
        if mode not in MODES:
            msg = f"capture mode must be one of {MODES}, got {mode!r}"
            raise ConfigError(msg)
        if queue_size is not None and queue_size < 1:
            msg = f"queue size must be >= 1, got {queue_size}"
            raise ConfigError(msg)
        if wait_s < 0:
            msg = f"wait must be >= 0 seconds (0: forever), got {wait_s}"
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
        self.endpoint = endpoint
        self.shards = parse_shards(shards or [])
        if self.shards:  # the stream's owner among the workers (wire/shards.py)
            try:
                self._route(resolve(self.shards))
            except ConfigError:
                if not any(x.startswith("dns://") for x in self.shards):
                    raise
                # A service with no pod yet does not resolve: run() tries again until wait_s.
                log.warning("capture: shards %s do not resolve yet", ", ".join(self.shards))
        self.source: Source
        if isinstance(source, str):  # opened last, so a bad option above leaks nothing
            self.source = open_source(source, resize=resize, gray=gray, limit=limit, loop=loop)
        else:
            self.source = source
        self._owns_source = isinstance(source, str)
        self.mode = mode if mode != "auto" else ("live" if self.source.live else "lossless")
        self.queue_size = queue_size or DEFAULT_QUEUE[self.mode]
        self.linger_ms = DEFAULT_LINGER_MS[self.mode] if linger_ms is None else linger_ms
        self.realtime = realtime
        self.progress = progress
        self.eos_timeout_s = eos_timeout_s
        self.wait_s = wait_s
        # The output endpoint by convention (input port + 1) unless given: wait_subscriber and
        # lossless resume listen there.
        self.output = output or derive_output(self.endpoint) or DEFAULT_OUTPUT
        derivable = output is not None or derive_output(self.endpoint) is not None
        self.resume = resume and self.mode == "lossless" and derivable
        self.wait_subscriber = wait_subscriber
        self.keys = {"curve_secret": curve_secret, "curve_server": curve_server}
        self._stop = threading.Event()
        self.sender: Sender | None = None  # the sender of the current (or last) run
        self.http = "off"  # HOST:PORT of /healthz, /readyz, /metrics and /status
        self.health = health.Health(watch_loop=False)

    def _route(self, shards: list[str]) -> bool:
        """Send to the stream's owner among `shards`; True if that changed the endpoint."""
        target = owner(self.stream, shards)
        if target == self.endpoint:
            return False
        self.endpoint = target
        self.output = derive_output(target) or DEFAULT_OUTPUT
        log.info("stream %s -> shard %s (of %d)", self.stream, target, len(shards))
        return True

    def _reroute(self) -> tuple[str, str] | None:
        """(input, output) of the stream's owner under the shard list as it resolves now, if
        that is another worker; None to stay (the Sender asks while its worker is away)."""
        try:
            moved = self._route(resolve(self.shards))
        except ConfigError as e:  # the name may resolve again later
            log.warning("capture: %s; trying again", e)
            return None
        return (self.endpoint, self.output) if moved else None

    def _sender(self) -> tuple[Sender, bool]:
        """A Sender to the stream's worker, and whether a worker answered (False: stopped).

        With `dns://` shards, a worker that does not answer within REROUTE_S sends the capture
        to resolve the list again (pods come and go) and to try the owner under it, until
        `wait_s` (0: forever) has passed; then StartupError, as without shards."""
        dns = any(s.startswith("dns://") for s in self.shards)
        start = time.monotonic()
        while True:
            left = self.wait_s - (time.monotonic() - start) if self.wait_s else 0.0
            attempt = min(left, REROUTE_S) if self.wait_s else REROUTE_S
            sender = self.sender = Sender(
                self.endpoint, self.stream, self.mode, self.queue_size,
                attempt if dns else self.wait_s, self.source.fps, stop=self._stop,
                linger_ms=self.linger_ms, close_timeout_s=self.eos_timeout_s,
                resume_output=self.output if self.resume else None,
                resume_wait_subscriber=self.wait_subscriber,
                reroute=self._reroute if dns else None, **self.keys,
            )  # fmt: skip
            log.info("capture %s -> %s as stream %s (%s mode, queue %d)", self.source,
                     self.endpoint, self.stream, self.mode, self.queue_size)  # fmt: skip
            try:
                answered = sender.wait_worker()
            except AuthError:
                sender.close()
                raise
            except StartupError:
                sender.close()
                out_of_time = self.wait_s and time.monotonic() - start >= self.wait_s
                if not dns or out_of_time:
                    raise
                try:
                    self._route(resolve(self.shards))
                except ConfigError as e:  # the name may resolve again later
                    log.warning("capture: %s; trying again", e)
                continue
            sender.wait_s = self.wait_s  # for the rest of the run: a lost worker, as usual
            return sender, answered

    @classmethod
    def from_settings(cls, s: CaptureSettings, progress: bool = False) -> Capture:
        capture = cls(**capture_kwargs(s, progress))
        capture.http = s.http
        return capture

    @property
    def session(self) -> str | None:
        return None if self.sender is None else self.sender.session

    def stop(self) -> None:
        """Ask run() to finish: it sends eos and returns. Safe from any thread."""
        self._stop.set()

    def run(self) -> CaptureStats:
        """Wait for a worker (and a subscriber, if asked), send every frame (or until stopped),
        then eos; every wait is bounded. Raises StartupError if nobody answers in time."""
        restore = on_stop(lambda signum: self._stop.set())  # flags only
        start = time.monotonic()
        http = None
        try:
            http = self._serve_http()  # before the waits: /healthz answers while they last
            sender, answered = self._sender()
            self.health.phase = "ready" if answered else "stopping"
            with sender:
                if answered and (not self.wait_subscriber or sender.wait_subscriber(self.output)):
                    self._pump(sender)
                if self._stop.is_set():
                    log.info("capture: stop requested, finishing")
        finally:
            self.health.phase = "stopping"
            if http is not None:
                http.stop()
            restore()
            if self._owns_source:
                self.source.close()
        seconds = time.monotonic() - start
        stopped = self._stop.is_set()
        log.info("capture: %s", sender.summary(seconds))
        dropped = sender.dropped_by_worker
        if dropped and self.mode == "lossless":  # said at the end when sending was quicker
            raise RefusedError(sender.endpoint, self.stream, dropped)
        return CaptureStats(
            sender.sent,
            sender.dropped,
            seconds,
            stopped,
            sender.eos_sent,
            sender.dropped_no_worker,
            sender.disconnects,
            sender.drained,
        )

    def _serve_http(self) -> HttpServer | None:
        """/healthz, /readyz, /metrics and /status on `http` ('off': none; capture/http.py)."""
        return capture_http.serve(self)

    def _pump(self, sender: Sender) -> None:
        fps = self.source.fps
        pace = self.realtime and not self.source.live and fps is not None
        if self.realtime and fps is None:
            log.warning("capture: source has no fps, realtime pacing is off")
        bar = _Progress(self.progress, self.source.length)
        t0 = time.monotonic()
        offered = 0
        try:
            for index, frame in enumerate(self.source):
                if pace and fps is not None:
                    delay = t0 + index / fps - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                if self._stop.is_set():
                    break
                if not sender.send(frame, protocol.now_ns()) and sender.mode == "lossless":
                    break  # stopped while waiting for room
                offered += 1
                bar.update(offered)
        finally:
            bar.finish(offered)


def capture_kwargs(s: CaptureSettings, progress: bool = False) -> dict[str, Any]:
    """Capture() keyword arguments from validated settings."""
    if s.source is None:
        msg = "a capture needs a source (capture.source, or the SOURCE argument)"
        raise ConfigError(msg)
    if s.shards and "endpoint" in s.connect.model_fields_set:
        msg = "give the worker's endpoint (--connect) or the shards (--shards), not both"
        raise ConfigError(msg)
    return {
        "source": s.source,
        "stream": s.stream,
        "endpoint": s.connect.endpoint,
        "mode": s.mode,
        "resize": s.resize,
        "gray": s.gray,
        "limit": s.limit,
        "loop": s.loop,
        "realtime": s.realtime,
        "queue_size": s.connect.hwm or None,
        "progress": progress,
        "wait_s": s.wait_s,
        "output": s.output,
        "resume": s.resume,
        "wait_subscriber": s.wait_subscriber,
        "curve_secret": s.connect.curve_secret,
        "curve_server": s.connect.curve_server,
        "shards": s.shards,
    }
