"""The colour step: the uint8 table path gives exactly the float32 values of dividing by 255."""

from __future__ import annotations

import cv2
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


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [3, 4])
def test_gray_is_opencvs_bgr2gray(dtype: type, channels: int) -> None:
    # Before: float weights on float pixels, up to 2e-3 relative from what cvtColor (and so
    # `capture --gray`) gives for the same frame.
    rng = np.random.default_rng(channels)
    top = 1.0 if dtype is np.float32 else np.iinfo(dtype).max
    frame = (rng.random((48, 64, channels)) * top).astype(dtype)
    code = cv2.COLOR_BGRA2GRAY if channels == 4 else cv2.COLOR_BGR2GRAY
    expected = to_float(cv2.cvtColor(frame, code))
    assert np.array_equal(frame_to_chw(frame, "gray")[0], expected)
    strided = np.ascontiguousarray(np.repeat(frame, 2, axis=1))[:, ::2]  # a view, as decoded
    assert np.array_equal(frame_to_chw(strided, "gray")[0], expected)
