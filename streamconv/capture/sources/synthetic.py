"""A built-in deterministic test pattern, and the sample clip written from it.

Two drifting sinusoidal gratings (B and G) and a Gaussian blob on a Lissajous path (R): smooth,
so video codecs keep it close, and moving, so temporal layers have something to see.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from streamconv.capture.sources.base import BaseSource, Options, Size, SourceKind
from streamconv.errors import SourceError

DEFAULT_SIZE = (320, 240)
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG"}
SYNTHETIC_RE = re.compile(r"synthetic(?::(\d+)x(\d+)(?::(\d+))?)?")


def synthetic_frame(index: int, width: int, height: int, channels: int = 3) -> np.ndarray:
    """Frame `index` of the pattern: (H, W, 3) BGR uint8, or (H, W) when `channels` is 1."""
    if channels not in (1, 3):
        msg = f"synthetic channels must be 1 or 3, got {channels}"
        raise SourceError(msg)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    tau = 2.0 * math.pi
    b = np.broadcast_to(0.5 + 0.5 * np.sin(tau * (xx / 32.0 - index / 40.0)), (height, width))
    g = 0.5 + 0.5 * np.sin(tau * ((xx + yy) / 48.0 + index / 60.0))
    cx = width * (0.5 + 0.3 * math.sin(tau * index / 90.0))
    cy = height * (0.5 + 0.3 * math.cos(tau * index / 70.0))
    radius = 0.15 * min(width, height) + 1.0
    r = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * radius**2))
    pixels = np.stack([b, g, r], axis=-1)
    if channels == 1:
        pixels = pixels.mean(axis=-1)
    return np.rint(pixels * 255.0).astype(np.uint8)


class SyntheticSource(BaseSource):
    """The pattern as a source: `frames` frames (None: endless) at a nominal `fps`."""

    def __init__(
        self,
        width: int = DEFAULT_SIZE[0],
        height: int = DEFAULT_SIZE[1],
        frames: int | None = 300,
        *,
        fps: float = 30.0,
        channels: int = 3,
        resize: Size | None = None,
        gray: bool = False,
        limit: int | None = None,
        loop: bool = False,
    ) -> None:
        super().__init__(resize=resize, gray=gray, limit=limit, loop=loop)
        if width <= 0 or height <= 0 or (frames is not None and frames < 0) or fps <= 0:
            msg = (
                f"synthetic source needs positive width, height and fps and frames >= 0, "
                f"got {width}x{height}, {frames} frames at {fps} fps"
            )
            raise SourceError(msg)
        self.width, self.height, self.frames, self.channels = width, height, frames, channels
        self._fps = float(fps)

    @property
    def fps(self) -> float | None:
        return self._fps

    def _pass_length(self) -> int | None:
        return self.frames

    def _read_pass(self, first: bool) -> Iterator[np.ndarray]:
        index = 0
        while self.frames is None or index < self.frames:
            yield synthetic_frame(index, self.width, self.height, self.channels)
            index += 1

    def __repr__(self) -> str:
        return f"SyntheticSource({self.width}x{self.height}, frames={self.frames})"


def write_sample_video(
    path: str | Path,
    frames: int = 60,
    size: Size = (160, 120),
    fps: float = 30.0,
) -> Path:
    """Write `frames` frames of the pattern at `size` (W, H) to .mp4 (mp4v) or .avi (MJPG)."""
    path = Path(path)
    fourcc = FOURCC_BY_SUFFIX.get(path.suffix.lower())
    if fourcc is None:
        msg = f"sample video {path} must end in one of {sorted(FOURCC_BY_SUFFIX)}"
        raise SourceError(msg)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), float(fps), size)
    if not writer.isOpened():
        msg = f"OpenCV cannot write {path} with fourcc {fourcc}: check the folder exists"
        raise SourceError(msg)
    try:
        for index in range(frames):
            writer.write(synthetic_frame(index, size[0], size[1]))
    finally:
        writer.release()
    return path


def open_synthetic(spec: str, options: Options) -> SyntheticSource:
    """'synthetic', 'synthetic:WxH' or 'synthetic:WxH:FRAMES' (300 frames by default)."""
    match = SYNTHETIC_RE.fullmatch(spec)
    if match is None:
        msg = (
            f"bad synthetic spec {spec!r}: write 'synthetic', 'synthetic:640x480' or "
            "'synthetic:640x480:100' (width x height : frames)"
        )
        raise SourceError(msg)
    width, height, frames = match.groups()
    size = (int(width), int(height)) if width else DEFAULT_SIZE
    return SyntheticSource(*size, frames=int(frames) if frames else 300, **options)


SYNTHETIC = SourceKind("synthetic", lambda spec: spec.startswith("synthetic"), open_synthetic)
