"""The worker role: PULL frames -> decode -> engine -> publisher -> XPUB, plus HTTP health;
with `pipeline` on, reading and publishing run on threads of their own (worker/stages.py).

    Worker(load_settings("default")).run()   # startup(), serve(), shutdown(); blocks
    # from another thread: worker.ready.wait(); worker.stop()   (see streamconv.worker)

Bad input never stops it: each drop is a Failed result, counted by reason in the Stats and
logged (rate-limited). SIGTERM/SIGINT only set a flag: the loop stops reading at once,
finishes the chunks in hand within `shutdown_timeout_s` (the rest are counted as not
flushed), delivers their outputs and exits. A second signal skips what is left of the flush
and makes run() raise ShutdownCutError (exit code 130). SIGHUP reloads the weights. `model`:
one built in the caller's process, served instead of the settings' ([model] weights load).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from streamconv.config import Settings
from streamconv.errors import ShutdownCutError, StreamconvError
from streamconv.layers import Layer
from streamconv.model import device_memory
from streamconv.signals import on_reload, on_stop
from streamconv.worker.duties import Every
from streamconv.worker.http import Health, HttpServer, serve_http
from streamconv.worker.parts import Parts, build, health_info
from streamconv.worker.results import Failed, Result
from streamconv.worker.stages import Batch
from streamconv.worker.stats import DropLog, Stats

log = logging.getLogger(__name__)

POLL_S = 0.05  # how quickly a stop request is noticed when no input arrives
EVICT_EVERY_S = 1.0  # how often idle streams are looked for
LINGER_MS = 1500  # the most time given to deliver the outputs flushed at shutdown


class Worker:
    def __init__(self, settings: Settings, model: Layer | None = None) -> None:
        self.settings, self.model, self.stats, self.health = settings, model, Stats(), Health()
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # set once the model is built and the sockets bound
        self.abort_event = threading.Event()  # a second signal: skip the rest of the flush
        self.parts: Parts | None = None
        self.http: HttpServer | None = None
        self.endpoints: tuple[str, str] | None = None  # (input, output) as bound
        self._drops, self._signals = DropLog(settings.log.stats_every_s or 10.0), 0
        self._in_at_stop: int | None = None  # messages read when the stop was asked for

    def stop(self) -> None:
        """Ask run() to finish (safe from any thread)."""
        if self._in_at_stop is None:
            self._in_at_stop = self.parts.inbox.intake.read if self.parts is not None else 0
        self.stop_event.set()

    def run(self) -> None:
        restore = on_stop(self._on_signal)  # before startup: a signal then ends it cleanly
        unhup = on_reload(lambda signum: self.parts.hup() if self.parts else None)
        try:
            try:
                self.startup()
                self.serve()
            except BaseException:
                self.stop_event.set()  # the input thread stops too
                self._close()
                raise
            self.shutdown()
        finally:
            restore()
            unhup()
        if self.abort_event.is_set():
            msg = "a second stop signal cut the shutdown short (exit code 130)"
            raise ShutdownCutError(msg)

    # -- lifecycle --------------------------------------------------------------------------
    def startup(self) -> None:
        """HTTP first (/healthz answers while the model is built), the parts, then ready."""
        w = self.settings.worker
        self.http = serve_http(w, self.health, self.stats, self._device_memory,
                               lambda: self.parts.ask_reload() if self.parts else None)  # fmt: skip
        parts = self.parts = build(self.settings, self.stats, self.stop_event, self.model)
        self.endpoints = parts.endpoints
        parts.duties.append(Every(EVICT_EVERY_S, self._evict))
        if every := self.settings.log.stats_every_s:  # its first line after one period
            line = lambda now: log.info("%s", self.stats.summary())  # noqa: E731
            parts.duties.append(Every(every, line, time.monotonic()))
        self.health.live, self.health.info = parts.live, health_info(parts, self.settings)
        self.health.phase = "ready"
        self.ready.set()
        log.info("worker ready on input %s output %s (layers: %s)", *self.endpoints,
                 ", ".join(parts.publisher.layers))  # fmt: skip

    def _started(self) -> Parts:
        if self.parts is None:
            msg = "call startup() before serve()"
            raise StreamconvError(msg)
        return self.parts

    def serve(self) -> None:
        parts = self._started()
        engine, inbox = parts.engine, parts.inbox
        inbox.start()
        parts.outbox.start()
        while not self.stop_event.is_set():
            now = time.monotonic()
            self.health.beat = now
            due = engine.next_deadline()
            timeout = POLL_S if due is None else min(POLL_S, due - now + 0.001)
            batches = inbox.get(max(0.0, timeout))
            if batches:
                self._submit(batches)
            now = time.monotonic()
            self.deliver(engine.due(now))
            parts.outbox.tick()
            for duty in parts.duties:
                duty.tick(now)

    def _submit(self, batches: list[Batch]) -> None:
        """Read messages into the engine, then the chunks they filled, batched."""
        engine = self._started().engine
        taken, failed = self._started().inbox.intake.keep(batches)
        self.deliver(list(failed))
        for msg, sender in taken:
            self.deliver(engine.submit(msg, time.monotonic(), sender))
        self.deliver(engine.run_ready())

    def _evict(self, now: float) -> None:
        engine = self._started().engine
        self.deliver(engine.evict_idle(now, self.settings.worker.idle_timeout_s))
        self._drops.flush()

    def deliver(self, results: list[Result]) -> None:
        """Outputs to the publisher; failures to the stats and the (rate-limited) log."""
        if not results:
            return
        parts = self._started()
        for r in results:
            if isinstance(r, Failed):
                self.stats.drop(r.reason, r.stream, r.frames, r.session)
                self._drops.add(r.reason, r.detail)
        parts.outbox.put(results)
        if parts.keeper is not None:
            parts.keeper.after(results)

    def shutdown(self) -> None:
        """Finish the chunks in hand (bounded), deliver them, close everything."""
        self.health.phase = "stopping"
        try:
            if self.parts is not None:
                self._finish(self.parts)
        finally:
            self._close()
        log.info("worker stopped")

    def _finish(self, parts: Parts) -> None:
        engine, inbox = parts.engine, parts.inbox
        budget = self.settings.worker.shutdown_timeout_s
        read = inbox.close()  # read before the stop: in hand, like the chunks
        if read:
            self._submit(read)
        taken = 0 if self._in_at_stop is None else inbox.intake.read - self._in_at_stop
        log.info("shutting down: %d frames in hand in %d streams, at most %.1f s to run them "
                 "(frames taken after the signal: %d)", engine.pending_frames(),
                 len(engine.streams), budget, taken)  # fmt: skip
        until = time.monotonic() + budget
        results = engine.flush_all(lambda: self.abort_event.is_set() or time.monotonic() >= until)
        self.deliver(results)
        lost = sum(r.frames for r in results if isinstance(r, Failed))
        if lost:
            log.warning("shutdown: %d frames were not run (counted as not_flushed)", lost)
        parts.finish(budget, self.abort_event.is_set())
        self._drops.flush(force=True)
        log.info("%s", self.stats.summary())

    def _close(self) -> None:
        if self.parts is not None:
            # Sends are asynchronous: linger 0 would discard the outputs just flushed.
            self.parts.close(0 if self.abort_event.is_set() else LINGER_MS)
            self.parts = None
        if self.http is not None:
            self.http.stop()
            self.http = None

    def _device_memory(self) -> int | None:
        return device_memory(self.parts.device) if self.parts is not None else None

    def _on_signal(self, signum: int) -> None:
        # Handlers run in the main thread between bytecodes (logging's locks re-enter).
        self._signals += 1
        if self._signals == 1:
            self.stop()
            log.info("%s received: stopping", signal.Signals(signum).name)
        else:
            self.abort_event.set()
            log.warning("second stop signal: skipping the rest of the shutdown")
