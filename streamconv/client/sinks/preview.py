"""The preview sink: one viewable .mp4 per (stream, layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamconv.client.sinks.base import safe_name

DEFAULT_FPS = 25.0  # preview frame rate when the outputs do not say the source's


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
