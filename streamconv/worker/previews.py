"""Previews: small, rate-limited copies of the outputs for viewers (`streamconv view`).

A viewer that subscribed to every full-size output would cost the worker as much again as a
real subscriber (BENCHMARKS.md, View). So the worker also publishes, only while someone
subscribes to `_preview/`, at most `fps` previews a second per stream and layer: the newest
frame of a chunk, subsampled to at most `side` pixels a side, as uint8 with scale and offset.
A preview says whether any output since the previous one was a discontinuity, and how many of
the stream's frames the worker never ran (dropped or missing), since a viewer sees only some
of the outputs and cannot count that itself. A frame that comes before its preview is due is
kept (one per stream and layer, replaced by newer ones) and sent when it is due, so the last
frame of a burst is always shown.

The stream's input, as the model gets it (after the colour step), is previewed the same way
under the layer name INPUT, while a subscription covers its topic: the newest input frame of
a chunk, which the engine hands over as a view into the chunk's buffer (no copy).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streamconv.wire import protocol
from streamconv.wire.protocol import INPUT
from streamconv.wire.quant import FULL_SCALE, dequantise
from streamconv.worker.results import ChunkResult

PREFIX = protocol.PREVIEW_PREFIX.encode()


class Previews:
    def __init__(self, fps: float, side: int) -> None:
        self.period_s = 1.0 / fps if fps > 0 else math.inf
        self.side = side
        self._last: dict[tuple[str, str], float] = {}
        self._reset: set[tuple[str, str]] = set()  # a discontinuity not yet previewed
        self._pending: dict[tuple[str, str], Callable[[], list[Any]]] = {}

    @staticmethod
    def wanted(subscriptions: object) -> bool:
        """Does any subscription ask for previews? (An empty one, 'everything', does not.)"""
        return any(t.startswith(PREFIX) for t in subscriptions)  # type: ignore[attr-defined]

    @staticmethod
    def input_wanted(subscriptions: object, stream: str) -> bool:
        """Does a subscription cover the stream's input preview topic?"""
        topic = protocol.preview_topic(stream, INPUT)
        return any(topic.startswith(t) and t.startswith(PREFIX) for t in subscriptions)  # type: ignore[attr-defined]

    def offer(
        self, stream: str, layer: str, make: Callable[[], list[Any]], discontinuity: bool,
        now: float | None = None,
    ) -> list[Any] | None:  # fmt: skip
        """The preview message to send now (built by `make`), or None: then it waits."""
        key = (stream, layer)
        if discontinuity:
            self._reset.add(key)
        now = time.monotonic() if now is None else now
        if now - self._last.get(key, -math.inf) < self.period_s:
            self._pending[key] = make  # the newest waits; an older one is dropped
            return None
        self._pending.pop(key, None)
        self._last[key] = now
        return make()

    def due(self, now: float | None = None, stream: str | None = None) -> list[list[Any]]:
        """Waiting previews whose time has come (all of `stream`'s, when it is given)."""
        now = time.monotonic() if now is None else now

        def ready_now(key: tuple[str, str]) -> bool:
            if stream is not None:
                return key[0] == stream
            return now - self._last.get(key, -math.inf) >= self.period_s

        ready = [k for k in self._pending if ready_now(k)]
        out = []
        for key in ready:
            self._last[key] = now
            out.append(self._pending.pop(key)())
        return out

    def take_reset(self, stream: str, layer: str) -> bool:
        key = (stream, layer)
        was = key in self._reset
        self._reset.discard(key)
        return was

    def forget(self, stream: str) -> None:
        """The stream ended: its next session starts with a fresh preview."""
        for key in [k for k in self._last if k[0] == stream]:
            del self._last[key]
            self._reset.discard(key)
            self._pending.pop(key, None)

    def shrink(
        self, frame: np.ndarray, scale: float | None = None, offset: float | None = None
    ) -> np.ndarray:
        """(C, H, W) in the wire dtype -> float32 (C, h, w), every s-th pixel (cheap: no pass
        over the full frame), with uint8 frames scaled back by `scale` and `offset`."""
        step = max(1, math.ceil(max(frame.shape[-2:]) / self.side))
        small = frame[:, ::step, ::step]
        if frame.dtype == np.uint8 and scale is not None and offset is not None:
            return dequantise(small, scale, offset)
        return small.astype(np.float32)

    def input_message(self, r: ChunkResult, lost: Callable[[str], int]) -> list[Any]:
        """The preview of the chunk's newest input frame (r.input_frame, not None), as values
        in the model's range: integer pixels (frames that travel raw to the device) are divided
        by their full scale here, on the few pixels kept."""
        frame = r.input_frame
        if frame is None:  # pragma: no cover - the publisher offers only chunks that have one
            msg = "no input frame in this chunk"
            raise ValueError(msg)
        step = max(1, math.ceil(max(frame.shape[-2:]) / self.side))
        small = frame[:, ::step, ::step].astype(np.float32)
        full = FULL_SCALE.get(frame.dtype)
        if full is not None:
            small /= full
        last = len(r.seqs) - 1
        return protocol.encode_preview(
            r.stream, INPUT, r.session, r.seqs[last], r.t_ns[last], small,
            full_shape=frame.shape, lost=lost(r.stream), fps=r.fps,
            discontinuity=self.take_reset(r.stream, INPUT),
        )  # fmt: skip
