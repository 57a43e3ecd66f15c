"""The colour step: the uint8 table path gives exactly the float32 values of dividing by 255."""

from __future__ import annotations

import numpy as np
import pytest

from streamconv.wire.protocol import to_float
from streamconv.worker.pixels import frame_to_chw


def reference(frame: np.ndarray, color: str) -> np.ndarray:
    f = to_float(frame)
    f = f[:, :, None] if f.ndim == 2 else f
    if color == "rgb":
        return f[:, :, 2::-1].transpose(2, 0, 1)
    return f.transpose(2, 0, 1)


CASES = [((48, 64), "as-is", 1), ((48, 64, 1), "gray", 1), ((48, 64, 3), "rgb", 3),
         ((48, 64, 3), "as-is", 3), ((48, 64, 4), "as-is", 4), ((48, 64, 4), "rgb", 3)]  # fmt: skip


@pytest.mark.parametrize(("shape", "color", "channels"), CASES)
def test_uint8_frames_are_bit_identical_to_the_division(
    shape: tuple[int, ...], color: str, channels: int
) -> None:
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    frame.reshape(-1)[:256] = np.arange(256)  # every byte value at least once
    expected = reference(frame, color)
    assert np.array_equal(frame_to_chw(frame, color, channels), expected)
    # Written into a slice of a chunk buffer, as the engine does (not contiguous per frame).
    buffer = np.full((expected.shape[0], 4, *expected.shape[1:]), np.nan, np.float32)
    frame_to_chw(frame, color, channels, out=buffer[:, 1])
    assert np.array_equal(buffer[:, 1], expected)
    assert np.isnan(buffer[:, 0]).all()
    assert np.isnan(buffer[:, 2]).all()  # nothing written beside the slice


def test_a_strided_frame_takes_the_same_path() -> None:
    big = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    view = big[::2, ::2]  # not contiguous
    assert np.array_equal(frame_to_chw(view, "rgb", 3), reference(view, "rgb"))
    assert np.array_equal(frame_to_chw(big[:, :, 0][::2], "as-is", 1),
                          reference(big[:, :, 0][::2], "as-is"))  # fmt: skip
