"""What the view knows of every stream: each layer's latest frame, rates, ranges and history.

The stream's input (the worker's preview of it, layer INPUT) is kept like a layer and shown as
a picture, in colour when it has three channels, not through a colour map.

The receiving thread writes (`take`), page sessions read (`snapshot`, `layer_frame`); one lock
guards both, held only for bookkeeping. Memory is bounded: one latest frame per layer (scaled
down to the display size), a fixed-length history, and at most `max_streams` streams.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamconv.client.view.render import (
    Scaling,
    choose_colormap,
    display_range,
    fit,
    picture,
    tile,
)
from streamconv.wire.protocol import INPUT

HISTORY_MAX = 4096  # samples kept per layer, whatever the rate
RATE_WINDOW_S = 1.0  # frames/s and latency are over the last second of arrivals


@dataclass
class Shown:
    """One layer's latest frame as the page shows it: the plane to colour and its range."""

    version: int
    plane: np.ndarray  # (H, W) float, channels tiled (an RGB input: (H, W, 3)), scaled down
    colormap: str  # a colour map's name, or "gray" / "rgb" for the input's picture
    lo: float
    hi: float


@dataclass
class LayerView:
    stream: str
    layer: str
    session: str = ""  # of the latest output: a new one restarts the ranges and seq count
    version: int = 0  # bumps with every frame kept for display
    plane: np.ndarray | None = None
    header: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, int, int] = (0, 0, 0)
    frames: int = 0
    lost: int = 0
    resets: int = 0
    last_reset: float | None = None
    ended: bool = False
    last_seen: float = 0.0
    frame_min: float = math.nan
    frame_max: float = math.nan
    run_min: float = math.inf
    run_max: float = -math.inf
    arrivals: deque[tuple[float, int, float]] = field(default_factory=deque)  # t, seq, ms
    history: deque[tuple[float, float | None, float | None]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_MAX)
    )
    samples: int = 0  # history entries ever added: a page's cursor into `history`
    last_seq: int | None = None

    @property
    def input(self) -> bool:
        return self.layer == INPUT

    def shown(self, scaling: Scaling) -> Shown | None:
        if self.plane is None:
            return None
        running = scaling == "running"
        rng = (self.run_min, self.run_max) if running else (self.frame_min, self.frame_max)
        if self.input:
            # Pixels in 0..1 (every integer input) are shown as they are, not stretched.
            normal = self.run_min >= 0.0 and self.run_max <= 1.0
            colormap = "rgb" if self.plane.ndim == 3 else "gray"
            lo, hi = (0.0, 1.0) if normal else rng
            return Shown(self.version, self.plane, colormap, lo, hi)
        colormap = choose_colormap(self.run_min)
        lo, hi = display_range(colormap, rng)
        return Shown(self.version, self.plane, colormap, lo, hi)

    def rate(self, now: float) -> tuple[float, float | None]:
        """(outputs/s, median capture-to-view latency in ms) over the last second of arrivals.

        The rate counts seq numbers, not messages, so it is the layer's own rate whether the
        view gets every output or a preview now and then."""
        while self.arrivals and now - self.arrivals[0][0] > RATE_WINDOW_S:
            self.arrivals.popleft()
        if not self.arrivals:
            return 0.0, None
        first_t, first_seq, _ = self.arrivals[0]
        last_t, last_seq, _ = self.arrivals[-1]
        if last_t - first_t >= RATE_WINDOW_S / 2:  # outputs between the first and last seen
            fps = (last_seq - first_seq) / (last_t - first_t)
        else:  # too few arrivals to time: count them
            fps = (last_seq - first_seq + 1) / RATE_WINDOW_S
        return fps, float(np.median([lat for _, _, lat in self.arrivals]))


@dataclass
class StreamView:
    stream: str
    session: str = ""
    layers: dict[str, LayerView] = field(default_factory=dict)
    probe: tuple[float, float] | None = (0.5, 0.5)  # normalised x, y; None: frame mean only
    last_seen: float = 0.0

    def ended(self) -> bool:
        """Every layer has ended (the input has no eos of its own: it ends with them)."""
        layers = [v for v in self.layers.values() if not v.input]
        return bool(layers) and all(v.ended for v in layers)

    def status(self, now: float, stale_s: float) -> str:
        if self.ended():
            return "ended"
        return "stale" if now - self.last_seen > stale_s else "live"


