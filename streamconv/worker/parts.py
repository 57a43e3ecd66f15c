"""The worker's composition root: every part of a worker built from its settings, here only.

`build(settings, stats)` makes the model on its device, the admission rules, the Batcher and
the Engine, the checkpoint keeper (restoring what the folder holds), the sockets, the
previews and the Publisher, and the periodic duties; `Worker` (role.py) only runs them. A
failure part-way closes what was already opened.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamconv import weights
from streamconv.config import Settings, WorkerSettings
from streamconv.errors import StartupError
from streamconv.model import (
    DTYPES,
    build_model,
    configure_torch,
    input_channels,
    own,
    published,
    resolve_device,
    state_bytes_per_pixel,
)
from streamconv.wire import transport
from streamconv.wire.protocol import PREVIEW_PREFIX, SHM_PREFIX
from streamconv.wire.shards import owner
from streamconv.worker.admission import Admission
from streamconv.worker.batcher import Batcher
from streamconv.worker.check import require
from streamconv.worker.checkpoints import Checkpoints, TakeOver, Writer, fingerprint
from streamconv.worker.duties import Duty, RefusalCount
from streamconv.worker.engine import Engine, EngineSettings
from streamconv.worker.intake import Intake
from streamconv.worker.keeper import Keeper
from streamconv.worker.memory import keep_freed_memory
from streamconv.worker.previews import Previews
from streamconv.worker.publisher import Publisher
from streamconv.worker.recorder import Recorder
from streamconv.worker.reload import Reload
from streamconv.worker.stages import Inbox, Outbox
from streamconv.worker.stats import Stats

if TYPE_CHECKING:
    import torch

    from streamconv.layers import Layer

log = logging.getLogger(__name__)

BIND_WAIT_S = 5.0  # how long a port in use is tried again at start
BIND_RETRY_S = 0.25
RECORDER_CLOSE_S = 10.0  # at shutdown: the most time for the recorder's last segments
RESUME_WINDOW_S = 30.0  # after a start with checkpoints: lossless senders resend what it lacks


@dataclass
class Parts:
    engine: Engine
    publisher: Publisher
    pull: transport.Socket
    ctx: transport.Context
    admission: Admission
    device: torch.device
    outbox: Outbox  # publishes (on its own thread when pipelined)
    inbox: Inbox  # reads and decodes the input (on its own thread when pipelined)
    guard: transport.Guard | None = None
    keeper: Keeper | None = None
    refusals: transport.RefusalWatch | None = None
    reload: Reload | None = None  # new weights on SIGHUP or POST /reload
    recorder: Recorder | None = None  # input frames into the archive ([record])
    duties: list[Duty] = field(default_factory=list)  # ticked every turn of the serve loop

    @property
    def endpoints(self) -> tuple[str, str]:
        return transport.endpoint(self.pull), transport.endpoint(self.publisher.sock)

    def live(self) -> dict[str, object]:
        """The state budget in use and the refused handshakes, for /status (HTTP thread)."""
        a = self.admission
        used = a.used(list(self.engine.streams.values()))
        stats = self.engine.stats
        with stats.lock:
            refused = stats.counts["curve_refused"]
        return {"state_budget": {"used_mb": round(used / 2**20, 3),
                                 "budget_mb": round(a.budget_bytes / 2**20, 3),
                                 "bytes_per_pixel": a.bytes_per_pixel},
                "curve_refused": refused,
                "model_version": self.reload.version if self.reload else None,
                "record": self.recorder.status() if self.recorder else None}  # fmt: skip

    def ask_reload(self) -> Future[dict[str, Any]] | None:
        """POST /reload (the HTTP thread): a reload at the serve loop's next turn."""
        return self.reload.ask() if self.reload is not None else None

    def hup(self) -> None:
        """SIGHUP: a plain flag (a handler takes no lock the loop may hold)."""
        if self.reload is not None:
            self.reload.signalled = True

    def finish(self, budget_s: float, cut: bool) -> None:
        """At shutdown, after the last results: publish what waits (`cut`: nothing more),
        then checkpoint the streams still open (a restart goes on from there)."""
        left = self.outbox.close(0 if cut else budget_s)
        if left:  # counted where /status and /metrics show it
            self.engine.stats.count("outputs_not_published", left)
            log.warning("shutdown: %d outputs were not published (counted); the streams' last "
                        "checkpoints stand (a restart resends from them)", left)  # fmt: skip
        if self.keeper is not None:
            self.keeper.defer = lambda action: action()  # the outbox is closed: at once
            self.keeper.close(budget_s, final=not left and not cut)

    def close(self, linger_ms: int) -> None:
        """Close every socket (the stage threads stopped first); queued outputs get
        `linger_ms` to leave; the recorder writes what it gathered."""
        self.inbox.close()  # its thread stops once the stop is set (the caller's)
        self.outbox.close(linger_ms / 1000)
        if self.recorder is not None and not self.recorder.close(RECORDER_CLOSE_S):
            log.warning("recorder: not every segment was written within %.0f s",
                        RECORDER_CLOSE_S)  # fmt: skip
        if self.refusals is not None:  # before the sockets it watches
            self.refusals.close()
        transport.close(self.publisher.sock, linger_ms)
        self.publisher.close_shm()  # after the last header that names it went out
        if self.guard is not None:  # before the context: its thread holds a socket
            self.guard.stop()
        self.ctx.destroy(linger=0)


