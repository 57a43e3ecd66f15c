"""A fast path for separable kernels: temporal x (a few) spatially separable terms.

Kernels built from the helpers are of this form (gaussian = one term, difference of
gaussians = two, times an exponential in time). A k_t x k_h x k_w convolution then costs
k_t + R (k_h + k_w) multiply-adds per pixel instead of k_t k_h k_w: 10-30x less for the
shipped configs. The passes are plain shifted multiply-adds, which the CPU vectorises well
(oneDNN is slow on single-channel 3-D convolution). The factors come from SVDs of the weight,
kept only when they reproduce it to the dtype's rounding, and are cached until the weight
changes.

On the CPU (float32/float64 inference, stride 1, no spatial dilation, zero, replicate or
reflect padding) the spatial passes go through OpenCV's `sepFilter2D`, one call per frame
and term, with the padding done by its border mode: 3-5x faster than the shifted passes in
torch and the same numbers to the dtype's rounding. Every frame takes the same operations
whatever the chunking, so streamed output still equals the offline pass bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

MAX_TERMS = 3
# torch padding mode -> OpenCV border ("reflect" in torch does not repeat the edge pixel).
CV2_BORDERS = {
    "zeros": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
}


@dataclass(frozen=True, slots=True)
class Factors:
    """weight[t, y, x] = temporal[t] * sum_r rows[r, y] * cols[r, x]."""

    temporal: tuple[float, ...]
    rows: tuple[tuple[float, ...], ...]
    cols: tuple[tuple[float, ...], ...]

    def cost(self) -> int:
        return len(self.temporal) + len(self.rows) * (len(self.rows[0]) + len(self.cols[0]))


def factorize(weight: Tensor) -> Factors | None:
    """Factors of a (1, 1, kt, kh, kw) weight, or None if it is not (cheaply) separable."""
    # Half precision keeps the direct convolution: a rounded kernel is not separable to
    # float32 precision, and 1-D passes in half precision round at every step.
    if weight.shape[:2] != (1, 1) or weight.dtype not in (torch.float32, torch.float64):
        return None
    w = weight[0, 0].detach().to("cpu", torch.float64)
    if not torch.isfinite(w).all():
        return None
    kt, kh, kw = w.shape
    tol = 10 * torch.finfo(weight.dtype).eps
    time_space = w.reshape(kt, kh * kw)
    u, s, vh = torch.linalg.svd(time_space, full_matrices=False)
    if s[0] == 0 or s[1:].norm() > tol * s[0]:
        return None
    spatial = vh[0].reshape(kh, kw) * s[0]
    u2, s2, vh2 = torch.linalg.svd(spatial, full_matrices=False)
    # The fewest terms whose dropped singular values stay below the rounding level.
    tails = torch.flip(torch.cumsum(torch.flip(s2**2, [0]), 0), [0]).sqrt()
    rank = next(r for r in range(1, len(s2) + 1) if r == len(s2) or tails[r] <= tol * s2[0])
    if rank > MAX_TERMS:
        return None
    factors = Factors(
        tuple(u[:, 0].tolist()),
        tuple(tuple((u2[:, r] * s2[r]).tolist()) for r in range(rank)),
        tuple(tuple(vh2[r].tolist()) for r in range(rank)),
    )
    return factors if 2 * factors.cost() <= kt * kh * kw else None


def _taps(x: Tensor, kernel: tuple[float, ...], dim: int, dilation: int, stride: int) -> Tensor:
    """Valid cross-correlation of `x` with a 1-D kernel along `dim`."""
    span = (len(kernel) - 1) * dilation
    length = x.shape[dim] - span
    out = x.narrow(dim, 0, length) * kernel[0]
    for j in range(1, len(kernel)):
        out.add_(x.narrow(dim, j * dilation, length), alpha=kernel[j])
    if stride > 1:
        index = torch.arange(0, length, stride, device=x.device)
        out = out.index_select(dim, index)
    return out


def separable_conv3d(
    padded: Tensor,
    factors: Factors,
    bias: Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int, int],
) -> Tensor:
    """The same result as F.conv3d(padded, weight, bias, (1, *stride), dilation)."""
    y = _taps(padded, factors.temporal, 2, dilation[0], 1)
    out: Tensor | None = None
    for rows, cols in zip(factors.rows, factors.cols, strict=True):
        term = _taps(_taps(y, rows, 3, dilation[1], stride[0]), cols, 4, dilation[2], stride[1])
        out = term if out is None else out.add_(term)
    if out is None:
        msg = "factors without spatial terms"
        raise ValueError(msg)
    return out if bias is None else out + bias.view(1, -1, 1, 1, 1)


def cv2_ok(x: Tensor, mode: str, stride: tuple[int, int], dilation: tuple[int, int, int]) -> bool:
    """Whether `separable_cv2` computes this convolution (CPU inference, plain geometry)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and mode in CV2_BORDERS
        and stride == (1, 1)
        and dilation[1:] == (1, 1)
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def separable_cv2(
    parts: list[Tensor],
    factors: Factors,
    bias: Tensor | None,
    mode: str,
    anchor: tuple[int, int],
    temporal_dilation: int,
) -> Tensor:
    """The same result as `separable_conv3d` over `torch.cat(parts, dim=2)` padded by `mode`,
    computed frame by frame through OpenCV without that copy: each output frame is the
    weighted sum of its input frames (addWeighted, then scaleAdd), then every spatial term
    through sepFilter2D with the border done by OpenCV (`anchor`: (left, top) padding)."""
    arrays = [p.contiguous().numpy() for p in parts]  # (N, C, Ti, H, W) each, no copy
    n, c, _, h, w = arrays[0].shape
    span = (len(factors.temporal) - 1) * temporal_dilation
    frames = sum(a.shape[2] for a in arrays) - span
    # Exact zeros add nothing (the inputs are finite): e.g. a gamma kernel's first sample.
    taps = [(k * temporal_dilation, w) for k, w in enumerate(factors.temporal) if w != 0.0]
    dtype = arrays[0].dtype
    pairs = zip(factors.rows, factors.cols, strict=True)
    kernels = [(np.asarray(r, dtype), np.asarray(k, dtype)) for r, k in pairs]
    border = CV2_BORDERS[mode]
    out = np.empty((n, c, frames, h, w), dtype)
    mixed = np.empty((h, w), dtype)
    extra = np.empty((h, w), dtype)
    for i in range(n):
        for j in range(c):
            src = [plane for a in arrays for plane in a[i, j]]
            for t in range(frames):
                _mix(src, t, taps, mixed)
                dst = out[i, j, t]
                for r, (rows, cols) in enumerate(kernels):
                    target = dst if r == 0 else extra
                    cv2.sepFilter2D(mixed, -1, cols, rows, dst=target, anchor=anchor,
                                    borderType=border)  # fmt: skip
                    if r:
                        cv2.add(dst, extra, dst=dst)
    result = torch.from_numpy(out)
    return result if bias is None else result + bias.view(1, -1, 1, 1, 1)


def _mix(src: list[np.ndarray], t: int, taps: list[tuple[int, float]], out: np.ndarray) -> None:
    """out = sum of weight * src[t + offset] over the taps (OpenCV's fused passes)."""
    if not taps:
        out.fill(0)
    elif len(taps) == 1:
        np.multiply(src[t + taps[0][0]], taps[0][1], out=out)
    else:
        (o0, w0), (o1, w1) = taps[0], taps[1]
        cv2.addWeighted(src[t + o0], w0, src[t + o1], w1, 0.0, dst=out)
        for offset, weight in taps[2:]:
            cv2.scaleAdd(src[t + offset], weight, out, dst=out)
