"""Layer outputs -> colour images for the page: colour maps, display range, tiling, JPEG.

Signed outputs get a diverging map centred on zero (blue - grey - red), non-negative ones a
sequential map (viridis-like). Both are 256-entry tables built by linear interpolation between
a few anchor colours, so their values at the anchors are exact and testable. The stream's
input is a picture instead: gray, or RGB when it has three channels, over a fixed range.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

Colormap = Literal["diverging", "sequential"]
Scaling = Literal["frame", "running"]

# RGB anchors at evenly spaced positions: viridis at 0, 1/4, 1/2, 3/4, 1; Moreland's cool-warm.
SEQUENTIAL_ANCHORS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
DIVERGING_LOW, DIVERGING_MID, DIVERGING_HIGH = (59, 76, 192), (221, 221, 221), (180, 4, 38)


def _ramp(anchors: tuple[tuple[int, int, int], ...], n: int) -> np.ndarray:
    """(n, 3) uint8 RGB going through `anchors` at evenly spaced positions, ends included."""
    where = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    colours = np.array(anchors, dtype=np.float64)
    out = np.stack([np.interp(t, where, colours[:, c]) for c in range(3)], axis=1)
    return np.rint(out).astype(np.uint8)


def _tables() -> dict[Colormap, np.ndarray]:
    # Diverging: entries 127 and 128 are both the middle grey, so zero (which lands on 127.5
    # of 0..255) is grey whichever way it rounds.
    low = _ramp((DIVERGING_LOW, DIVERGING_MID), 128)
    high = _ramp((DIVERGING_MID, DIVERGING_HIGH), 128)
    return {
        "diverging": np.concatenate([low, high]),
        "sequential": _ramp(SEQUENTIAL_ANCHORS, 256),
    }


TABLES = _tables()
# OpenCV wants (256, 1, 3) BGR tables.
_CV_TABLES = {
    name: np.ascontiguousarray(table[:, ::-1]).reshape(256, 1, 3) for name, table in TABLES.items()
}


def hex_table(name: Colormap) -> list[str]:
    """The 256 colours of a map as '#rrggbb', for the page's colour bars."""
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in TABLES[name].tolist()]


def display_range(colormap: str, rng: tuple[float, float]) -> tuple[float, float]:
    """The (lo, hi) a colour map spans for a value range (the frame's, or the running one).

    A diverging map is symmetric about zero so that zero is always the middle grey.
    """
    lo, hi = rng
    if colormap == "diverging":
        m = max(abs(lo), abs(hi))
        return -m, m
    return lo, hi


def choose_colormap(running_min: float) -> Colormap:
    """Signed once any value has been negative: the map does not flip back and forth."""
    return "diverging" if running_min < 0 else "sequential"


def to_indices(plane: np.ndarray, lo: float, hi: float, flat: int = 0) -> np.ndarray:
    """Float plane -> uint8 table indices: lo -> 0, hi -> 255, clipped; NaN -> 0.

    An empty or infinite span (a flat frame) gives `flat` everywhere.
    """
    span = hi - lo
    if not math.isfinite(span) or span <= 0:
        return np.full(plane.shape, flat, dtype=np.uint8)
    scaled = (plane.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(255.0 / span)
    np.nan_to_num(scaled, copy=False, nan=0.0)
    np.clip(scaled + np.float32(0.5), 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def tile(frame: np.ndarray) -> np.ndarray:
    """(C, H, W) -> one (H', W') plane: the channels in a near-square grid, row by row."""
    c, h, w = frame.shape
    if c == 1:
        return frame[0]
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    grid = np.zeros((rows * h, cols * w), dtype=frame.dtype)
    for i in range(c):
        r, k = divmod(i, cols)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = frame[i]
    return grid


def picture(frame: np.ndarray) -> np.ndarray:
    """An input frame (C, H, W) -> what the page shows: (H, W, 3) RGB for three channels (the
    model's order: RGB for the worker's color "rgb"), else the channels tiled as gray."""
    if frame.shape[0] == 3:
        return np.ascontiguousarray(frame.transpose(1, 2, 0))
    return tile(frame)


def fit(plane: np.ndarray, max_side: int) -> np.ndarray:
    """Scale a plane (or an (H, W, 3) picture) down, by area averaging, so that neither side
    exceeds `max_side`."""
    h, w = plane.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return plane
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(plane.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)


def colourise(plane: np.ndarray, colormap: str, lo: float, hi: float) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 BGR through the colour map; "gray" and "rgb" (an
    (H, W, 3) RGB plane) map lo..hi to 0..255 without one."""
    if colormap == "gray":
        return cv2.cvtColor(to_indices(plane, lo, hi), cv2.COLOR_GRAY2BGR)
    if colormap == "rgb":
        return np.ascontiguousarray(to_indices(plane, lo, hi)[..., ::-1])
    flat = 128 if colormap == "diverging" else 0  # zero is the middle grey
    return cv2.applyColorMap(to_indices(plane, lo, hi, flat), _CV_TABLES[colormap])  # type: ignore[index]


def encode_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        msg = f"JPEG encoding failed for an image of shape {bgr.shape}"
        raise ValueError(msg)
    return buf.tobytes()
