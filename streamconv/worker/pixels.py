"""The colour step: decoded frames (H,W) or (H,W,C) become the model's float32 (C,H,W).

uint8 / 255, uint16 / 65535, float32 as is; then gray (from BGR), rgb (from BGR) or as-is.
Frames are written straight into the chunk buffer the model reads, in one pass for gray.
"""

from __future__ import annotations

import numpy as np

from streamconv.errors import ShapeError
from streamconv.wire.protocol import to_float

# OpenCV delivers BGR; luma weights in that order (ITU-R BT.601, as cv2.cvtColor uses).
_BGR_TO_GRAY = np.array([0.114, 0.587, 0.299], dtype=np.float32)
_SCALE = {np.dtype(np.uint8): np.float32(255.0), np.dtype(np.uint16): np.float32(65535.0)}


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
        # One pass: the same float32 division as to_float, without its temporary.
        src = frame.reshape(frame.shape[:2])
        scale = _SCALE.get(src.dtype)
        if scale is None:
            out[0] = src
        else:
            np.divide(src, scale, out=out[0], dtype=np.float32)
        return out
    f = to_float(frame)
    if color == "gray":
        out[0] = f[:, :, :3] @ _BGR_TO_GRAY
    elif color == "rgb":
        out[...] = f[:, :, 2::-1].transpose(2, 0, 1)
    else:
        out[...] = f.transpose(2, 0, 1)
    return out
