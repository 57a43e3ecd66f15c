"""The worker role: PULL frames -> decode -> engine -> publisher -> XPUB, plus HTTP health.

    Worker(load_settings("default")).run()   # startup(), serve(), shutdown(); blocks
    # from another thread: worker.ready.wait(); worker.stop()   (see streamconv.worker)

Bad input never stops it: each drop is a Failed result, counted by reason in the Stats and
logged (rate-limited). SIGTERM/SIGINT only set a flag: the loop stops reading at once,
finishes the chunks in hand within `shutdown_timeout_s` (the rest are counted as not
flushed), delivers their outputs and exits. A second signal skips what is left of the flush
and makes run() raise ShutdownCutError (exit code 130).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamconv.config import Settings, parse_http

if TYPE_CHECKING:
    import torch

    from streamconv.layers import Sequential
from streamconv.errors import Drop, ProtocolError, ShutdownCutError, StartupError, StreamconvError
from streamconv.model import (
    DTYPES,
    build_model,
    configure_torch,
    device_memory,
    input_channels,
    resolve_device,
    state_bytes_per_pixel,
)
from streamconv.signals import on_stop
from streamconv.wire import transport
from streamconv.wire.protocol import PREVIEW_PREFIX, InputMessage, decode_input, peek_stream
from streamconv.wire.shards import owner
from streamconv.worker import metrics
from streamconv.worker.admission import Admission
from streamconv.worker.checkpoints import Checkpoints, TakeOver, Writer, fingerprint
from streamconv.worker.engine import Engine
from streamconv.worker.http import Health, HttpServer, app
from streamconv.worker.keeper import Keeper
from streamconv.worker.overload import thin_live
from streamconv.worker.previews import Previews
from streamconv.worker.publisher import Publisher
from streamconv.worker.results import Failed, Result
from streamconv.worker.stats import DropLog, Stats

log = logging.getLogger(__name__)

POLL_MS = 50  # how quickly a stop request is noticed when no input arrives
BATCH = 256  # messages drained per wake-up before partial chunks are checked
REFUSALS_EVERY_S = 0.1  # how often refused handshakes are taken from the socket monitors
RESUME_WINDOW_S = 30.0  # after a start with checkpoints: lossless senders resend what it lacks
LINGER_MS = 1500  # the most time given to deliver the outputs flushed at shutdown


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.health = Health()
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # set once the model is built and the sockets bound
        self.abort_event = threading.Event()  # a second signal: skip the rest of the flush
        self.engine: Engine | None = None
        self.publisher: Publisher | None = None
        self.http: HttpServer | None = None
        self.endpoints: tuple[str, str] | None = None  # (input, output) as bound
        self._drops = DropLog(settings.log.stats_every_s or 10.0)
        self._ctx: transport.Context | None = None
        self._pull: transport.Socket | None = None
        self._guard: transport.Guard | None = None
        self._refusals: transport.RefusalWatch | None = None
        self._refusals_at = 0.0  # when they were last taken
        self._refusals_logged: set[str] = set()  # sockets whose first refusal was logged
        self._curve_in = settings.worker.input.curve  # read each sender's key
        self.admission: Admission | None = None
        self.keeper: Keeper | None = None
        self._signals = 0
        self._read = 0  # messages read from the input socket
        self._in_at_stop: int | None = None  # messages read when the stop was asked for

    def stop(self) -> None:
        """Ask run() to finish (safe from any thread)."""
        if self._in_at_stop is None:
            self._in_at_stop = self._read
        self.stop_event.set()

    def run(self) -> None:
        restore = on_stop(self._on_signal)  # before startup: a signal then ends it cleanly
        try:
            try:
                self.startup()
            except BaseException:
                self._close()
                raise
            self.serve()
            self.shutdown()
        finally:
            restore()
        if self.abort_event.is_set():
            msg = "a second stop signal cut the shutdown short (exit code 130)"
            raise ShutdownCutError(msg)

    # -- lifecycle --------------------------------------------------------------------------
    def startup(self) -> None:
        w = self.settings.worker
        http = parse_http(w.http)
        if http is not None:  # first, so /healthz answers while the model is built
            registry = metrics.registry(self.stats, lambda: self._device_memory())
            self.http = HttpServer(*http, app(self.health, self.stats, registry))
            self.http.start()
            log.info("http on %s (/healthz /readyz /metrics /status)", self.http.url)
        configure_torch(w)
        device = resolve_device(w.device)
        model = build_model(self.settings, device)
        publish = [spec.name for spec in self.settings.layers if spec.publish]
        self.admission = Admission(
            max_streams_per_key=w.max_streams_per_key,
            max_frame_pixels=w.max_frame_pixels,
            budget_bytes=int(w.state_budget_mb * 2**20),
            bytes_per_pixel=state_bytes_per_pixel(model, w, device, DTYPES[w.dtype]),
        )
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
            stats=self.stats,
            admission=self.admission,
            max_batch=w.max_batch,
            wanted=self._wanted,
        )
        if w.checkpoint_dir is not None:
            self._keep_checkpoints(model, device, w.checkpoint_dir)
        self._ctx = transport.context()
        if w.input.curve or w.output.curve:  # the ZAP authenticator checks client keys
            self._guard = transport.Guard(self._ctx)
        # The socket limit is a backstop (a larger part disconnects its sender); the
        # configured limit itself is checked per message, so it is counted.
        inp = w.input
        if inp.max_message_bytes < 0:
            inp = inp.model_copy(update={"max_message_bytes": 2 * w.max_message_bytes})
        try:
            self._pull = transport.open_socket(self._ctx, "pull", inp, guard=self._guard)
            pub = transport.open_socket(self._ctx, "xpub", w.output, guard=self._guard)
        except transport.ZMQError as e:
            msg = f"cannot bind worker sockets ({w.input.endpoint}, {w.output.endpoint}): {e}"
            raise StartupError(msg) from e
        previews = Previews(w.preview_fps, w.preview_side) if w.preview_fps > 0 else None
        self.publisher = Publisher(pub, publish, w.output_dtype, self.stats, previews)
        self.endpoints = (transport.endpoint(self._pull), transport.endpoint(pub))
        self._refusals = transport.RefusalWatch({"input": self._pull, "output": pub})
        self.health.live = self._live
        self.health.info = {"device": str(device), "layers": publish,
                            "curve": {"input": inp.curve, "output": w.output.curve}}  # fmt: skip
        self.health.phase = "ready"
        self.ready.set()
        log.info(
            "worker ready on input %s output %s (layers: %s)", *self.endpoints, ", ".join(publish)
        )
        for name, sock in (("input", inp), ("output", w.output)):
            if sock.curve:
                log.info("%s: CURVE, clients allowed from %s", name, sock.curve_clients)
            elif not sock.local():
                log.warning("%s %s: plaintext, allowed by allow_insecure", name, sock.endpoint)

    def _keep_checkpoints(self, model: Sequential, device: torch.device, where: Path) -> None:
        """Restore the streams checkpointed in `where`, and keep checkpointing."""
        w, engine = self.settings.worker, self._started_engine()
        shard, shards = w.shard, w.shards

        def mine(stream: str) -> bool:  # a folder shared by the shards: only its own streams
            return shard is None or owner(stream, shards) == shard

        if shard is not None:
            log.info("shard %s of %d: checkpoints of the streams it owns", shard, len(shards))
        try:
            folder = Checkpoints(where, fingerprint(model, self.settings), mine)
        except OSError as e:
            msg = f"cannot use checkpoint_dir {where}: {e}"
            raise StartupError(msg) from e
        for snap in folder.load_all(device, w.checkpoint_retention_s, w.max_streams):
            engine.restore(snap, time.monotonic())
        if shard is not None:
            engine.load = TakeOver(folder, device, mine)
        engine.fresh_until = time.monotonic() + RESUME_WINDOW_S
        self.keeper = Keeper(engine, Writer(folder), self.stats, w.checkpoint_every,
                             w.checkpoint_interval_s)  # fmt: skip
        log.info("checkpoints in %s every %d frames per stream (%d streams restored)",
                 w.checkpoint_dir, w.checkpoint_every, len(engine.streams))  # fmt: skip

    def _wanted(self, stream: str) -> set[str] | None:
        """The layers of `stream` worth copying back and encoding: those a subscriber (or a
        viewer of previews) asks for. Subscriptions waiting on the socket are read first."""
        if self.publisher is None:
            return None
        self.publisher.take_subscriptions()
        prefixes = [PREVIEW_PREFIX] if self.publisher.previews is not None else []
        return self.stats.subscribed_layers(stream, self.publisher.layers, prefixes)

    def _started_engine(self) -> Engine:
        if self.engine is None:
            msg = "the engine is built first"
            raise StreamconvError(msg)
        return self.engine

    def _live(self) -> dict[str, object]:
        """The state budget in use and the refused keys, for /status (the HTTP thread)."""
        if self.admission is None or self.engine is None:
            return {}
        a = self.admission
        used = a.used(list(self.engine.streams.values()))
        with self.stats.lock:
            refused = self.stats.counts["curve_refused"]
        return {"state_budget": {"used_mb": round(used / 2**20, 3),
                                 "budget_mb": round(a.budget_bytes / 2**20, 3),
                                 "bytes_per_pixel": a.bytes_per_pixel},
                "curve_refused": refused}  # fmt: skip

    def _started(self) -> tuple[Engine, Publisher, transport.Socket]:
        if self.engine is None or self.publisher is None or self._pull is None:
            msg = "call startup() before serve()"
            raise StreamconvError(msg)
        return self.engine, self.publisher, self._pull

    def serve(self) -> None:
        engine, publisher, pull = self._started()
        last_evict = last_stats = time.monotonic()
        every_s = self.settings.log.stats_every_s
        while not self.stop_event.is_set():
            now = time.monotonic()
            self.health.beat = now
            deadline = engine.next_deadline()
            timeout = POLL_MS
            if deadline is not None:
                timeout = max(0, min(POLL_MS, int((deadline - now) * 1000) + 1))
            ready = transport.wait_readable([pull, publisher.sock], timeout)
            if publisher.sock in ready:
                publisher.take_subscriptions()
            if pull in ready:
                self._take_waiting(pull)
            now = time.monotonic()
            self.deliver(engine.due(now))
            publisher.flush_previews()
            self._count_refusals(now)
            if self.keeper is not None:
                self.keeper.tick(now)
            if now - last_evict > 1.0:
                last_evict = now
                self.deliver(engine.evict_idle(now, self.settings.worker.idle_timeout_s))
                self._drops.flush()
            if every_s and now - last_stats >= every_s:
                last_stats = now
                log.info("%s", self.stats.summary())

    def _count_refusals(self, now: float) -> None:
        """Handshakes the sockets refused (socket monitors, read a few times a second, not
        per message): counted in curve_refused, and the first one per socket logged."""
        if self._refusals is None or now - self._refusals_at < REFUSALS_EVERY_S:
            return
        self._refusals_at = now
        for name, n in self._refusals.take().items():
            self.stats.count("curve_refused", n)
            if name not in self._refusals_logged:
                self._refusals_logged.add(name)
                log.warning("%s: refused a client's handshake (no CURVE keys where CURVE is "
                            "required, keys where it is not, a wrong worker key, or a key not "
                            "allowed); every one is counted in curve_refused", name)  # fmt: skip

    def deliver(self, results: list[Result]) -> None:
        """Outputs to the publisher; failures to the stats and the (rate-limited) log."""
        if not results:
            return
        for r in results:
            if isinstance(r, Failed):
                self.stats.drop(r.reason, r.stream, r.frames, r.session)
                self._drops.add(r.reason, r.detail)
        self._started()[1].publish(results)
        if self.keeper is not None:
            self.keeper.after(results)

    def _take_waiting(self, pull: transport.Socket) -> None:
        """Every message waiting (up to BATCH), decoded; live streams thinned to their newest
        chunk (worker/overload.py); then into the engine in order."""
        taken: list[tuple[InputMessage, str | None]] = []
        failed: list[Result] = []
        for _ in range(BATCH):  # the stop flag is checked between messages
            if self.stop_event.is_set():
                break
            parts = transport.recv_nowait(pull)
            if parts is None:
                break
            self._read += 1
            got = self._decode(parts)
            if isinstance(got, Failed):
                failed.append(got)
            else:
                taken.append(got)
        self.deliver(failed)
        w = self.settings.worker
        messages = [m for m, _ in taken]
        kept, dropped = thin_live(messages, w.chunk) if w.live_drop_oldest else (messages, {})
        for n in dropped.values():  # the engine counts the gap as missing frames as well
            self.stats.count("live_dropped", n)
        senders = {id(m): s for m, s in taken}
        engine = self._started()[0]
        for m in kept:
            self.deliver(engine.submit(m, time.monotonic(), senders[id(m)]))
        self.deliver(engine.run_ready())  # the chunks this read filled, batched

    def _decode(self, parts: list[transport.Frame]) -> tuple[InputMessage, str | None] | Failed:
        size = sum(len(p) for p in parts)
        limit = self.settings.worker.max_message_bytes
        if size > limit:
            why = f"message of {size} bytes exceeds max_message_bytes {limit}"
            stream, session = peek_stream(parts[0].buffer)  # its sender is told
            return Failed(Drop.OVERSIZE, why, stream, session=session)
        try:
            msg = decode_input([p.buffer for p in parts])
        except ProtocolError as e:
            return Failed(e.reason, str(e))
        except Exception as e:  # a decoder bug must not take the daemon down with it
            if not self.stats.drops[Drop.DECODER_BUG]:
                log.exception("decoder failed on a message")  # the traceback, once
            return Failed(Drop.DECODER_BUG, f"undecodable message: {type(e).__name__}")
        return msg, (transport.peer_key(parts[0]) if self._curve_in else None)

    def shutdown(self) -> None:
        """Finish the chunks in hand (bounded), deliver them, close everything."""
        self.health.phase = "stopping"
        engine, publisher = self.engine, self.publisher
        if engine is not None and publisher is not None:
            pending = engine.pending_frames()
            budget = self.settings.worker.shutdown_timeout_s
            taken = self._read - (self._in_at_stop or 0)
            log.info(
                "shutting down: %d frames in hand in %d streams, at most %.1f s to run them "
                "(frames taken after the signal: %d)",
                pending,
                len(engine.streams),
                budget,
                taken if self._in_at_stop is not None else 0,
            )
            until = time.monotonic() + budget
            results = engine.flush_all(
                lambda: self.abort_event.is_set() or time.monotonic() >= until
            )
            self.deliver(results)
            lost = sum(r.frames for r in results if isinstance(r, Failed))
            if lost:
                log.warning("shutdown: %d frames were not run (counted as not_flushed)", lost)
            if self.keeper is not None:  # the streams still open go on from here after a restart
                self.keeper.close(self.settings.worker.shutdown_timeout_s)
            self._drops.flush(force=True)
            log.info("%s", self.stats.summary())
        self._close()
        log.info("worker stopped")

    def _close(self) -> None:
        if self._refusals is not None:  # before the sockets it watches
            self._refusals.close()
            self._refusals = None
        if self.publisher is not None:
            # Sends are asynchronous: linger 0 would discard the outputs just flushed.
            transport.close(self.publisher.sock, 0 if self.abort_event.is_set() else LINGER_MS)
        if self._guard is not None:  # before the context: its thread holds a socket
            self._guard.stop()
            self._guard = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None
        if self.http is not None:
            self.http.stop()
            self.http = None

    def _device_memory(self) -> int | None:
        return device_memory(self.engine.device) if self.engine is not None else None

    def _on_signal(self, signum: int) -> None:
        # Handlers run in the main thread between bytecodes (logging's locks re-enter).
        self._signals += 1
        if self._signals == 1:
            self.stop()
            log.info("%s received: stopping", signal.Signals(signum).name)
        else:
            self.abort_event.set()
            log.warning("second stop signal: skipping the rest of the shutdown")
