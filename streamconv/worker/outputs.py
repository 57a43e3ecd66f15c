"""Layer outputs in the wire dtype: float32, float16, or uint8 with a scale and offset.

The conversion happens where the tensor lives (on the GPU: 2-4x fewer bytes to copy back).
On a GPU every copied layer goes into pinned host memory without blocking, the uint8 scales
and offsets with it, and the pass waits once for all of them (no sync per layer or frame).
Outputs come back contiguous per frame, (T, C, H, W), so the encoder sends them as they are.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from streamconv.layers import Output
from streamconv.wire.quant import MIN_QUANT_RANGE, quant_step

Quant = tuple[list[float], list[float]]
PerStream = tuple[dict[str, np.ndarray], dict[str, Quant]]


def gather(
    out: object, names: list[str], output_dtype: str, device_side: bool = False
) -> list[PerStream]:
    """For each batch entry of `out` (every stage, (N, C, T, H, W)): (T, C, H, W) numpy
    arrays in the wire dtype per stage in `names`, and for uint8 each frame's
    (scales, offsets). `device_side` takes the GPU's way on the CPU too (for tests)."""
    items = [(n, t) for n, t in (out.items() if isinstance(out, Output) else []) if n in names]
    if not items:
        batch = next(iter(out)).shape[0] if isinstance(out, Output) and len(out) else 1
        return [({}, {}) for _ in range(batch)]
    batch = items[0][1].shape[0]
    host: dict[str, np.ndarray] = {}
    scales: dict[str, np.ndarray] = {}
    if items[0][1].device.type == "cpu" and not device_side:
        for name, t in items:
            frames = _frames(t)
            if output_dtype == "uint8":
                host[name], scales[name] = _quantize_cpu(frames.float().numpy())
            else:
                wire = torch.float16 if output_dtype == "float16" else torch.float32
                host[name] = frames.to(wire).numpy()
    else:
        host, scales = _copy_back(items, output_dtype)
    per: list[PerStream] = []
    for i in range(batch):
        layers = {name: arr[i] for name, arr in host.items()}
        quant = {name: (s[i, :, 0].tolist(), s[i, :, 1].tolist()) for name, s in scales.items()}
        per.append((layers, quant))
    return per


def _frames(t: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> (N, T, C, H, W), contiguous (a copy only for several channels)."""
    return t.transpose(1, 2).contiguous()


def _copy_back(
    items: list[tuple[str, torch.Tensor]], output_dtype: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    host: dict[str, np.ndarray] = {}
    scales: dict[str, np.ndarray] = {}
    pinned: list[tuple[dict[str, np.ndarray], str, torch.Tensor]] = []
    for name, t in items:
        frames = _frames(t)
        if output_dtype == "uint8":
            frames, step_lo = quantize_torch(frames)
            pinned.append((scales, name, step_lo))
        elif output_dtype == "float16":
            frames = frames.to(torch.float16)
        else:
            frames = frames.float()
        pinned.append((host, name, frames))
    device = items[0][1].device
    copies = []
    for target, name, t in pinned:
        if device.type == "cpu":
            copies.append((target, name, t))
            continue
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        copies.append((target, name, buf))
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # once, for every copy
    for target, name, buf in copies:
        target[name] = buf.numpy()
    return host, scales


def quantize_torch(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, ...) -> uint8 of the same shape over each frame's own range, and (N, T, 2)
    float64 (scale, offset) with value = byte * scale + offset; on the tensor's device.
    The rule of wire/quant.py, in the same arithmetic: the same scale and offset, and the
    same bytes as `quantise` (tests/unit/test_output_dtypes.py)."""
    flat = frames.reshape(*frames.shape[:2], -1).float()
    # amin + amax: torch.aminmax(dim=...) is ~20x slower on the CPU (torch 2.13)
    lo, hi = torch.amin(flat, dim=2), torch.amax(flat, dim=2)
    # quant_step per frame, in float64 as there; a few numbers, and no sync with the host
    span = hi.double() - lo.double()
    step = torch.where(span > MIN_QUANT_RANGE, span / 255.0, torch.ones_like(span))
    inv = (1.0 / step).float()  # fits: MIN_QUANT_RANGE keeps it within float32
    # >= 0 after subtracting the minimum, so +0.5 then truncation rounds to nearest.
    q = (flat - lo[..., None]).mul_(inv[..., None]).add_(0.5).clamp_(max=255).to(torch.uint8)
    return q.reshape(frames.shape), torch.stack([step, lo.double()], dim=2)


def _quantize_cpu(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`quantise` with OpenCV, whose min/max and scale-round-saturate passes beat numpy's on
    the CPU: the same scale and offset; bytes within one (OpenCV rounds ties to even).
    frames: (N, T, C, H, W) float32."""
    data = np.empty(frames.shape, dtype=np.uint8)
    step_lo = np.empty((*frames.shape[:2], 2), dtype=np.float64)
    for i, stream in enumerate(frames):
        for j, frame in enumerate(stream):
            plane = frame.reshape(-1, frame.shape[-1])  # (C*H, W): OpenCV takes 2-D
            lo, hi, _, _ = cv2.minMaxLoc(plane)
            scale = quant_step(lo, hi)
            # Subtract first: a large offset folded into convertScaleAbs' beta costs precision.
            shifted = np.subtract(plane, np.float32(lo), dtype=np.float32)
            cv2.convertScaleAbs(shifted, data[i, j].reshape(plane.shape), 1.0 / scale, 0.0)
            step_lo[i, j] = scale, lo
    return data, step_lo
