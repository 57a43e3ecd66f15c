"""`MemoryConv3d`: a causal Conv3d that remembers the last frames of the previous chunk.

Streaming is exact: for any split of a video into consecutive chunks (one frame each, or
shorter than the kernel), the concatenated outputs equal one offline pass over the whole video
(causal time fill, then spatial padding, then `F.conv3d`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamconv.errors import ShapeError
from streamconv.layers.base import Layer, State
from streamconv.layers.separable import (
    Factors,
    cv2_ok,
    factorize,
    separable_conv3d,
    separable_cv2,
)

PaddingMode = Literal["zeros", "replicate", "reflect", "circular"]
TemporalFill = Literal["first", "zeros"]


def _triple(value: int | tuple[int, ...], what: str) -> tuple[int, int, int]:
    t = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(t) != 3 or any(v < 1 for v in t):
        msg = f"{what} must be a positive int or 3 positive ints, got {value!r}"
        raise ValueError(msg)
    return t[0], t[1], t[2]


def spatial_pads(kh: int, kw: int, dh: int, dw: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) keeping the size at stride 1.

    An odd kernel is centred. For an even one the extra row/column of padding goes before
    (top/left), so that with `set_weight(flip=True)` an impulse at y0 lands at y0 + i - (kh-1)//2.
    """
    eh, ew = (kh - 1) * dh, (kw - 1) * dw
    return ew - ew // 2, ew // 2, eh - eh // 2, eh // 2


def causal_history(x: Tensor, frames: int, fill: TemporalFill) -> Tensor:
    """The `frames` frames before the first frame of a stream."""
    n, c, _, h, w = x.shape
    if fill == "first":
        return x[:, :, :1].expand(n, c, frames, h, w)
    return x.new_zeros((n, c, frames, h, w))


def _onednn_ok(x: Tensor, weight: Tensor) -> bool:
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not needs_grad
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.aten, "mkldnn_convolution")
    )


def conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int, int],
    dilation: tuple[int, int, int],
    groups: int,
) -> Tensor:
    """F.conv3d without padding, but on the CPU always through oneDNN for float32 inference.

    F.conv3d picks its CPU kernel by input size: small chunks with small kernels fall to
    the native slow_conv3d, 3-5x slower per frame than oneDNN on the same data (see
    BENCHMARKS.md). Forcing oneDNN keeps short chunks as fast as the offline pass, and the
    same kernel for every chunk size (so streamed and offline results agree bit for bit).
    """
    if _onednn_ok(x, weight):
        return torch.ops.aten.mkldnn_convolution(
            x.contiguous(), weight.contiguous(), bias, [0, 0, 0], stride, dilation, groups
        )
    return F.conv3d(x, weight, bias, stride=stride, dilation=dilation, groups=groups)


def _tail(parts: list[Tensor], frames: int) -> Tensor | None:
    """The last `frames` frames of `parts` joined in time, as a copy (so that the state
    never keeps a whole chunk alive), or None for no memory."""
    if not frames:
        return None
    x = parts[-1]
    if x.shape[2] >= frames or len(parts) == 1:
        return x[:, :, x.shape[2] - frames :].clone()
    return torch.cat([parts[0][:, :, x.shape[2] :], x], dim=2)


