"""An independent float64 numpy reference for MemoryConv3d: the offline whole-video result.

Written from the definition (causal time fill, spatial padding, cross-correlation) with
numpy only, so that it shares no code with the layer it checks.
"""

from __future__ import annotations

import numpy as np

NUMPY_PAD = {"zeros": "constant", "replicate": "edge", "reflect": "reflect", "circular": "wrap"}


def offline_conv(
    x: np.ndarray,
    weight: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    fill: str = "first",
    padding_mode: str = "replicate",
    dilation: tuple[int, int, int] = (1, 1, 1),
    stride: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    n, _c, t_len, h, wd = x.shape
    out_ch, c_per_group, kt, kh, kw = w.shape
    dt, dh, dw = dilation
    p = (kt - 1) * dt
    first = x[:, :, :1] if fill == "first" else np.zeros_like(x[:, :, :1])
    x = np.concatenate([np.repeat(first, p, axis=2), x], axis=2)
    eh, ew = (kh - 1) * dh, (kw - 1) * dw
    pads = ((0, 0), (0, 0), (0, 0), (eh - eh // 2, eh // 2), (ew - ew // 2, ew // 2))
    x = np.pad(x, pads, mode=NUMPY_PAD[padding_mode])  # type: ignore[call-overload]
    sh, sw = stride
    h_out, w_out = (h - 1) // sh + 1, (wd - 1) // sw + 1
    out = np.zeros((n, out_ch, t_len, h_out, w_out))
    o_per_group = out_ch // groups
    for o in range(out_ch):
        g = o // o_per_group
        for ci in range(c_per_group):
            cin = g * c_per_group + ci
            for tau in range(kt):
                for i in range(kh):
                    for j in range(kw):
                        patch = x[
                            :,
                            cin,
                            tau * dt : tau * dt + t_len,
                            i * dh : i * dh + (h_out - 1) * sh + 1 : sh,
                            j * dw : j * dw + (w_out - 1) * sw + 1 : sw,
                        ]
                        out[:, o] += w[o, ci, tau, i, j] * patch
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None, None]
    return out


def offline_lowpass(x: np.ndarray, tau: float, n: int, fill: str = "first") -> np.ndarray:
    """n cascaded exponential low passes, frame by frame in float64."""
    x = np.asarray(x, dtype=np.float64)
    a = 1.0 - np.exp(-1.0 / tau)
    state = [x[:, :, 0].copy() if fill == "first" else np.zeros_like(x[:, :, 0]) for _ in range(n)]
    out = np.empty_like(x)
    for t in range(x.shape[2]):
        v = x[:, :, t]
        for k in range(n):
            state[k] = state[k] + a * (v - state[k])
            v = state[k]
        out[:, :, t] = v
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