class _Wanted:
    """The layers of a stream worth copying back and encoding: those a subscriber (or a viewer
    of previews) asks for; without the pipeline, subscriptions waiting on the socket are read
    first (with it, the socket is the output thread's, which reads them as they come). The
    publisher is built after the engine that asks."""

    def __init__(self, stats: Stats, inline: bool) -> None:
        self.stats, self.publisher, self.inline = stats, None, inline  # type: Stats, Publisher | None, bool

    def __call__(self, stream: str) -> set[str] | None:
        if self.publisher is None:
            return None
        if self.inline:
            self.publisher.take_subscriptions()
        prefixes = [PREVIEW_PREFIX] if self.publisher.previews is not None else []
        if self.publisher.shm_bytes:
            prefixes.append(SHM_PREFIX)
        return self.stats.subscribed_layers(stream, self.publisher.layers, prefixes)


def threaded(w: WorkerSettings, device: torch.device) -> bool:
    """Whether the worker runs as a pipeline of threads (worker/stages.py): `pipeline` on, or
    auto on a GPU, where the model's pass runs on the device while the host threads read and
    publish. On the CPU the model's pass holds a core and the threads' hand-offs only cost
    (2 cores, BENCHMARKS.md "Pipelined worker")."""
    return w.pipeline == "on" or (w.pipeline == "auto" and device.type == "cuda")


def build(
    settings: Settings, stats: Stats, stop: threading.Event, given: Layer | None = None
) -> Parts:
    """Every part; the model is `given` (built in this process) or made from the settings;
    `stop` set: the input stops being read."""
    w = settings.worker
    configure_torch(w)
    keep_freed_memory(w.keep_freed_mb)
    device = resolve_device(w.device)
    model = build_model(settings, device, given)
    if w.startup_check:
        require(model, input_channels(w), "the model")
    publish = published(settings, model, given is not None)
    admission = Admission(
        max_streams_per_key=w.max_streams_per_key,
        max_frame_pixels=w.max_frame_pixels,
        budget_bytes=int(w.state_budget_mb * 2**20),
        bytes_per_pixel=state_bytes_per_pixel(model, w, device, DTYPES[w.dtype]),
    )
    wanted = _Wanted(stats, inline=not threaded(w, device))
    batcher = Batcher(model, device=device, dtype=DTYPES[w.dtype], publish=publish,
                      output_dtype=w.output_dtype, max_batch=w.max_batch,
                      wanted=wanted)  # fmt: skip
    engine = Engine(batcher, EngineSettings(w.chunk, w.max_wait_ms / 1000, w.color,
                                            input_channels(w), w.max_streams),
                    stats=stats, admission=admission)  # fmt: skip
    keeper = _keeper(settings, stats, engine, model, device) if w.checkpoint_dir else None
    ctx = transport.context()
    guard = transport.Guard(ctx) if w.input.curve or w.output.curve else None
    try:
        pull, pub = _sockets(settings, ctx, guard)
    except BaseException:
        if guard is not None:
            guard.stop()
        ctx.destroy(linger=0)
        raise
    previews = Previews(w.preview_fps, w.preview_side) if w.preview_fps > 0 else None
    publisher = wanted.publisher = Publisher(pub, publish, w.output_dtype, stats, previews,
                                             w.shm_mb * 2**20 if w.shm else 0)  # fmt: skip
    refusals = transport.RefusalWatch({"input": pull, "output": pub})
    pipelined = threaded(w, device)
    outbox = Outbox(publisher, pipelined)
    inbox = Inbox(Intake(pull, w, stats), stop, pipelined)
    parts = Parts(engine, publisher, pull, ctx, admission, device, outbox, inbox, guard, keeper,
                  refusals)  # fmt: skip
    parts.duties = [RefusalCount(refusals, stats)]
    _reload_and_record(parts, settings, model)
    if keeper is not None:  # a checkpoint is written once the outputs it covers are out
        keeper.defer = outbox.then
        parts.duties.append(keeper)
    for name, sock in (("input", w.input), ("output", w.output)):
        if sock.curve:
            log.info("%s: CURVE, clients allowed from %s", name, sock.curve_clients)
        elif not sock.local():
            log.warning("%s %s: plaintext, allowed by allow_insecure", name, sock.endpoint)
    return parts


