"""Frames in, layer outputs out: per-stream state, chunking, resets. No sockets here.

Each stream has its own temporal state for the one shared model. Frames are gathered into
chunks of up to `chunk` frames (or whatever arrived within `max_wait_s`) and run in time
order. A new session, a gap in `seq` or a change of frame size starts the stream afresh and
marks the next output as a discontinuity; eos flushes the stream and frees its state.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from streamconv.errors import ShapeError, StreamconvError
from streamconv.layers import Output, Sequential, State
from streamconv.protocol import InputMessage, to_float

log = logging.getLogger(__name__)

# OpenCV delivers BGR; luma weights in that order (ITU-R BT.601, as cv2.cvtColor uses).
_BGR_TO_GRAY = np.array([0.114, 0.587, 0.299], dtype=np.float32)


def frame_to_chw(frame: np.ndarray, color: str, in_channels: int = 1) -> np.ndarray:
    """The colour step: a decoded frame (H,W) or (H,W,C) as float32 (C,H,W) for the model."""
    f = to_float(frame)
    f = f[:, :, None] if f.ndim == 2 else f
    c = f.shape[2]
    if color == "gray":
        if c in (3, 4):
            f = (f[:, :, :3] @ _BGR_TO_GRAY)[:, :, None]
        elif c != 1:
            msg = f"color 'gray' takes 1, 3 (BGR) or 4 (BGRA) channels, frame has {c}"
            raise ShapeError(msg)
    elif color == "rgb":
        if c not in (3, 4):
            msg = f"color 'rgb' takes 3 (BGR) or 4 (BGRA) channels, frame has {c}"
            raise ShapeError(msg)
        f = f[:, :, 2::-1]
    elif c != in_channels:
        msg = f"frame has {c} channels, the model takes {in_channels} (color 'as-is')"
        raise ShapeError(msg)
    return np.ascontiguousarray(f.transpose(2, 0, 1))


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """Outputs for consecutive frames of one stream: layers[name] is (T, C, H, W)."""

    stream: str
    session: str
    seqs: list[int]
    t_ns: list[int]
    discontinuity: bool
    layers: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class EndResult:
    """The stream's session ended; `seq` is the frame count the sender reported."""

    stream: str
    session: str
    seq: int


Result = ChunkResult | EndResult


@dataclass
class _Stream:
    name: str
    session: str
    next_seq: int = 0
    shape: tuple[int, ...] | None = None
    state: State | None = None
    discontinuity: bool = True
    frames: list[np.ndarray] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    t_ns: list[int] = field(default_factory=list)
    since: float = 0.0

    def restart(self, session: str) -> None:
        self.session, self.state, self.shape, self.discontinuity = session, None, None, True