class MemoryConv3d(Layer):
    """Causal, stateful Conv3d: one output frame per input frame, same H and W at stride 1.

    `weight` is an `nn.Conv3d` cross-correlation weight (out, in/groups, kt, kh, kw):
    `weight[..., kt-1, :, :]` multiplies the current frame, `weight[..., 0, :, :]` the frame
    (kt-1)*dilation steps earlier. The state is the last (kt-1)*dilation input frames.
    """

    state_names = ("history",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        *,
        stride: int | tuple[int, int] = 1,
        bias: bool = False,
        padding_mode: PaddingMode = "replicate",
        temporal_fill: TemporalFill = "first",
        dilation: int | tuple[int, int, int] = 1,
        groups: int = 1,
        channels_last: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            msg = (
                f"in_channels {in_channels} and out_channels {out_channels} "
                f"must both divide by groups {groups}"
            )
            raise ValueError(msg)
        if padding_mode not in ("zeros", "replicate", "reflect", "circular"):
            msg = (
                f"padding_mode must be zeros, replicate, reflect or circular, got {padding_mode!r}"
            )
            raise ValueError(msg)
        if temporal_fill not in ("first", "zeros"):
            msg = f"temporal_fill must be 'first' or 'zeros', got {temporal_fill!r}"
            raise ValueError(msg)
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if sh < 1 or sw < 1:
            msg = f"stride must be positive, got {stride!r}"
            raise ValueError(msg)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.dilation = (
            _triple(dilation, "dilation")
            if not isinstance(dilation, int)
            else (
                dilation,
                1,
                1,
            )
        )
        if self.dilation[0] < 1:
            msg = f"dilation must be positive, got {dilation!r}"
            raise ValueError(msg)
        self.stride = (sh, sw)
        self.padding_mode: PaddingMode = padding_mode
        self.temporal_fill: TemporalFill = temporal_fill
        self.channels_last = channels_last
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        # Parameters are never inference tensors, even when the layer is built under
        # torch.inference_mode(): those could not be trained, updated in place outside it, or
        # tracked by the version counter the separable cache reads.
        with torch.inference_mode(False):
            self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            self.bias = nn.Parameter(self.weight.new_empty(out_channels)) if bias else None
            self._init_parameters()
        self._factor_weight: Tensor | None = None  # the weight the cached factors belong to
        self._factor_key: tuple[object, ...] | None = None
        self._factor_cache: Factors | None = None

    def _init_parameters(self) -> None:
        # The same default as nn.Conv3d, so swapping one for the other changes nothing.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(max(1, self.weight[0].numel()))
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def memory(self) -> int:
        """Frames of history the layer keeps: (kt - 1) * temporal dilation."""
        return (self.kernel_size[0] - 1) * self.dilation[0]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, groups={self.groups}, "
            f"padding_mode={self.padding_mode!r}, temporal_fill={self.temporal_fill!r}, "
            f"bias={self.bias is not None}"
        )

    def _check(self, x: Tensor, history: Tensor | None) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            msg = f"expected input (N, {self.in_channels}, T, H, W), got {tuple(x.shape)}"
            raise ShapeError(msg)
        if history is not None and (
            history.shape[:2] != x.shape[:2] or history.shape[3:] != x.shape[3:]
        ):
            msg = (
                f"input {tuple(x.shape)} does not continue the stream held in the state "
                f"(N, C, H, W = {tuple(history.shape[:2]) + tuple(history.shape[3:])}); "
                "call reset() (or start from state None) to begin a new stream"
            )
            raise ShapeError(msg)

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        history = state.get("history") if state else None
        self._check(x, history)
        p = self.memory
        if p and history is None:
            history = causal_history(x, p, self.temporal_fill)
        parts = [history.to(x.dtype), x] if history is not None else [x]
        y = self._conv_parts(parts)
        if y is None:
            y = self.conv(torch.cat(parts, dim=2) if len(parts) > 1 else x)
        return y, {"history": _tail(parts, p)}

    def _conv_parts(self, parts: list[Tensor]) -> Tensor | None:
        """The convolution of the frames in `parts` (in time order) through OpenCV when it
        applies (see separable.py), else None."""
        x = parts[-1]
        if not cv2_ok(x, self.padding_mode, self.stride, self.dilation):
            return None
        factors = self._factors(x)
        if factors is None:
            return None
        _, kh, kw = self.kernel_size
        left, right, top, bottom = spatial_pads(kh, kw, 1, 1)
        h, w = x.shape[3], x.shape[4]
        if self.padding_mode == "reflect" and (max(left, right) >= w or max(top, bottom) >= h):
            msg = f"reflect padding {(left, right, top, bottom)} needs frames larger than {h}x{w}"
            raise ShapeError(msg)
        return separable_cv2(parts, factors, self.bias, self.padding_mode, (left, top),
                             self.dilation[0])  # fmt: skip

    def conv(self, full: Tensor) -> Tensor:
        """The offline operation: spatial padding, then F.conv3d (time already filled)."""
        fast = self._conv_parts([full])
        if fast is not None:
            return fast
        _, kh, kw = self.kernel_size
        pads = spatial_pads(kh, kw, self.dilation[1], self.dilation[2])
        h, w = full.shape[3], full.shape[4]
        if self.padding_mode == "zeros":
            padded = F.pad(full, (*pads, 0, 0))
        else:
            if self.padding_mode == "reflect" and (max(pads[:2]) >= w or max(pads[2:]) >= h):
                msg = f"reflect padding {pads} needs frames larger than {h}x{w}"
                raise ShapeError(msg)
            padded = F.pad(full, (*pads, 0, 0), mode=self.padding_mode)
        weight: Tensor = self.weight
        if self.channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last_3d)
            weight = weight.contiguous(memory_format=torch.channels_last_3d)
        factors = self._factors(padded)
        if factors is not None:
            return separable_conv3d(padded, factors, self.bias, self.stride, self.dilation)
        return conv3d(padded, weight, self.bias, (1, *self.stride), self.dilation, self.groups)

    def _factors(self, x: Tensor) -> Factors | None:
        """Separable factors of the weight for inference (cached until the weight changes).

        Training keeps the direct convolution: gradients must flow into `weight` itself.
        """
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return None
        weight = self.weight.detach()
        if weight.shape[:2] != (1, 1):
            return None  # only single-channel kernels factorise: no cache to keep
        # An inference tensor (a weight moved or converted under torch.inference_mode) has no
        # version counter: it is always checked by value, on a GPU too (a sync per chunk).
        version = None if weight.is_inference() else weight._version
        key = (weight.dtype, weight.device, weight.data_ptr(), version)
        cached = self._factor_weight
        stale = self._factor_key != key or cached is None
        if not stale and (version is None or weight.device.type == "cpu"):
            # Also by value (a few hundred numbers, no device sync on the CPU): edits through
            # .data or load_state_dict leave no other trace. On a GPU, change weights with
            # set_weight or ordinary in-place ops, which the version counter sees.
            stale = not torch.equal(cached, weight)  # type: ignore[arg-type]
        if stale:
            self._factor_key = key
            self._factor_weight, self._factor_cache = weight.clone(), factorize(weight)
        return self._factor_cache

    @torch.no_grad()
    def set_weight(
        self, w: float | np.ndarray | Tensor, *, normalize: bool = False, flip: bool = True
    ) -> None:
        """Set the kernel from a number, (kt,), (kh,kw), (kt,kh,kw) or a full 5-D weight.

        Lower-dimensional kernels are broadcast over output and input channels; a kernel of a
        new size changes `kernel_size` (and resets the state, whose length may change).
        With `flip=True`, `w` is the impulse response: an impulse at (t0, y0, x0) gives
        w[tau, i, j] at (t0 + tau, y0 + i - (kh-1)//2, x0 + j - (kw-1)//2).
        `normalize=True` scales `w` to sum 1.
        """
        k = torch.as_tensor(w, dtype=torch.float64)
        if not torch.isfinite(k).all():
            msg = "weight holds NaN or infinite values"
            raise ValueError(msg)
        shape = {0: (1, 1, 1), 1: (k.numel(), 1, 1), 2: (1, *k.shape), 3: tuple(k.shape)}
        if k.ndim in shape:
            k = k.reshape(1, 1, *shape[k.ndim])
        elif k.ndim != 5:
            msg = f"weight must be a number or have 1, 2, 3 or 5 dimensions, got {tuple(k.shape)}"
            raise ShapeError(msg)
        if normalize:
            total = k.sum()
            if total == 0:
                msg = "cannot normalize a kernel that sums to 0"
                raise ValueError(msg)
            k = k / total
        if flip:
            k = k.flip(dims=(2, 3, 4))
        channels = (self.out_channels, self.in_channels // self.groups)
        if k.shape[:2] not in ((1, 1), channels):
            msg = f"5-D weight must have shape {channels} + (kt, kh, kw), got {tuple(k.shape)}"
            raise ShapeError(msg)
        k = k.expand(*channels, *k.shape[2:]).to(self.weight)
        if tuple(k.shape[2:]) != self.kernel_size:
            self.kernel_size = _triple(tuple(k.shape[2:]), "kernel_size")
            with torch.inference_mode(False):  # a normal tensor, as in __init__
                self.weight = nn.Parameter(k.clone(), requires_grad=self.weight.requires_grad)
            self.reset()
        elif self.weight.is_inference():  # converted under inference mode: edited only there
            with torch.inference_mode():
                self.weight.copy_(k)
        else:
            self.weight.copy_(k)
