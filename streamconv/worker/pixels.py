"""The colour step: decoded frames (H,W) or (H,W,C) become the model's float32 (C,H,W).

Integers divided by their full scale (wire/quant.py), float32 as is; then gray (from BGR),
rgb (from BGR) or as-is.
Gray is OpenCV's: cv2.cvtColor(frame, COLOR_BGR2GRAY), i.e. 0.299 R + 0.587 G + 0.114 B
(ITU-R BT.601) in OpenCV's fixed point, rounded to the frame's own integer type, then scaled;
so a colour frame gives exactly what `capture --gray` (which calls cvtColor) would have sent.
Frames are written straight into the chunk buffer the model reads. A single uint8 plane is
divided in one pass (numpy's vectorised division is the fastest here); several uint8 channels
are split and each goes through a 256-entry float32 table (OpenCV's LUT) straight into its
plane: the same float32 values as dividing by 255, bit for bit, in about 0.5-0.6 of the time
of dividing and transposing (bench/pixels.py).
"""

from __future__ import annotations

import cv2
import numpy as np

from streamconv.errors import ShapeError
from streamconv.wire.protocol import to_float
from streamconv.wire.quant import FULL_SCALE

# Exactly what np.divide(uint8, float32(255), dtype=float32) gives, for every byte.
_U8_TABLE = np.divide(
    np.arange(256, dtype=np.uint8), FULL_SCALE[np.dtype(np.uint8)], dtype=np.float32
)


def chw_shape(frame: np.ndarray, color: str, in_channels: int = 1) -> tuple[int, int, int]:
    """The (C, H, W) a frame becomes; ShapeError if the colour step cannot take it."""
    h, w = frame.shape[:2]
    c = frame.shape[2] if frame.ndim == 3 else 1
    if color == "gray":
        if c not in (1, 3, 4):
            msg = f"color 'gray' takes 1, 3 (BGR) or 4 (BGRA) channels, frame has {c}"
            raise ShapeError(msg)
        return 1, h, w
    if color == "rgb":
        if c not in (3, 4):
            msg = f"color 'rgb' takes 3 (BGR) or 4 (BGRA) channels, frame has {c}"
            raise ShapeError(msg)
        return 3, h, w
    if c != in_channels:
        msg = f"frame has {c} channels, the model takes {in_channels} (color 'as-is')"
        raise ShapeError(msg)
    return c, h, w


def frame_to_chw(
    frame: np.ndarray, color: str, in_channels: int = 1, out: np.ndarray | None = None
) -> np.ndarray:
    """The frame as float32 (C, H, W), written into `out` when given."""
    shape = chw_shape(frame, color, in_channels)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    plain = frame.ndim == 2 or frame.shape[2] == 1
    if plain and color != "rgb":
        src = frame.reshape(frame.shape[:2])
        scale = FULL_SCALE.get(src.dtype)
        if scale is None:
            out[0] = src
        else:  # one pass: the same float32 division as to_float, without its temporary
            np.divide(src, scale, out=out[0], dtype=np.float32)
        return out
    if frame.dtype == np.uint8 and color != "gray":
        order = (2, 1, 0) if color == "rgb" else tuple(range(shape[0]))
        planes = _split(frame)
        for i, c in enumerate(order):
            _lookup(planes[c], out[i])
        return out
    if color == "gray":
        _gray(frame, out[0])
        return out
    f = to_float(frame)
    if color == "rgb":
        out[...] = f[:, :, 2::-1].transpose(2, 0, 1)
    else:
        out[...] = f.transpose(2, 0, 1)
    return out


def _gray(frame: np.ndarray, out: np.ndarray) -> None:
    """BGR(A) -> gray as cv2.cvtColor does it (see the module docstring), scaled into `out`."""
    code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    src = frame if frame.dtype in (np.uint8, np.uint16, np.float32) else to_float(frame)
    plane = cv2.cvtColor(np.ascontiguousarray(src), code)
    scale = FULL_SCALE.get(plane.dtype)
    if scale is None:
        out[...] = plane
    else:
        np.divide(plane, scale, out=out, dtype=np.float32)


def _lookup(plane: np.ndarray, out: np.ndarray) -> None:
    """uint8 (H, W) -> float32 (H, W) through the table, into `out` (contiguous)."""
    if out.flags.c_contiguous and plane.flags.c_contiguous:
        cv2.LUT(plane, _U8_TABLE, dst=out)
    else:
        np.divide(plane, FULL_SCALE[np.dtype(np.uint8)], out=out, dtype=np.float32)


def raw_dtype(frame: np.ndarray, color: str) -> np.dtype | None:
    """The integer dtype the frame can travel in to the device (its colour step then only
    reorders channels, and the division happens there), or None: float32 from the host."""
    if frame.dtype not in FULL_SCALE:
        return None
    plain = frame.ndim == 2 or frame.shape[2] == 1
    if plain and color != "rgb":
        return frame.dtype
    if not plain and frame.dtype == np.uint8 and color != "gray":
        return frame.dtype
    return None


def frame_to_raw_chw(frame: np.ndarray, color: str, out: np.ndarray) -> np.ndarray:
    """The frame's planes in its own dtype, (C, H, W), into `out` (see `raw_dtype`)."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        out[0] = frame.reshape(frame.shape[:2])
        return out
    order = (2, 1, 0) if color == "rgb" else tuple(range(out.shape[0]))
    planes = _split(frame)
    for i, c in enumerate(order):
        out[i] = planes[c]
    return out


_SCRATCH: dict[tuple[int, ...], list[np.ndarray]] = {}
SCRATCH_SHAPES = 4


def _split(frame: np.ndarray) -> list[np.ndarray]:
    """The frame's channels as planes, in scratch planes kept per frame shape: OpenCV's own
    allocation of fresh planes costs 25x the split itself (3 ms for a 720p BGR frame).
    Valid until the next call (the worker's one thread uses them at once)."""
    key = (*frame.shape, frame.dtype.num)
    planes = _SCRATCH.get(key)
    if planes is None:
        if len(_SCRATCH) >= SCRATCH_SHAPES:
            _SCRATCH.clear()
        planes = _SCRATCH[key] = [
            np.empty(frame.shape[:2], frame.dtype) for _ in range(frame.shape[2])
        ]
    cv2.split(np.ascontiguousarray(frame), planes)
    return planes