class Engine:
    """Runs `model` (a Sequential returning every stage) over many streams at once."""

    def __init__(
        self,
        model: Sequential,
        *,
        device: torch.device,
        dtype: torch.dtype,
        chunk: int = 8,
        max_wait_s: float = 0.02,
        color: str = "gray",
        in_channels: int = 1,
        max_streams: int = 64,
        publish: list[str] | None = None,
    ) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.chunk, self.max_wait_s = chunk, max_wait_s
        self.color, self.in_channels, self.max_streams = color, in_channels, max_streams
        self.publish = publish if publish is not None else model.stage_names()
        self.streams: dict[str, _Stream] = {}
        self.stats: Counter[str] = Counter()
        self._staging: dict[tuple[int, ...], torch.Tensor] = {}

    # -- input ----------------------------------------------------------------------------
    def submit(self, msg: InputMessage, now: float) -> list[Result]:
        """Take one decoded message; returns the results it completes.

        Raises StreamconvError for a frame that cannot enter the model (nothing changes then).
        """
        if msg.kind == "eos":
            return self._end(msg)
        if msg.frame is None:
            err = f"frame message of stream {msg.stream!r} carries no pixels"
            raise StreamconvError(err)
        chw = frame_to_chw(msg.frame, self.color, self.in_channels)
        st = self.streams.get(msg.stream)
        results: list[Result] = []
        if st is None:
            if len(self.streams) >= self.max_streams:
                err = f"too many streams ({self.max_streams}); end one with eos first"
                raise StreamconvError(err)
            st = self.streams[msg.stream] = _Stream(msg.stream, msg.session)
        elif st.session != msg.session or msg.seq != st.next_seq or chw.shape != st.shape:
            results += self._flush(st)
            why = (
                "new session"
                if st.session != msg.session
                else ("seq gap" if msg.seq != st.next_seq else "frame size change")
            )
            if why == "seq gap":
                self.stats["seq_gaps"] += 1
                self.stats["frames_missing"] += max(0, msg.seq - st.next_seq)
            log.info("stream %s: %s at seq %d, state reset", msg.stream, why, msg.seq)
            self.stats["resets"] += 1
            st.restart(msg.session)
        if not st.frames:
            st.since = now
        st.shape = chw.shape
        st.frames.append(chw)
        st.seqs.append(msg.seq)
        st.t_ns.append(msg.t_ns)
        st.next_seq = msg.seq + 1
        self.stats["frames_in"] += 1
        if len(st.frames) >= self.chunk:
            results += self._flush(st)
        return results

    def _end(self, msg: InputMessage) -> list[Result]:
        st = self.streams.get(msg.stream)
        results: list[Result] = []
        if st is not None and st.session != msg.session:
            # A late eos of an earlier session (a restarted capture): the current one goes on.
            self.stats["stale_eos"] += 1
            log.info("stream %s: eos of an earlier session ignored", msg.stream)
            return [EndResult(msg.stream, msg.session, msg.seq)]
        if st is not None:
            del self.streams[msg.stream]
            results += self._flush(st)
            if msg.seq != st.next_seq:
                missing = max(0, msg.seq - st.next_seq)
                self.stats["frames_missing"] += missing
                log.warning(
                    "stream %s: eos says %d frames were sent, %d arrived in order",
                    msg.stream,
                    msg.seq,
                    st.next_seq,
                )
        results.append(EndResult(msg.stream, msg.session, msg.seq))
        self.stats["eos"] += 1
        return results

    # -- timing ---------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earliest time at which a partial chunk is due, or None if none waits."""
        pending = [st.since for st in self.streams.values() if st.frames]
        return min(pending) + self.max_wait_s if pending else None

    def due(self, now: float) -> list[Result]:
        """Run every partial chunk that has waited `max_wait_s`."""
        results: list[Result] = []
        for st in self.streams.values():
            if st.frames and now - st.since >= self.max_wait_s:
                results += self._flush(st)
        return results

    def flush_all(self) -> list[Result]:
        results: list[Result] = []
        for st in self.streams.values():
            results += self._flush(st)
        return results

    # -- compute --------------------------------------------------------------------------
    def _flush(self, st: _Stream) -> list[Result]:
        if not st.frames:
            return []
        frames, seqs, t_ns = st.frames, st.seqs, st.t_ns
        st.frames, st.seqs, st.t_ns = [], [], []
        x = self._to_device(np.stack(frames, axis=1)[None])
        try:
            with torch.inference_mode():
                out, st.state = self.model.step(x, st.state)
        except (StreamconvError, RuntimeError) as e:
            st.restart(st.session)
            self.stats["frames_failed"] += len(frames)
            msg = f"{len(frames)} frames of stream {st.name!r} failed in the model: {e}"
            raise StreamconvError(msg) from e
        layers = _gather(out, self.publish)
        result = ChunkResult(
            stream=st.name,
            session=st.session,
            seqs=seqs,
            t_ns=t_ns,
            discontinuity=st.discontinuity,
            layers=layers,
        )
        st.discontinuity = False
        self.stats["frames_out"] += len(frames)
        return [result]

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(batch)
        if self.device.type != "cuda":
            return host.to(self.dtype)
        # Pinned staging makes the copy asynchronous. Reusing it is safe: the previous
        # chunk's outputs were copied back (a synchronising .cpu()) before this call.
        staging = self._staging.get(batch.shape)
        if staging is None:
            staging = self._staging[batch.shape] = torch.empty(batch.shape).pin_memory()
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True).to(self.dtype)


def _gather(out: object, names: list[str]) -> dict[str, np.ndarray]:
    """(T, C, H, W) float32 numpy per published stage, one device->host copy each."""
    stages = out.items() if isinstance(out, Output) else []
    return {name: t[0].transpose(0, 1).float().cpu().numpy() for name, t in stages if name in names}
