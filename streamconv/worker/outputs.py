"""Layer outputs in the wire dtype: float32, float16, or uint8 with a scale and offset.

The conversion happens where the tensor lives (on the GPU: 2-4x fewer bytes to copy back),
with one device-to-host copy per stage and chunk.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from streamconv.layers import Output


def gather(
    out: object, names: list[str], output_dtype: str
) -> tuple[dict[str, np.ndarray], dict[str, tuple[list[float], list[float]]]]:
    """(T, C, H, W) numpy arrays in the wire dtype per published stage of `out`, and for
    uint8 each frame's (scales, offsets)."""
    layers: dict[str, np.ndarray] = {}
    quant: dict[str, tuple[list[float], list[float]]] = {}
    for name, t in out.items() if isinstance(out, Output) else []:
        if name not in names:
            continue
        frames = t[0].transpose(0, 1)
        if output_dtype == "uint8":
            layers[name], quant[name] = _quantize(frames)
        elif output_dtype == "float16":
            layers[name] = frames.to(torch.float16).cpu().numpy()
        else:
            layers[name] = frames.float().cpu().numpy()
    return layers, quant


def _quantize(frames: torch.Tensor) -> tuple[np.ndarray, tuple[list[float], list[float]]]:
    """Each frame to uint8 over its own range: value = byte * scale + offset."""
    if frames.device.type != "cpu":
        return quantize_torch(frames)
    # On the CPU OpenCV's min/max and scale-round-saturate passes beat numpy's; both round
    # to nearest.
    values = frames.float().numpy()
    data = np.empty(values.shape, dtype=np.uint8)
    scales, offsets = [], []
    for i, frame in enumerate(values):
        plane = frame.reshape(-1, frame.shape[-1])  # (C*H, W): OpenCV takes 2-D
        lo, hi, _, _ = cv2.minMaxLoc(plane)
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        # Subtract first: a large offset folded into convertScaleAbs' beta costs precision.
        shifted = np.subtract(plane, np.float32(lo), dtype=np.float32)
        cv2.convertScaleAbs(shifted, data[i].reshape(plane.shape), 1.0 / scale, 0.0)
        scales.append(scale)
        offsets.append(lo)
    return data, (scales, offsets)


def quantize_torch(frames: torch.Tensor) -> tuple[np.ndarray, tuple[list[float], list[float]]]:
    """The same quantisation in torch, on the tensor's device (4x fewer bytes to copy back)."""
    flat = frames.reshape(frames.shape[0], -1).float()
    # amin + amax: torch.aminmax(dim=...) is ~20x slower on the CPU (torch 2.13)
    lo, hi = torch.amin(flat, dim=1), torch.amax(flat, dim=1)
    span = hi - lo
    step = torch.where(span > 0, span / 255.0, torch.ones_like(span))
    # >= 0 after subtracting the minimum, so +0.5 then truncation rounds to nearest.
    # Divide, not multiply by 1/step: 1/step overflows float32 for a tiny (subnormal) range.
    q = (flat - lo[:, None]).div_(step[:, None]).add_(0.5).clamp_(max=255).to(torch.uint8)
    return q.reshape(frames.shape).cpu().numpy(), (step.tolist(), lo.tolist())
