"""The monitor sink: frames/s and capture-to-subscriber latency per (stream, layer), as a table."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LATENCY_SAMPLES = 100_000  # the most recent latencies kept per layer for percentiles


@dataclass
class LayerStats:
    frames: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def add(self, header: dict[str, Any], now_ns: int) -> None:
        if not self.frames:
            self.first_ns = now_ns
        self.frames += 1
        self.last_ns = now_ns
        self.latency_ms.append((now_ns - header["t_ns"]) / 1e6)

    def fps(self) -> float:
        span = (self.last_ns - self.first_ns) / 1e9
        return (self.frames - 1) / span if span > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latency_ms, q)) if self.latency_ms else float("nan")


class Monitor:
    """Frames/s and capture-to-subscriber latency, per (stream, layer)."""

    def __init__(self) -> None:
        self.layers: dict[tuple[str, str], LayerStats] = defaultdict(LayerStats)

    def add(
        self, header: dict[str, Any], frame: np.ndarray | None = None, now_ns: int | None = None
    ) -> None:
        if header["kind"] == "output":
            key = (header["stream"], header["layer"])
            self.layers[key].add(header, time.time_ns() if now_ns is None else now_ns)

    def close(self) -> list[Path]:
        return []  # it writes no file: its table is printed by whoever runs it

    def table(self) -> str:
        rows = ["stream/layer                 frames   frames/s   latency p50 ms   p99 ms"]
        for (stream, layer), s in sorted(self.layers.items()):
            rows.append(
                f"{stream + '/' + layer:<28} {s.frames:>6} {s.fps():>10.1f} "
                f"{s.percentile(50):>16.2f} {s.percentile(99):>8.2f}"
            )
        return "\n".join(rows)