def _reload_and_record(parts: Parts, settings: Settings, model: Layer) -> None:
    """New weights on SIGHUP or POST /reload; the input archive, when [record] dir is set."""
    publisher, keeper = parts.publisher, parts.keeper

    def on_version(version: str) -> None:  # new weights: outputs and checkpoints say so
        # The outputs of the old weights still waiting to go out keep their version.
        parts.outbox.then(lambda: setattr(publisher, "model_version", version))
        if keeper is not None:
            folder = keeper.writer.checkpoints
            folder.fingerprint, folder.version = fingerprint(model, settings), version

    parts.reload = Reload(own(model), settings.model.weights, on_version)
    parts.duties.append(parts.reload)
    if settings.record.dir is not None:
        parts.recorder = Recorder(settings.record, parts.engine.stats)
        parts.engine.on_take = parts.recorder.add
        parts.duties.append(parts.recorder)


def _sockets(
    settings: Settings, ctx: transport.Context, guard: transport.Guard | None
) -> tuple[transport.Socket, transport.Socket]:
    w = settings.worker
    # The socket limit is a backstop (a larger part disconnects its sender); the configured
    # limit itself is checked per message, so it is counted.
    inp = w.input
    if inp.max_message_bytes < 0:
        inp = inp.model_copy(update={"max_message_bytes": 2 * w.max_message_bytes})
    deadline, warned = time.monotonic() + BIND_WAIT_S, False
    while True:
        pull = None
        try:
            pull = transport.open_socket(ctx, "pull", inp, guard=guard)
            pub = transport.open_socket(ctx, "xpub", w.output, guard=guard)
            return pull, pub
        except transport.ZMQError as e:
            if pull is not None:
                transport.close(pull, 0)
            # A worker that just died (a supervisor's restart) can hold its port a moment
            # longer; a port another program holds is still an error, a few seconds later.
            if e.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                if not warned:
                    log.warning("%s or %s is in use; trying again for up to %.0f s",
                                w.input.endpoint, w.output.endpoint, BIND_WAIT_S)  # fmt: skip
                warned = True
                time.sleep(BIND_RETRY_S)
                continue
            msg = f"cannot bind worker sockets ({w.input.endpoint}, {w.output.endpoint}): {e}"
            raise StartupError(msg) from e


def _keeper(settings: Settings, stats: Stats, engine: Engine, model: Layer,
            device: torch.device) -> Keeper:  # fmt: skip
    """Restore the streams checkpointed in the folder, and keep checkpointing."""
    w = settings.worker
    shard, shards = w.shard, w.shards

    def mine(stream: str) -> bool:  # a folder shared by the shards: only its own streams
        return shard is None or owner(stream, shards) == shard

    if shard is not None:
        log.info("shard %s of %d: checkpoints of the streams it owns", shard, len(shards))
    assert w.checkpoint_dir is not None
    try:
        folder = Checkpoints(w.checkpoint_dir, fingerprint(model, settings), mine,
                             weights.version(model))  # fmt: skip
    except OSError as e:
        msg = f"cannot use checkpoint_dir {w.checkpoint_dir}: {e}"
        raise StartupError(msg) from e
    for snap in folder.load_all(device, w.checkpoint_retention_s, w.max_streams):
        engine.continuity.restore(snap, time.monotonic())
    load = TakeOver(folder, device, mine) if shard is not None else None
    engine.continuity.keep_checkpoints(w.checkpoint_every,
                                       time.monotonic() + RESUME_WINDOW_S, load)  # fmt: skip
    log.info("checkpoints in %s every %d frames per stream (%d streams restored)",
             w.checkpoint_dir, w.checkpoint_every, len(engine.streams))  # fmt: skip
    return Keeper(engine, Writer(folder), stats, w.checkpoint_every, w.checkpoint_interval_s)


def health_info(parts: Parts, settings: Settings) -> dict[str, Any]:
    w = settings.worker
    return {"device": str(parts.device), "layers": parts.publisher.layers,
            "curve": {"input": w.input.curve, "output": w.output.curve}}  # fmt: skip
