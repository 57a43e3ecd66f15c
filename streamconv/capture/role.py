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

from pydantic import ValidationError

from streamconv import health
from streamconv.capture import http as capture_http
from streamconv.capture.sources import Source, open_source
from streamconv.client import routing
from streamconv.client.routing import DEFAULT_OUTPUT, Router
from streamconv.client.sender import Sender
from streamconv.client.sockets import endpoint_error
from streamconv.config import CaptureSettings
from streamconv.config.roles import derive_output
from streamconv.errors import AuthError, ConfigError, RefusedError, StartupError
from streamconv.httpserver import HttpServer
from streamconv.signals import on_stop
from streamconv.wire import protocol

log = logging.getLogger(__name__)

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
    """Push the frames of a source to the worker, as `settings` say; call run() once (it closes
    a source it opened).

    The source is `settings.source` (a spec for open_source; resize, gray, limit and loop apply
    to it), or a Source object given as `source`. `Capture(spec_or_source, **keywords)` is the
    shorthand for scripts: the keywords are capture_settings'. `realtime` paces sends at the
    source fps (live sources pace themselves). `wait_s` bounds the waits for a worker, for its
    return after a disconnect (lossless), and, with `wait_subscriber`, for a subscriber of the
    stream on the worker's `output` (0: forever).
    """

    def __init__(
        self,
        settings: CaptureSettings | str | Source,
        /,
        source: Source | None = None,
        *,
        progress: bool = False,
        **options: Any,
    ) -> None:
        if not isinstance(settings, CaptureSettings):  # the shorthand
            spec = settings if isinstance(settings, str) else None
            source = None if isinstance(settings, str) else settings
            settings = capture_settings(spec, **options)
        elif options:
            msg = f"Capture(settings) takes no keywords of the shorthand, got {sorted(options)}"
            raise TypeError(msg)
        s = self.settings = _checked(settings, source)
        default_stream = derive_stream(s.source) if s.source is not None else "cam0"
        self.stream = s.stream or default_stream
        self.router = self._router() if s.shards else None
        # Opened last, so a bad option above leaks nothing.
        self._owns_source = source is None
        self.source = (
            source
            if source is not None
            else open_source(
                str(s.source), resize=s.resize, gray=s.gray, limit=s.limit, loop=s.loop
            )
        )
        self.mode = s.mode if s.mode != "auto" else ("live" if self.source.live else "lossless")
        self.queue_size = s.connect.for_mode(self.mode).hwm
        self.progress = progress
        self.wait_s, self.wait_subscriber, self.http = s.wait_s, s.wait_subscriber, s.http
        self.realtime = s.realtime
        # The output endpoint by convention (input port + 1) unless given: wait_subscriber and
        # lossless resume listen there.
        derivable = s.output is not None or derive_output(self.endpoint) is not None
        self.resume = s.resume and self.mode == "lossless" and derivable
        self._stop = threading.Event()
        self.sender: Sender | None = None  # the sender of the current (or last) run
        self.health = health.Health(watch_loop=False)

    def _router(self) -> Router:
        """The stream's owner among the shards (client/routing.py)."""
        s = self.settings
        router = Router(self.stream, s.shards, s.connect.endpoint, self._output(s.connect.endpoint))
        try:
            router.route()
        except ConfigError:
            if not router.dns:
                raise
            # A service with no pod yet does not resolve: run() tries again until wait_s.
            log.warning("capture: shards %s do not resolve yet", ", ".join(router.shards))
        return router

    def _output(self, endpoint: str) -> str:
        return self.settings.output or derive_output(endpoint) or DEFAULT_OUTPUT

    @property
    def endpoint(self) -> str:
        """The worker's input: the stream's shard owner's, or `connect`'s."""
        return self.settings.connect.endpoint if self.router is None else self.router.endpoint

    @property
    def output(self) -> str:
        """The worker's output: the shard owner's, `output`, or the input's port + 1."""
        return self._output(self.endpoint) if self.router is None else self.router.output

    def _sender(self) -> tuple[Sender, bool]:
        """A Sender to the stream's worker, and whether a worker answered (False: stopped).

        With `dns://` shards, a worker that does not answer within REROUTE_S sends the capture
        to resolve the list again (pods come and go) and to try the owner under it, until
        `wait_s` (0: forever) has passed; then StartupError, as without shards."""
        router = self.router if self.router is not None and self.router.dns else None
        start = time.monotonic()
        while True:
            left = self.wait_s - (time.monotonic() - start) if self.wait_s else 0.0
            attempt = min(left, routing.REROUTE_S) if self.wait_s else routing.REROUTE_S
            socket = self.settings.connect.model_copy(update={"endpoint": self.endpoint})
            sender = self.sender = Sender(
                socket, self.stream, self.mode, attempt if router else self.wait_s,
                self.source.fps, stop=self._stop, router=router,
                resume_output=self.output if self.resume else None,
                resume_wait_subscriber=self.wait_subscriber,
            )  # fmt: skip
            log.info("capture %s -> %s as stream %s (%s mode, queue %d)", self.source,
                     self.endpoint, self.stream, self.mode, sender.queue)  # fmt: skip
            try:
                answered = sender.wait_worker()
            except AuthError:
                sender.close()
                raise
            except StartupError:
                sender.close()
                out_of_time = self.wait_s and time.monotonic() - start >= self.wait_s
                if router is None or out_of_time:
                    raise
                router.try_route()
                continue
            sender.wait_s = self.wait_s  # for the rest of the run: a lost worker, as usual
            return sender, answered

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
                taken = getattr(self.source, "capture_time", lambda: None)() or protocol.now_ns()
                if not sender.send(frame, taken) and sender.mode == "lossless":
                    break  # stopped while waiting for room
                offered += 1
                bar.update(offered)
        finally:
            bar.finish(offered)


_SOCKET_KEYWORDS = {"endpoint": "endpoint", "queue_size": "hwm", "linger_ms": "linger_ms",
                    "curve_secret": "curve_secret", "curve_server": "curve_server"}  # fmt: skip


def capture_settings(source: str | None = None, **options: Any) -> CaptureSettings:
    """Settings from the shorthand's keywords (None: the default): CaptureSettings' fields, and
    for its connect socket endpoint, queue_size, linger_ms, curve_secret and curve_server."""
    given = {k: v for k, v in options.items() if v is not None}
    connect = {_SOCKET_KEYWORDS[k]: given.pop(k) for k in list(given) if k in _SOCKET_KEYWORDS}
    try:
        return CaptureSettings.model_validate({"source": source, **given, "connect": connect})
    except ValidationError as e:
        err = e.errors()[0]
        if err["loc"][-1] == "endpoint":
            raise endpoint_error(str(err["input"]), e) from e
        why = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg'].removeprefix('Value error, ')}"
                        for x in e.errors())  # fmt: skip
        raise ConfigError(f"capture settings: {why}") from e


def _checked(s: CaptureSettings, source: Source | None) -> CaptureSettings:
    """`s`, if it makes a runnable capture: what the settings alone cannot know."""
    if s.source is None and source is None:
        msg = "a capture needs a source (capture.source, or the SOURCE argument)"
        raise ConfigError(msg)
    if source is not None and (s.resize is not None or s.gray or s.limit is not None or s.loop):
        msg = "resize, gray, limit and loop apply to a source spec; set them on the Source"
        raise ConfigError(msg)
    if s.shards and "endpoint" in s.connect.model_fields_set:
        msg = "give the worker's endpoint (--connect) or the shards (--shards), not both"
        raise ConfigError(msg)
    return s
