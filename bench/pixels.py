"""The colour step per frame: the uint8 table (OpenCV LUT) against the float32 division it
replaced, side by side, same frames, medians. A benchmark, never a test.

    python bench/pixels.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
from machine import cpu_line

from streamconv.capture.sources import synthetic_frame
from streamconv.wire.protocol import to_float
from streamconv.worker.pixels import frame_to_chw


def divided(frame: np.ndarray, color: str, out: np.ndarray) -> None:
    """The previous path: float32 division, then the channel order (a transposed copy)."""
    if frame.ndim == 2:
        np.divide(frame, np.float32(255.0), out=out[0], dtype=np.float32)
        return
    f = to_float(frame)
    out[...] = f[:, :, 2::-1].transpose(2, 0, 1) if color == "rgb" else f.transpose(2, 0, 1)


def median_ms(fn: Callable[[], None], repeats: int = 200) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    print(cpu_line())
    print(f"\n{'frame':24} {'division ms':>12} {'table ms':>10} {'table/division':>15}")
    cases = [("640x480 gray", (640, 480, 1), "as-is"), ("1280x720 gray", (1280, 720, 1), "as-is"),
             ("1280x720 BGR as-is", (1280, 720, 3), "as-is"),
             ("1280x720 BGR -> rgb", (1280, 720, 3), "rgb")]  # fmt: skip
    for label, (w, h, c), color in cases:
        frame = synthetic_frame(3, w, h, channels=c)
        channels = 3 if color == "rgb" else c
        out = np.empty((channels, 8, h, w), np.float32)[:, 3]  # a slice of a chunk buffer
        old = median_ms(lambda f=frame, o=out, col=color: divided(f, col, o))
        new = median_ms(lambda f=frame, o=out, col=color, ch=channels: frame_to_chw(f, col, ch, o))
        expected = np.empty_like(out)
        divided(frame, color, expected)
        assert np.array_equal(out, expected), label  # bit for bit
        print(f"{label:24} {old:12.3f} {new:10.3f} {new / old:15.2f}")


if __name__ == "__main__":
    main()
