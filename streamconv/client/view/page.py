"""One open page: its options and what it has been sent; and the JPEG cache all pages share.

A page is sent the newest state on each tick, never a queue: a slow page skips frames. What a
page holds between ticks is a version number and a history cursor per layer, nothing more.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from streamconv.client.view.hub import Hub, LayerView, Shown
from streamconv.client.view.render import Scaling, colourise, encode_jpeg

Key = tuple[str, str]  # (stream, layer)


class Encoder:
    """The latest JPEG per (stream, layer, scaling): every page showing it shares one encode."""

    def __init__(self, quality: int) -> None:
        self.quality = quality
        self._cache: dict[tuple[str, str, str], tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self.encoded = 0

    def jpeg(self, key: Key, scaling: Scaling, shown: Shown) -> bytes:
        slot = (*key, scaling)
        with self._lock:
            hit = self._cache.get(slot)
        if hit is not None and hit[0] == shown.version:
            return hit[1]
        data = encode_jpeg(colourise(shown.plane, shown.colormap, shown.lo, shown.hi), self.quality)
        with self._lock:
            self._cache[slot] = (shown.version, data)
            self.encoded += 1
        return data

    def forget(self, keep: set[Key]) -> None:
        """Drop the images of layers that are gone (bounded by the hub's streams)."""
        with self._lock:
            for slot in [s for s in self._cache if (s[0], s[1]) not in keep]:
                del self._cache[slot]


@dataclass
class Page:
    hub: Hub
    scaling: Scaling = "frame"
    plot: str = "mean"
    sent: dict[Key, int] = field(default_factory=dict)  # image version last sent
    cursor: dict[Key, int] = field(default_factory=dict)  # history samples already sent

    def options(self, message: dict[str, Any]) -> None:
        """Apply a page's message; anything unknown is ignored (a page cannot break the view)."""
        if message.get("scaling") in ("frame", "running"):
            self.scaling = message["scaling"]
        if message.get("plot") in ("mean", "pixel"):
            self.plot = message["plot"]
        probe = message.get("probe")
        if isinstance(probe, dict) and isinstance(probe.get("stream"), str):
            x, y = probe.get("x"), probe.get("y")
            if isinstance(x, int | float) and isinstance(y, int | float):
                where = (min(max(float(x), 0.0), 1.0), min(max(float(y), 0.0), 1.0))
                self.hub.set_probe(probe["stream"], where)

    def tick(self, endpoint: str) -> tuple[dict[str, Any], list[tuple[Key, Shown]]]:
        """The state message, and the layers whose newer image this page has not had yet."""
        hub, now = self.hub, time.monotonic()
        streams: list[dict[str, Any]] = []
        due: list[tuple[Key, Shown]] = []
        live: set[Key] = set()
        with hub.lock:
            for sv in hub.streams.values():
                layers = []
                # The input first, then the layers in pipeline order (sorted() is stable).
                for lv in sorted(sv.layers.values(), key=lambda v: not v.input):
                    key = (sv.stream, lv.layer)
                    live.add(key)
                    shown = lv.shown(self.scaling)
                    layers.append(self._layer(lv, shown, now))
                    if shown is not None and self.sent.get(key) != shown.version:
                        due.append((key, shown))
                status = sv.status(now, hub.stale_s)
                streams.append({"stream": sv.stream, "session": sv.session, "status": status,
                                "layers": layers})  # fmt: skip
            connected, refused = hub.connected, hub.refused
        self.sent = {k: v for k, v in self.sent.items() if k in live}
        self.cursor = {k: v for k, v in self.cursor.items() if k in live}
        worker = "connected" if connected else "disconnected"
        state = {"type": "state", "worker": worker, "endpoint": endpoint, "refused": refused,
                 "streams": streams}  # fmt: skip
        return state, due

    def _layer(self, lv: LayerView, shown: Shown | None, now: float) -> dict[str, Any]:
        key = (lv.stream, lv.layer)
        fps, latency = lv.rate(now)
        taken = self.cursor.get(key, 0)
        new = min(lv.samples - taken, len(lv.history))
        points = list(lv.history)[len(lv.history) - new :] if new > 0 else []
        self.cursor[key] = lv.samples
        sv = self.hub.streams[lv.stream]
        _, h, w = lv.shape
        return {
            "layer": lv.layer,
            "input": lv.input,
            "fps": round(fps, 2),
            "latency_ms": None if latency is None else round(latency, 2),
            "width": w,
            "height": h,
            "channels": lv.shape[0],
            "min": _num(lv.frame_min),
            "max": _num(lv.frame_max),
            "lo": _num(shown.lo) if shown else None,
            "hi": _num(shown.hi) if shown else None,
            "colormap": shown.colormap if shown else "sequential",
            "frames": lv.frames,
            "lost": lv.lost,
            "resets": lv.resets,
            "reset_ago_s": None if lv.last_reset is None else round(now - lv.last_reset, 2),
            "seq": lv.last_seq,
            "image": shown.version if shown else 0,
            "probe": list(sv.probe) if sv.probe else None,
            "points": [[round(t, 4), _num(m), _num(p)] for t, m, p in points],
        }

    def mark_sent(self, key: Key, version: int) -> None:
        self.sent[key] = version


def _num(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)