class Hub:
    def __init__(self, *, max_side: int = 640, max_streams: int = 32, stale_s: float = 2.0) -> None:
        self.max_side, self.max_streams, self.stale_s = max_side, max_streams, stale_s
        self.streams: dict[str, StreamView] = {}
        self.lock = threading.Lock()
        self.connected = False
        self.refused: str | None = None  # why the worker's last handshake refused the view
        self.evicted = 0  # streams dropped from the view to stay within max_streams
        self.received = 0
        self.start = time.monotonic()

    def _stream(self, name: str, now: float) -> StreamView:
        view = self.streams.get(name)
        if view is None:
            if len(self.streams) >= self.max_streams:
                oldest = min(self.streams.values(), key=lambda v: v.last_seen)
                del self.streams[oldest.stream]
                self.evicted += 1
            view = self.streams[name] = StreamView(name)
        view.last_seen = now
        return view

    def take(self, header: dict[str, Any], frame: np.ndarray | None, *, display: bool) -> None:
        """Account one output (or eos: frame None); keep it for display if `display`.

        The receiver passes display=False for outputs already superseded by a newer one of
        the same layer in hand: they count (rate, seq, probe) but are not range-scanned.
        """
        now = time.monotonic()
        with self.lock:
            self.received += 1
            sv = self._stream(header["stream"], now)
            lv = sv.layers.get(header["layer"])
            if lv is None:
                lv = sv.layers[header["layer"]] = LayerView(sv.stream, header["layer"])
            lv.last_seen = now
            sv.session = header["session"]
            # A stream's first start, or a start after its end, is no reset of running state.
            start = header["session"] != lv.session and (not lv.session or lv.ended)
            if header["session"] != lv.session:
                lv.session = header["session"]
                lv.run_min, lv.run_max, lv.last_seq = math.inf, -math.inf, None
            if frame is None:
                lv.ended = True
                if sv.ended() and INPUT in sv.layers:
                    sv.layers[INPUT].ended = True
                return
            lv.ended = False
            self._account(lv, header, now, start)
            probe = _probe(frame, sv.probe)
            if not display:
                lv.history.append((now - self.start, None, probe))
                lv.samples += 1
                return
        # The scans run outside the lock: the page sessions keep going meanwhile.
        lo, hi, mean = _scan(frame)
        plane = fit(picture(frame) if lv.input else tile(frame), self.max_side)
        with self.lock:
            lv.frame_min, lv.frame_max = lo, hi
            lv.run_min, lv.run_max = min(lv.run_min, lo), max(lv.run_max, hi)
            full = header.get("full_shape") if header.get("preview") else None
            lv.plane, lv.header = plane, header
            lv.shape = tuple(full) if full else frame.shape
            lv.version += 1
            lv.history.append((now - self.start, mean, probe))
            lv.samples += 1

    def _account(self, lv: LayerView, header: dict[str, Any], now: float, start: bool) -> None:
        seq = header["seq"]
        if header.get("discontinuity") and not start:
            lv.resets += 1
            lv.last_reset = now
        preview = bool(header.get("preview"))
        if preview:  # a sample of the outputs: the worker counts what the stream lost
            lv.frames = seq + 1
            lv.lost = header.get("lost", lv.lost)
        else:
            lv.frames += 1
            gap = lv.last_seq is not None and seq > lv.last_seq + 1
            if gap and not header.get("discontinuity"):
                lv.lost += seq - (lv.last_seq or 0) - 1
        if header.get("discontinuity") or (lv.last_seq is not None and seq < lv.last_seq):
            lv.arrivals.clear()  # the rate restarts with the stream
        lv.last_seq = seq
        lv.arrivals.append((now, seq, (time.time_ns() - header["t_ns"]) / 1e6))

    def set_probe(self, stream: str, probe: tuple[float, float] | None) -> None:
        with self.lock:
            if stream in self.streams:
                self.streams[stream].probe = probe

    def layer(self, stream: str, layer: str) -> LayerView | None:
        with self.lock:
            sv = self.streams.get(stream)
            return None if sv is None else sv.layers.get(layer)


def _scan(frame: np.ndarray) -> tuple[float, float, float]:
    """(min, max, mean) of the finite values; NaN for all three if there are none."""
    flat = frame.reshape(-1)
    lo, hi = float(flat.min()), float(flat.max())
    mean = float(flat.mean(dtype=np.float64))
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi, mean
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    return float(finite.min()), float(finite.max()), float(finite.mean(dtype=np.float64))


def _probe(frame: np.ndarray, where: tuple[float, float] | None) -> float | None:
    if where is None:
        return None
    _, h, w = frame.shape
    x, y = min(int(where[0] * w), w - 1), min(int(where[1] * h), h - 1)
    value = float(frame[0, y, x])
    return value if math.isfinite(value) else None
