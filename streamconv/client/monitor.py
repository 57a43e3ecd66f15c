"""Subscriber-side sinks: per-layer frames/s and latency, preview videos and .npy files."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
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

    def add(self, header: dict[str, Any], now_ns: int | None = None) -> None:
        if header["kind"] == "output":
            key = (header["stream"], header["layer"])
            self.layers[key].add(header, time.time_ns() if now_ns is None else now_ns)

    def table(self) -> str:
        rows = ["stream/layer                 frames   frames/s   latency p50 ms   p99 ms"]
        for (stream, layer), s in sorted(self.layers.items()):
            rows.append(
                f"{stream + '/' + layer:<28} {s.frames:>6} {s.fps():>10.1f} "
                f"{s.percentile(50):>16.2f} {s.percentile(99):>8.2f}"
            )
        return "\n".join(rows)


class PreviewWriter:
    """One viewable .mp4 per (stream, layer), scaled to 8 bit by the range seen so far."""

    def __init__(self, folder: Path, fps: float = 25.0) -> None:
        self.folder, self.fps = folder, fps
        self.writers: dict[tuple[str, str], Any] = {}
        self.ranges: dict[tuple[str, str], tuple[float, float]] = {}
        self.paths: list[Path] = []

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None:
        key = (header["stream"], header["layer"])
        image = frame[:3].transpose(1, 2, 0) if frame.shape[0] == 3 else frame[0]
        lo, hi = self.ranges.get(key, (float(image.min()), float(image.max())))
        lo, hi = min(lo, float(image.min())), max(hi, float(image.max()))
        self.ranges[key] = (lo, hi)
        scaled = np.clip((image - lo) * (255.0 / max(hi - lo, 1e-12)), 0, 255).astype(np.uint8)
        writer = self.writers.get(key)
        if writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{key[0]}_{key[1]}.mp4"
            size = (scaled.shape[1], scaled.shape[0])
            fourcc = cv2.VideoWriter.fourcc(*"mp4v")
            writer = cv2.VideoWriter(str(path), fourcc, self.fps, size, scaled.ndim == 3)
            self.writers[key] = writer
            self.paths.append(path)
        writer.write(scaled)

    def close(self) -> list[Path]:
        for writer in self.writers.values():
            writer.release()
        return self.paths


class NpyWriter:
    """One .npy per output frame: {stream}_{layer}_{session8}_{seq:06d}.npy, (C, H, W)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None:
        # The session keeps a second run (or a looped file) from overwriting the first.
        name = (
            f"{header['stream']}_{header['layer']}_{header['session'][:8]}_{header['seq']:06d}.npy"
        )
        np.save(self.folder / name, frame)
