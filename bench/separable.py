"""The shipped conv layers per frame against OpenCV's sepFilter2D on the same kernel and frame.

A benchmark, never a test: medians of interleaved repeats, the machine printed. For each
conv layer of the shipped presets at 640x480 (chunk 8, one thread, the worker's defaults):

- layer: `MemoryConv3d.step` on a chunk, steady state (history, temporal taps, spatial
  terms through OpenCV, new history), per frame;
- torch passes: the same factors through the shifted multiply-adds in torch
  (`separable_conv3d`, the CPU path before OpenCV, still the GPU's);
- sepFilter2D: OpenCV alone on one frame with the layer's spatial factors (one call per
  separable term, replicate border): the floor for the spatial part, no temporal taps.

    python bench/separable.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_line

from streamconv.config import load_settings
from streamconv.layers import MemoryConv3d
from streamconv.layers.conv import spatial_pads
from streamconv.layers.separable import separable_conv3d
from streamconv.model import build_model

W, H, CHUNK = 640, 480, 8


def per_frame_ms(fn: Callable[[], object], frames: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3 / frames)
    return statistics.median(times)


@torch.inference_mode()
def measure(layer: MemoryConv3d, x: torch.Tensor, repeats: int) -> str | None:
    """The table row's cells after the layer's name, or None for a non-separable layer."""
    _, state = layer.step(x, None)
    factors = layer._factors(x)
    if factors is None:
        return None
    kt, kh, kw = layer.kernel_size
    full = torch.cat([state["history"], x], dim=2)
    pads = spatial_pads(kh, kw, 1, 1)
    frame = x[0, 0, 0].numpy()
    out = np.empty_like(frame)
    kernels = [(np.asarray(r, np.float32), np.asarray(c, np.float32))
               for r, c in zip(factors.rows, factors.cols, strict=True)]  # fmt: skip

    def opencv() -> None:
        for rows, cols in kernels:
            cv2.sepFilter2D(frame, -1, cols, rows, dst=out, borderType=cv2.BORDER_REPLICATE)

    def passes() -> None:
        padded = F.pad(full, (*pads, 0, 0), mode="replicate")
        separable_conv3d(padded, factors, None, (1, 1), (1, 1, 1))

    rounds: dict[str, list[float]] = {"layer": [], "passes": [], "cv": []}
    for _ in range(3):  # interleaved
        rounds["layer"].append(per_frame_ms(lambda: layer.step(x, state), CHUNK, repeats))
        rounds["passes"].append(per_frame_ms(passes, CHUNK, repeats))
        rounds["cv"].append(per_frame_ms(opencv, 1, repeats))
    ms = {k: statistics.median(v) for k, v in rounds.items()}
    return (f"{kt}x{kh}x{kw}, {len(kernels)} term(s) | {ms['layer']:.3f} | "
            f"{ms['passes']:.3f} | {ms['cv']:.3f} | {ms['layer'] / ms['cv']:.2f} | "
            f"{ms['passes'] / ms['layer']:.2f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"{cpu_line()}; torch {torch.__version__}, OpenCV {cv2.__version__}, 1 thread")
    print(f"{W}x{H} gray float32, chunk {CHUNK}, medians of {args.repeats}\n")
    print("| layer | kernel | layer ms/frame | torch passes ms/frame | sepFilter2D ms/frame "
          "| layer / sepFilter2D | torch passes / layer |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for preset in ("default", "retina"):
        model = build_model(load_settings(preset, {"worker": {"device": "cpu"}}, environ={}),
                            torch.device("cpu"))  # fmt: skip
        for name, layer in model.layer_children():
            if isinstance(layer, MemoryConv3d):
                x = torch.from_numpy(rng.random((1, 1, CHUNK, H, W), dtype=np.float32))
                row = measure(layer, x, args.repeats)
                if row is not None:
                    print(f"| {preset}/{name} | {row}")
    print("\ntarget (issue 10): the layer within 1.5x of sepFilter2D on the same kernel and frame")


if __name__ == "__main__":
    main()
