"""Pixel arithmetic, in one place: the full scale of integer pixels, and uint8 quantisation.

Only numpy, so every process shares it. Integer input pixels become floats by dividing by
their dtype's full scale (`FULL_SCALE`). uint8 output follows docs/PROTOCOL.md: value =
byte * scale + offset, quantised per frame from its minimum to its maximum, so a value is
within one step (`scale`) of the float. `quant_step` is the rule for the step, flat frames
included; `quantise` applies it. The worker's fast paths (OpenCV on the host, torch on the
device, worker/outputs.py) take the same step and are tested against `quantise`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# float32 divisors: a float64 one would turn numpy's float32 division into float64.
FULL_SCALE: dict[np.dtype[Any], np.float32] = {
    np.dtype(np.uint8): np.float32(255.0),
    np.dtype(np.uint16): np.float32(65535.0),
}
F32_MAX = float(np.finfo(np.float32).max) / 2  # margin for float32 rounding when dequantising
# A range at most this small counts as flat: 255 / range would not fit a float32, so neither
# would the reciprocal of its step (a subnormal difference would give inf or NaN bytes).
MIN_QUANT_RANGE = 255.0 / F32_MAX


def quant_step(lo: float, hi: float) -> float:
    """The value of one byte for a frame spanning [lo, hi]; 1.0 for a flat frame, whose
    bytes are then all 0 and whose values are all within its (tiny) range of `lo`."""
    span = hi - lo
    return span / 255.0 if span > MIN_QUANT_RANGE else 1.0


def quantise(array: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """uint8 bytes, scale and offset spanning the frame's range (value = byte*scale+offset);
    the bytes go into `out` when given."""
    lo = float(array.min())
    scale = quant_step(lo, float(array.max()))
    # Values are >= 0 after subtracting the minimum, so +0.5 then truncation rounds.
    q = np.subtract(array, np.float32(lo), dtype=np.float32)
    q *= np.float32(1.0 / scale)
    q += np.float32(0.5)
    if out is None:
        return q.astype(np.uint8), scale, lo
    out[...] = q  # the float -> uint8 cast truncates, which rounds here
    return out, scale, lo


def dequantise(data: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """uint8 bytes back to float32 values (byte * scale + offset), in float32 throughout."""
    values = np.multiply(data, np.float32(scale), dtype=np.float32)
    values += np.float32(offset)
    return values
