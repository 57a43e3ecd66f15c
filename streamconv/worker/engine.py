"""Frames in, layer outputs out: per-stream state, chunking, resets. No sockets here.

Each stream has its own temporal state for the one shared model. Frames are gathered into
chunks of up to `chunk` frames (or whatever arrived within `max_wait_s`) and run in time
order. A new session, a gap in `seq` or a change of frame size starts the stream afresh and
marks the next output as a discontinuity; eos flushes the stream and frees its state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from streamconv.errors import Drop, StreamconvError
from streamconv.layers import Sequential
from streamconv.wire.protocol import PROBE_STREAM, InputMessage
from streamconv.worker.admission import Admission
from streamconv.worker.batcher import Batcher, Broken, Job
from streamconv.worker.buffers import Buffers
from streamconv.worker.continuity import Continuity, StreamState
from streamconv.worker.pixels import chw_shape, frame_to_chw, frame_to_raw_chw, raw_dtype
from streamconv.worker.results import ChunkResult, EndResult, Failed, Result
from streamconv.worker.stats import Reset, Stats

log = logging.getLogger(__name__)

RESET_LOG_LINES = 10  # state resets logged at INFO per stream; later ones at DEBUG
__all__ = ["ChunkResult", "EndResult", "Engine", "Failed", "Result"]


@dataclass(frozen=True)
class EngineSettings:
    """How the engine gathers frames: `chunk` frames per pass (or what arrived within
    `max_wait_s`), pixels as `color` with `in_channels`, at most `max_streams` states."""

    chunk: int = 8
    max_wait_s: float = 0.02
    color: str = "gray"
    in_channels: int = 1
    max_streams: int = 64


class Engine:
    """Runs a model (through `batcher`) over many streams at once, each with its own state.

    Built by the worker's composition root (worker/parts.py); `Engine.build` makes one with
    its Batcher from keywords, for library users and tests."""

    def __init__(
        self,
        batcher: Batcher,
        settings: EngineSettings,
        *,
        stats: Stats | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.batcher, self.settings = batcher, settings
        self.chunk, self.max_wait_s = settings.chunk, settings.max_wait_s
        self.color, self.in_channels = settings.color, settings.in_channels
        self.max_streams = settings.max_streams
        self.streams: dict[str, StreamState] = {}
        self.stats = stats if stats is not None else Stats()
        self.admission = admission
        # Resume, restore and take-over: one component, the owner of that bookkeeping.
        self.continuity = Continuity(self.streams, self.stats, settings.max_streams)
        self._ready: dict[str, StreamState] = {}  # full chunks, run together after the read
        self.buffers = Buffers()  # the chunks' pixel buffers, taken again once free
        # Each frame the engine takes (into a chunk), and each end, in order: the input
        # archive's ([record]), so a replay sends again exactly what ran, never a refused,
        # duplicate or dropped frame.
        self.on_take: Callable[[InputMessage, float], None] | None = None

    @classmethod
    def build(
        cls,
        model: Sequential,
        *,
        device: torch.device,
        dtype: torch.dtype,
        publish: list[str] | None = None,
        output_dtype: str = "float32",
        max_batch: int = 0,
        wanted: Callable[[str], set[str] | None] | None = None,
        device_pixels: bool | None = None,
        stats: Stats | None = None,
        admission: Admission | None = None,
        **settings: Any,
    ) -> Engine:
        """An engine with its Batcher; `settings` are EngineSettings' fields."""
        batcher = Batcher(model, device=device, dtype=dtype,
                          publish=publish if publish is not None else model.stage_names(),
                          output_dtype=output_dtype, max_batch=max_batch, wanted=wanted,
                          device_pixels=device_pixels)  # fmt: skip
        return cls(batcher, EngineSettings(**settings), stats=stats, admission=admission)

    @property
    def device(self) -> torch.device:
        return self.batcher.device

    # -- input ----------------------------------------------------------------------------
    def submit(self, msg: InputMessage, now: float, sender: str | None = None) -> list[Result]:
        """Take one decoded message from `sender` (its CURVE key, None without CURVE);
        returns the results it completes (a frame that cannot enter the model, or may not,
        is a Failed result naming its session, and nothing else changes then)."""
        results = self._submit(msg, now, sender)
        return [
            replace(r, session=msg.session)
            if isinstance(r, Failed) and r.stream == msg.stream and r.session is None
            else r
            for r in results
        ]

    def _submit(self, msg: InputMessage, now: float, sender: str | None) -> list[Result]:
        if msg.kind == "eos":
            refused = self.admission and self.admission.end(msg.stream, sender, self.streams)
            if not refused and self.on_take is not None:  # in order with the frames
                self.on_take(msg, now)
            return [refused] if refused else self._end(msg, now)
        if msg.frame is None:
            why = f"frame message of stream {msg.stream!r} carries no pixels"
            return [Failed(Drop.MALFORMED, why, msg.stream)]
        try:
            shape = chw_shape(msg.frame, self.color, self.in_channels)
        except StreamconvError as e:
            return [Failed(Drop.BAD_SHAPE, f"stream {msg.stream!r}: {e}", msg.stream)]
        refused = self.admission and self.admission.frame(msg.stream, shape, sender, self.streams)
        if refused:
            return [refused]
        st = self.streams.get(msg.stream)
        if (st is None or st.restored) and msg.lossless and msg.seq > 0:
            st = self.continuity.take_over(msg.stream, msg.session, now)
        if st is None and self.continuity.await_from_start(msg, now):
            return []
        if (st is not None and st.session == msg.session
                and (msg.seq != st.next_seq or st.restored)
                and self.continuity.out_of_order(st, msg)):  # fmt: skip
            return []
        results: list[Result] = []
        if st is None:
            if len(self.streams) >= self.max_streams:
                why = f"too many streams ({self.max_streams}); end one with eos first"
                return [Failed(Drop.TOO_MANY_STREAMS, why, msg.stream)]
            st = self._new_stream(msg, shape, sender)
        elif (st.session != msg.session or msg.seq != st.next_seq
              or (st.shape is not None and shape != st.shape)):  # fmt: skip
            results += self._flush(st)
            self._reset(st, msg, shape)
        return results + self._append(st, msg, msg.frame, shape, now)

    def _new_stream(self, msg: InputMessage, shape: tuple[int, ...],
                    sender: str | None) -> StreamState:  # fmt: skip
        st = self.streams[msg.stream] = StreamState(msg.stream, msg.session, owner=sender)
        self._started(st, shape)
        if msg.live and msg.seq > 0:  # its first frames were dropped on the way
            self.stats.missing(st.name, msg.seq)
        elif msg.seq > 0 and not msg.replay:
            self._lost_state(st, msg.seq)
        return st

    def _append(self, st: StreamState, msg: InputMessage, frame: np.ndarray,
                shape: tuple[int, ...], now: float) -> list[Result]:  # fmt: skip
        """The frame into the stream's chunk (run first what cannot share a chunk with it)."""
        results: list[Result] = []
        st.restored = False
        st.resuming = st.resuming and not msg.replay
        raw = raw_dtype(frame, self.color) if self.batcher.device_pixels else None
        if st.buffer is not None and st.buffer.dtype != (raw or np.float32):
            results += self._flush(st)  # the pixel type changed: run what came before
        if st.name in self._ready:  # a full chunk still waits for its pass
            results += self.run_ready()
        if st.buffer is None:
            st.since = now
            # Taken again only once no output, view or unsent message refers to it (outputs
            # may alias it and leave zero-copy): worker/buffers.py.
            st.buffer = self.buffers.take((self.chunk, *shape), raw or np.float32)
        st.shape = shape
        if raw is not None:
            frame_to_raw_chw(frame, self.color, out=st.buffer[st.count])
        else:
            frame_to_chw(frame, self.color, self.in_channels, out=st.buffer[st.count])
        st.count += 1
        if self.on_take is not None:
            self.on_take(msg, now)
        st.seqs.append(msg.seq)
        st.t_ns.append(msg.t_ns)
        st.replays.append(msg.replay)
        st.next_seq = msg.seq + 1
        st.last_seen = now
        st.fps = msg.fps
        self.stats.received(st.name)
        if st.count >= self.chunk:
            self._ready[st.name] = st  # run with the others due (run_ready)
        return results

    def _started(self, st: StreamState, shape: tuple[int, ...]) -> None:
        self.stats.open(st.name, st.session)
        size = "x".join(map(str, (shape[2], shape[1], shape[0])))
        log.info("stream %s: started (session %s, %s)", st.name, st.session[:8], size)

    def _lost_state(self, st: StreamState, seq: int) -> None:
        """A stream started here at `seq` > 0, not resent: this worker never held (or no longer
        holds) its state, and the session's frames before `seq` were not run here. Its first
        output is a discontinuity (a new stream's always is); the reset and the frames are
        counted, so /status, /metrics and subscribers show it."""
        self.stats.reset(st.name, Reset.LOST_STATE)
        self.stats.count("resets")
        self.stats.missing(st.name, seq)
        log.warning("stream %s: met at seq %d without its state (a restart without a checkpoint "
                    "of it, or freed when idle): its first %d frames were not run here, and it "
                    "goes on from a fresh state", st.name, seq, seq)  # fmt: skip

    def _reset(self, st: StreamState, msg: InputMessage, shape: tuple[int, ...]) -> None:
        if st.session != msg.session:
            cause = Reset.NEW_SESSION
        elif msg.seq != st.next_seq:
            cause = Reset.SEQ_GAP
            missing = max(0, msg.seq - st.next_seq)
            self.stats.missing(st.name, missing)
        else:
            cause = Reset.SIZE_CHANGE
        self.stats.reset(st.name, cause)
        self.stats.count("resets")
        st.resets += 1
        # A few lines per stream, not one per frame when something keeps resetting it.
        level = logging.INFO if st.resets <= RESET_LOG_LINES else logging.DEBUG
        log.log(level, "stream %s: %s at seq %d, state reset", msg.stream, cause, msg.seq)
        if cause is Reset.NEW_SESSION and msg.session in st.recent_sessions:
            self.stats.count("session_flips")
            if self.stats.counts["session_flips"] == 1 or st.resets == RESET_LOG_LINES:
                log.warning(
                    "stream %s: frames of two sessions alternate (two captures with one "
                    "stream id?); every switch resets the state",
                    msg.stream,
                )
        st.recent_sessions.append(st.session)
        st.restart(msg.session)
        self.stats.open(st.name, msg.session)

    def _end(self, msg: InputMessage, now: float) -> list[Result]:
        if msg.stream == PROBE_STREAM:
            if msg.ack is not None and msg.watch is not None:  # a lossless subscriber: no answer
                self.continuity.credits.ack(msg.watch, msg.session, msg.ack_session, msg.ack, now)
                self.stats.count("acks")
                return []
            self.stats.count("probes")
            resume = (
                self.continuity.resume_point(msg.watch, msg.resume, now) if msg.resume else None
            )
            return [EndResult(msg.stream, msg.session, msg.seq, watch=msg.watch, resume=resume)]
        st = self.streams.get(msg.stream)
        results: list[Result] = []
        if st is not None and st.session != msg.session:
            # A late eos of an earlier session (a restarted capture): the current one goes on.
            self.stats.count("stale_eos")
            log.info("stream %s: eos of an earlier session ignored", msg.stream)
            return [EndResult(msg.stream, msg.session, msg.seq)]
        if self.continuity.eos_early(st, msg, now):
            return []
        # What ran here, not what the eos says was sent: a sender is told its session ended
        # here, and it is done only if every frame it sent ran.
        self.continuity.remember_end(msg.stream, msg.session, st.next_seq if st else 0)
        if st is not None:
            del self.streams[msg.stream]
            results += self._flush(st)
            if msg.seq != st.next_seq:
                missing = max(0, msg.seq - st.next_seq)
                self.stats.missing(st.name, missing)
                log.warning(
                    "stream %s: eos says %d frames were sent, %d arrived in order",
                    msg.stream,
                    msg.seq,
                    st.next_seq,
                )
            self._ended(st, "eos")
        results.append(EndResult(msg.stream, msg.session, msg.seq))
        self.stats.count("eos")
        return results

    def _ended(self, st: StreamState, why: str) -> None:
        done = self.stats.ended(st.name, why)
        if done is not None:
            log.info(
                "stream %s: ended (%s): %d frames in, %d processed, %.1f frames/s",
                st.name,
                why,
                done.received,
                done.processed,
                done.fps(),
            )

    # -- timing ---------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earliest time at which a partial chunk is due, or None if none waits."""
        pending = [st.since for st in self.streams.values() if st.count]
        return min(pending) + self.max_wait_s if pending else None

    def due(self, now: float) -> list[Result]:
        """Run every full chunk and every partial one that has waited `max_wait_s`."""
        late = [
            st for st in self.streams.values() if st.count and now - st.since >= self.max_wait_s
        ]
        return self._run(late)

    def run_ready(self) -> list[Result]:
        """Run the full chunks, streams of one frame shape in one pass (Batcher)."""
        return self._run([])

    def evict_idle(self, now: float, idle_s: float) -> list[Result]:
        """End streams that sent nothing for `idle_s` (a sender gone without eos)."""
        results: list[Result] = []
        for name, st in list(self.streams.items()):
            if now - st.last_seen >= idle_s:
                log.info("stream %s: idle for %.0f s, state freed", name, now - st.last_seen)
                results += self._flush(st)
                results.append(EndResult(name, st.session, st.next_seq))
                del self.streams[name]
                self.stats.count("evicted")
                self._ended(st, "idle")
        return results

    def pending_frames(self) -> int:
        return sum(st.count for st in self.streams.values())

    def flush_all(self, give_up: Callable[[], bool] | None = None) -> list[Result]:
        """Run every partial chunk; once `give_up()` is true the rest are Failed results
        (NOT_FLUSHED), so a shutdown stays bounded and says what it lost."""
        if give_up is None:
            return self._run([st for st in self.streams.values() if st.count])
        results: list[Result] = self.run_ready()
        for st in self.streams.values():
            if give_up() and st.count:
                why = f"{st.count} frames of stream {st.name!r} not run: shutdown time ran out"
                results.append(Failed(Drop.NOT_FLUSHED, why, st.name, st.count))
                # The stream goes on (after a restart, from its checkpoint) at the first frame
                # not run, so that the checkpoint taken now does not skip them: a lossless
                # sender is asked for them again.
                st.next_seq = st.seqs[0]
                st.buffer, st.count, st.seqs, st.t_ns, st.replays = None, 0, [], [], []
                continue
            results += self._flush(st)
        return results

    # -- compute --------------------------------------------------------------------------
    def _flush(self, st: StreamState) -> list[Result]:
        """Run the stream's chunk now (with every full chunk waiting)."""
        return self._run([st])

    def _run(self, streams: list[StreamState]) -> list[Result]:
        """Run the chunks of `streams` and of every full chunk waiting, batched."""
        group = list(self._ready.values())
        self._ready.clear()
        taken = {id(st) for st in group}
        group += [st for st in streams if st.count and id(st) not in taken]
        if not group:
            return []
        jobs = [
            Job(st.name, st.buffer[: st.count], st.state) for st in group if st.buffer is not None
        ]
        outcomes = self.batcher.run(jobs)
        results: list[Result] = []
        for st, outcome in zip(group, outcomes, strict=True):
            seqs, t_ns, replays = st.seqs, st.t_ns, st.replays
            newest = st.buffer[st.count - 1] if st.buffer is not None else None  # a view
            st.buffer, st.count, st.seqs, st.t_ns, st.replays = None, 0, [], [], []
            if isinstance(outcome, Broken):
                # A value, not an exception: the other streams' results must go out.
                st.restart(st.session)
                self.stats.reset(st.name, Reset.MODEL_FAILED)
                self.stats.count("frames_failed", len(seqs))
                why = (
                    f"{len(seqs)} frames of stream {st.name!r} failed in the model: {outcome.error}"
                )
                results.append(
                    Failed(Drop.MODEL_FAILED, why, st.name, len(seqs), session=st.session)
                )  # its sender is told
                continue
            st.state = outcome.state
            results.append(ChunkResult(st.name, st.session, seqs, t_ns, st.discontinuity,
                                       outcome.layers, outcome.quant, st.fps, outcome.compute_s,
                                       replays if any(replays) else [],
                                       input_frame=newest))  # fmt: skip
            st.discontinuity = False
            self.stats.count("frames_out", len(seqs))
            self.stats.processed(st.name, len(seqs), outcome.compute_s)
        return results
