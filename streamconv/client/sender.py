"""Send frames to a worker from any process: `Sender`, as simple as imagezmq's ImageSender.

    from streamconv.client import Sender

    with Sender("tcp://127.0.0.1:5555", stream="cam0", mode="live", fps=30.0) as sender:
        for frame in frames:              # numpy (H, W) or (H, W, C): uint8, uint16 or float32
            if not sender.send(frame):    # False: live mode dropped it (or stop() was called)
                pass
    print(sender.summary())               # queued, dropped, and whether the worker stayed

The first send waits (up to `wait_s`, 0 = forever) until a worker has completed the ZeroMQ
handshake, and raises StartupError if none does: a PUSH socket accepts frames whether or not
anyone is at the other end, so without this a sender could queue into the void. `close()`
(or leaving the `with` block) queues the end of stream (eos, seq = frames sent) and waits a
bounded time for the queue to drain.

Modes (docs/PROTOCOL.md):
- lossless: a send waits while the queue (`queue` frames, the PUSH high-water mark) is full,
  so the worker's pace becomes the sender's. If the worker goes away, a send waits up to
  `wait_s` for it to come back, then raises WorkerLostError.
- live: a frame that cannot be queued at once is dropped and counted (`dropped`), and so is
  every frame offered while no worker is connected (also counted in `dropped_no_worker`).

Sequence numbers count frames actually queued: a dropped frame takes no number, so the worker
sees no gap (a gap would reset the stream's state). Delivery is never claimed: ZeroMQ says when
a frame is queued, not when the worker has it. What the sender does know, and reports, is
whether the worker's connection held, and whether the queue drained before the socket closed.
`stop()` (or setting the `stop` event passed in, from any thread or a signal handler) makes a
waiting send return False promptly. A Sender is used by one thread; it never imports torch.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

import numpy as np

from streamconv.client import probe
from streamconv.client.link import POLL_MS, Link
from streamconv.client.lossless import Lossless
from streamconv.client.resend import Resender
from streamconv.client.routing import DEFAULT_OUTPUT, Router
from streamconv.client.sockets import SocketLike, client_socket, endpoint_error, with_loose
from streamconv.errors import ConfigError, ProtocolError, StreamconvError
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import PROBE_STREAM

log = logging.getLogger(__name__)

MODES = ("lossless", "live")
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
STALL_WARN_S = 5.0  # a lossless send blocked this long (worker connected) is logged once
STOP_WAIT_S = 1.0  # once stopped, or with the worker gone: the most time for eos, then linger


def _check(stream: str, mode: str, wait_s: float, fps: float | None) -> str:
    """The stream id, once the options are known good (a library user gives them loose)."""
    if mode not in MODES:
        msg = f"sender mode must be one of {MODES}, got {mode!r}"
        raise ConfigError(msg)
    if wait_s < 0 or (fps is not None and not fps > 0):
        msg = f"wait_s must be >= 0 (0: forever) and fps > 0, got {wait_s} and {fps}"
        raise ConfigError(msg)
    try:
        return protocol.check_name(stream, "stream id")
    except ProtocolError as e:
        msg = f"{e}: pick another stream id"
        raise ConfigError(msg) from e


class Sender:
    """Frames to the worker at `socket` as stream `stream`; see the module docstring.

    `socket` is a CaptureSocket (endpoint, hwm: frames queued before a send waits (lossless)
    or drops (live), linger_ms: how long close() lets them drain, CURVE keys), or just its
    endpoint. `fps` is the source's nominal rate, sent with every frame; `close_timeout_s`
    bounds the wait to queue the eos. Lossless with `resume_output` (the worker's output):
    frames a restarted worker lacks are sent again. `router`: sharded, where the stream goes
    when its worker is away (client/routing.py).
    """

    def __init__(
        self,
        socket: SocketLike = DEFAULT_ENDPOINT,
        stream: str = "cam0",
        mode: str = "lossless",
        wait_s: float = 30.0,
        fps: float | None = None,
        *,
        stop: threading.Event | None = None,
        close_timeout_s: float = 5.0,
        resume_output: str | None = None,
        resume_wait_subscriber: bool = False,
        router: Router | None = None,
        **loose: Any,
    ) -> None:
        self.stream = _check(stream, mode, wait_s, fps)
        self.socket = client_socket(with_loose(socket, loose), mode)
        self.endpoint, self.mode, self.fps = self.socket.endpoint, mode, fps
        self.queue, self.linger_ms = self.socket.hwm, self.socket.linger_ms
        self.close_timeout_s = close_timeout_s
        self.session = protocol.new_session()
        self.sent = 0  # frames queued, and the next frame's seq
        self._asked_again = False  # a resume found no answer: the next frame asks again
        self.dropped = 0  # live frames not queued, for any reason
        self.dropped_no_worker = 0  # of those, offered while no worker was connected
        self.eos_sent = False
        self.drained: bool | None = None  # after close: the queue emptied within the linger
        # After close, lossless with resume: the worker said it ran every frame and the eos.
        self.confirmed: bool | None = None
        self._linger_ms = self.linger_ms  # the linger close() used
        self._stop = stop if stop is not None else threading.Event()
        self._closed = False
        self._router = router
        self._ctx = transport.context()
        try:
            self.sock, watch = transport.open_watched(self._ctx, "push", self.socket)
        except (ValueError, transport.ZMQError) as e:
            self._ctx.term()
            raise endpoint_error(self.endpoint, e) from e
        except ConfigError:
            self._ctx.term()
            raise
        self._link = Link(watch, self.endpoint, mode, wait_s, self._stop, lambda: self.sent)
        self._resume_wait_subscriber = resume_wait_subscriber
        self._lossless = self._keep_for_resume(resume_output) if mode == "lossless" else None

    def _keep_for_resume(self, output: str | None) -> Lossless | None:
        """Lossless with the worker's output known: keep what a restarted worker may ask for."""
        if output is None:
            return None
        try:
            resender = Resender(self._ctx, output, self.stream, self.session,
                                **self.socket.client_keys())  # fmt: skip
        except (ValueError, transport.ZMQError) as e:
            self._lossless = None
            self.close()
            raise endpoint_error(output, e) from e
        return Lossless(resender, self.sock, self.stream, self._stop)

    # -- state ---------------------------------------------------------------------------------
    @property
    def wait_s(self) -> float:
        """How long to wait for a worker, first or back (0: forever); settable."""
        return self._link.wait_s

    @wait_s.setter
    def wait_s(self, value: float) -> None:
        self._link.wait_s = value

    @property
    def disconnects(self) -> int:
        """How often the worker's connection closed after it was first made."""
        return self._link.disconnects

    @property
    def connected(self) -> bool:
        """Whether a worker holds a completed connection right now."""
        return not self._closed and self._link.peers() > 0

    def stop(self) -> None:
        """Make a waiting (or any later) send return False; safe from any thread."""
        self._stop.set()

    # -- sending -------------------------------------------------------------------------------
    def wait_worker(self) -> bool:
        """Wait until a worker has completed the handshake: True; False if stopped first.

        Raises StartupError after `wait_s` (0: never). The first send() calls this.
        """
        self._check_open()
        if self._link.ready:
            return True
        if not self._link.wait_first():
            return False
        if self._lossless is not None and not self._lossless.path_works(self.endpoint):
            self._lossless.close()
            self._lossless = None
        return True

    def send(self, frame: np.ndarray, t_ns: int | None = None) -> bool:
        """Queue one frame (taken at `t_ns`, default now): True if queued.

        False when live mode dropped it or stop() was called. Raises ProtocolError for a frame
        the protocol cannot carry, StartupError if no worker answers (first send), and, in
        lossless mode, WorkerLostError if the worker went away and did not come back in time.
        """
        self._check_open()
        parts = self._encode(frame, t_ns)
        if self._stop.is_set() or not self.wait_worker():
            return False
        lossless = self._lossless
        if lossless is not None and not lossless.await_credit(self.sent, self._link.peers):
            return False
        queued = self._send_live(parts) if self.mode == "live" else self._send_lossless(parts)
        self.sent += queued
        if queued and self._lossless is not None:
            self._lossless.sent_one(self.sent - 1, parts, self.endpoint)
        return queued

    def _encode(self, frame: np.ndarray, t_ns: int | None) -> list[Any]:
        if not isinstance(frame, np.ndarray):
            msg = f"a frame must be a numpy array, got {type(frame).__name__}"
            raise ProtocolError(msg)
        if 0 in frame.shape:
            msg = f"frame shape {frame.shape} is empty: every size must be > 0"
            raise ProtocolError(msg)
        if frame.dtype == np.float32 and not np.isfinite(frame).all():
            # The worker would drop it; in lossless mode that is a gap that resets its state.
            msg = "float32 frame holds NaN or infinite values"
            raise ProtocolError(msg)
        return protocol.encode_frame(self.stream, self.session, self.sent, frame, t_ns, self.fps,
                                     lossless=self._lossless is not None,
                                     live=self.mode == "live")  # fmt: skip

    @property
    def dropped_by_worker(self) -> dict[str, int]:
        """Frames of this session the worker dropped, by reason (lossless with resume only:
        the worker says so in its probe answers)."""
        return dict(self._lossless.verdict) if self._lossless is not None else {}

    def _send_live(self, parts: list[Any]) -> bool:
        if self._link.peers() == 0:
            self.dropped += 1
            self.dropped_no_worker += 1
            return False
        if transport.send(self.sock, parts, block=False):
            return True
        self.dropped += 1
        return False

    def _send_lossless(self, parts: list[Any]) -> bool:
        since, warned = time.monotonic(), False
        while not self._stop.is_set():
            if self._link.peers() == 0:
                if not self._link.await_back(self._router, self._retarget):
                    return False
                since = time.monotonic()
                continue
            if self._link.reconnected():
                answered = self._resume()
                # No answer: this frame goes (as before) and the next one asks once more, so a
                # worker that answers late still gets the resend it needs.
                again = not answered and not self._asked_again
                self._link.resume_pending = self._asked_again = again
                if answered and self._caught_up():
                    # The worker holds every frame sent: this one is where it goes on, and
                    # a restarted worker runs a restored stream's next seq only as a resend.
                    parts = protocol.as_replay(parts)
            if transport.wait_writable(self.sock, POLL_MS) and transport.send(
                self.sock, parts, block=False
            ):
                return True
            if not warned and time.monotonic() - since > STALL_WARN_S:
                warned = True
                log.warning(
                    "the worker at %s is connected but has taken no frame for %.0f s; "
                    "still waiting (busy or stuck?)",
                    self.endpoint,
                    STALL_WARN_S,
                )
        return False

    def _caught_up(self) -> bool:
        return self._lossless is not None and self._lossless.caught_up

    def _resume(self) -> bool:
        if self._lossless is None:
            return True
        return self._lossless.resume(self.sent, self.wait_s, self._resume_wait_subscriber,
                                     self.endpoint)  # fmt: skip

    def _retarget(self, endpoint: str, output: str) -> None:
        """Send to another worker from now on (the stream's new owner): frames queued for the
        old one are dropped with its connection; the resume handshake with the new one sends
        again what it lacks (from the checkpoint it took over, in a shared folder)."""
        log.info("stream %s moves from %s to %s", self.stream, self.endpoint, endpoint)
        transport.retarget(self.sock, self.endpoint, endpoint)
        if self._lossless is not None:
            self._lossless.resender.retarget(output)
        self.endpoint = self._link.endpoint = endpoint

    # -- readiness of a subscriber -------------------------------------------------------------
    def wait_subscriber(self, output: str = DEFAULT_OUTPUT, timeout_s: float | None = None) -> bool:
        """Wait until the worker has a subscriber for this stream: True; False if stopped first.

        Probes through the worker (docs/PROTOCOL.md, "Knowing that a subscriber is connected"):
        an eos on stream `_probe` that `watch`es this stream, every 100 ms, answered on the
        worker's `output` endpoint. Raises StartupError after `timeout_s` (default `wait_s`;
        0: never), or at once if the worker's answers cannot say (a worker without `watch`).
        """
        if not self.wait_worker():
            return False
        limit = self.wait_s if timeout_s is None else timeout_s
        try:
            topics = [protocol.stream_topic(PROBE_STREAM)]
            sub = transport.sub_socket(self._ctx, output, topics, **self.socket.client_keys())
        except (ValueError, transport.ZMQError) as e:
            raise endpoint_error(output, e) from e
        try:
            return probe.wait_subscriber(self.sock, sub, self.stream, (self.endpoint, output),
                                         limit, self._stop)  # fmt: skip
        finally:
            transport.close(sub, 0)

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Queue the eos (seq = frames sent) and close, each bounded in time; idempotent."""
        if self._closed:
            return
        try:
            if self._link.ready:
                self.eos_sent = self._send_eos()
        finally:
            self._closed = True
            hurry = self._stop.is_set() or not self._link.ready or self._link.watch.update(0) == 0
            linger_ms = min(self.linger_ms, int(STOP_WAIT_S * 1000)) if hurry else self.linger_ms
            self._link.watch.close()
            if self._lossless is not None:
                self._lossless.close()
            transport.close(self.sock, linger_ms)
            start = time.monotonic()
            self._ctx.term()  # returns once the queue drained, or the linger ran out
            took_ms = (time.monotonic() - start) * 1000
            if self._link.ready and linger_ms > 0:
                self.drained = took_ms < linger_ms - 20
            self._linger_ms = linger_ms

    def _send_eos(self) -> bool:
        # A restarted worker gets the frames it lacks before the eos; one not back yet, once
        # it is (the end confirmation below waits for it).
        link = self._link
        if link.peers() > 0 and link.reconnected() and not self._resume():
            link.resume_pending = True
        if not self._queue_eos():
            return False
        if self._lossless is not None and not self._stop.is_set():
            self.confirmed = self._lossless.await_end(
                self.sent, self.wait_s, lambda: link.peers() > 0 and link.reconnected(),
                self._resend_and_end, self.endpoint,
            )  # fmt: skip
        return True

    def _resend_and_end(self) -> None:
        if self._resume():
            self._queue_eos()
        else:  # no answer (the worker went again, or is slow): ask again when it is back
            self._link.resume_pending = True

    def _queue_eos(self) -> bool:
        lossless = self._lossless is not None
        parts = protocol.encode_eos(self.stream, self.session, seq=self.sent, lossless=lossless)
        wait_s = self.close_timeout_s
        if self._stop.is_set() or self._link.watch.update(0) == 0:
            wait_s = min(wait_s, STOP_WAIT_S)
        deadline = time.monotonic() + wait_s
        while True:
            if transport.wait_writable(self.sock, POLL_MS) and transport.send(
                self.sock, parts, block=False
            ):
                return True
            if time.monotonic() >= deadline:
                log.warning("eos not queued within %.1f s: the worker's queue stayed full", wait_s)
                return False

    def summary(self, seconds: float | None = None) -> str:
        """One line: what was queued and dropped (in `seconds`), and what is known of delivery."""
        took = "" if seconds is None else f" in {seconds:.2f} s"
        stopped = ", stopped" if self._stop.is_set() else ""
        if not self._link.ready:
            return f"queued nothing{took}{stopped}: no worker had answered at {self.endpoint}"
        text = f"queued {self.sent} frames to {self.endpoint}, dropped {self.dropped}"
        if self.dropped_no_worker:
            text += f" ({self.dropped_no_worker} while no worker was connected)"
        text += f" ({self.mode} mode){took}{stopped}"
        if self.disconnects:
            text += (
                f"; the worker disconnected {self.disconnects} time(s): frames queued after "
                "that may be lost"
            )
        else:
            text += "; the worker's connection held throughout"
        if self._closed and not self.eos_sent:
            text += "; the eos was not queued"
        if self.dropped_by_worker:
            text += f"; the worker DROPPED frames of this stream: {self.dropped_by_worker}"
        if self.confirmed:
            text += "; the worker confirmed it ran every frame"
        elif self.confirmed is False:
            text += "; the worker did not confirm it ran every frame"
        if self.drained is False:
            text += (
                f"; the queue had not drained when the {self._linger_ms / 1000:g} s linger ran "
                "out: its last frames were discarded"
            )
        return text

    def _check_open(self) -> None:
        if self._closed:
            msg = "this Sender is closed"
            raise StreamconvError(msg)

    def __enter__(self) -> Sender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
