"""Subscriber-side sinks: per-layer frames/s and latency, preview videos and .npy files."""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

LATENCY_SAMPLES = 100_000  # the most recent latencies kept per layer for percentiles
DEFAULT_FPS = 25.0  # preview frame rate when the outputs do not say the source's
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(value: object, max_chars: int = 64) -> str:
    """`value` as one harmless file-name component: [A-Za-z0-9_.-] only, no '..', no leading
    dot, never empty. Header fields come from the network, so none reaches a path unchanged."""
    name = _UNSAFE.sub("_", str(value)[:max_chars])
    name = re.sub(r"\.\.+", lambda m: "_" * len(m.group()), name)
    if name.startswith("."):
        name = "_" + name[1:]
    return name or "_"


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
    """One viewable .mp4 per (stream, layer), scaled to 8 bit by the range seen so far.

    A video plays at the output header's `fps` (the source's), or at `fps` when it has none.
    Call close() to finalise the files: an mp4 that was never closed does not play.
    """

    def __init__(self, folder: Path, fps: float = DEFAULT_FPS) -> None:
        self.folder, self.fps = folder, fps
        self.writers: dict[tuple[str, str], Any] = {}
        self.ranges: dict[tuple[str, str], tuple[float, float]] = {}
        self.sizes: dict[tuple[str, str], tuple[int, int]] = {}
        self.paths: list[Path] = []

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None:
        key = (header["stream"], header["layer"])
        image = frame[:3].transpose(1, 2, 0) if frame.shape[0] == 3 else frame[0]
        image = image.astype(np.float64)
        finite = image[np.isfinite(image)]  # a float16 output may hold inf: not in the range
        if finite.size:
            lo, hi = self.ranges.get(key, (float(finite.min()), float(finite.max())))
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            self.ranges[key] = (lo, hi)
        lo, hi = self.ranges.get(key, (0.0, 1.0))
        image = np.nan_to_num(image, nan=lo, posinf=hi, neginf=lo)
        scaled = np.clip((image - lo) * (255.0 / max(hi - lo, 1e-12)), 0, 255).astype(np.uint8)
        writer = self.writers.get(key)
        if writer is None:
            writer = self._open(key, header, scaled)
        size = self.sizes[key]
        if (scaled.shape[1], scaled.shape[0]) != size:  # a new frame size mid-stream
            scaled = cv2.resize(scaled, size, interpolation=cv2.INTER_AREA)
        writer.write(scaled)

    def _open(self, key: tuple[str, str], header: dict[str, Any], first: np.ndarray) -> Any:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{safe_name(key[0])}_{safe_name(key[1])}.mp4"
        fps = header.get("fps") or self.fps
        size = (first.shape[1], first.shape[0])
        fourcc = cv2.VideoWriter.fourcc(*"mp4v")
        writer = cv2.VideoWriter(str(path), fourcc, float(fps), size, first.ndim == 3)
        self.writers[key], self.sizes[key] = writer, size
        self.paths.append(path)
        return writer

    def close(self) -> list[Path]:
        """Finalise every file (idempotent); the paths written."""
        for writer in self.writers.values():
            writer.release()
        return self.paths


class NpyWriter:
    """One .npy per output frame: {stream}_{layer}_{session8}_{seq:06d}.npy, (C, H, W); every
    part of the name passes safe_name (a sender's session may hold '/')."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None:
        # The session keeps a second run (or a looped file) from overwriting the first.
        stream, layer = safe_name(header["stream"]), safe_name(header["layer"])
        session = safe_name(str(header["session"])[:8])
        np.save(self.folder / f"{stream}_{layer}_{session}_{int(header['seq']):06d}.npy", frame)
