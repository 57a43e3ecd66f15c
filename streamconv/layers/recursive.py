"""Recursive exponential temporal filters (IIR): O(1) state per pixel, exact across chunks.

Each stage computes y[t] = y[t-1] + a * (x[t] - y[t-1]) with a = 1 - exp(-1/tau), the exact
discretisation of a first-order low pass with time constant `tau` frames; `n` stages in
cascade give a gamma-shaped impulse response. The state is the last output of every stage,
so a chunk boundary changes nothing: the same operations run in the same order.

One fused `lerp` per frame and stage, still a loop over frames: a closed form (a T x T
matrix over the chunk, or a parallel scan) is exact in arithmetic only, and its float
rounding would depend on the chunk length, breaking streamed == offline bit for bit.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import Tensor

from streamconv.errors import ShapeError
from streamconv.layers.base import Floats, Layer, State, learning, operand, scalar


class TemporalLowPass(Layer):
    """`n` cascaded first-order exponential low passes with time constant `tau` frames.

    Before the first frame the filter is at rest on the first frame (`temporal_fill="first"`,
    so a constant input passes unchanged) or at zero (`"zeros"`).
    """

    state_names = ("stages",)
    state_batch_dims: ClassVar[dict[str, int]] = {"stages": 1}  # (n stages, N, C, H, W)

    def __init__(
        self, tau: float, n: int = 1, *, temporal_fill: Literal["first", "zeros"] = "first"
    ) -> None:
        super().__init__()
        if not tau > 0 or n < 1:
            msg = f"tau must be > 0 frames and n >= 1 stages, got tau={tau!r}, n={n!r}"
            raise ValueError(msg)
        if temporal_fill not in ("first", "zeros"):
            msg = f"temporal_fill must be 'first' or 'zeros', got {temporal_fill!r}"
            raise ValueError(msg)
        self.n, self.temporal_fill = int(n), temporal_fill
        self.tau = scalar(tau)  # learnable: fit moves it, [model] weights load it
        self._floats = Floats()

    @property
    def alpha(self) -> float:
        """1 - exp(-1/tau), from tau's current value (the inference path's weight)."""
        (tau,) = self._floats.of(self.tau)
        return 1.0 - math.exp(-1.0 / tau)

    def extra_repr(self) -> str:
        (tau,) = self._floats.of(self.tau)
        return f"tau={tau}, n={self.n}, temporal_fill={self.temporal_fill!r}"

    def _filter(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        stages = state.get("stages") if state else None
        if stages is None:
            first = x[:, :, 0] if self.temporal_fill == "first" else torch.zeros_like(x[:, :, 0])
            stages = first.unsqueeze(0).expand(self.n, *first.shape)
        elif stages.shape[1:] != x[:, :, 0].shape:
            msg = (
                f"input {tuple(x.shape)} does not continue the stream held in the state "
                f"(N, C, H, W = {tuple(stages.shape[1:])}); call reset() to begin a new stream"
            )
            raise ShapeError(msg)
        if learning(self.tau, x, stages):
            return self._filter_differentiable(x, stages)
        # Owned copies, updated in place (a state handed out earlier never changes); each
        # step is one fused lerp, written straight into the output for the last stage.
        current = [stage.to(x.dtype, copy=True) for stage in stages.unbind(0)]
        out = torch.empty_like(x)
        last, alpha = self.n - 1, self.alpha
        for t in range(x.shape[2]):
            value = x[:, :, t]
            for k in range(last):
                value = current[k].lerp_(value, alpha)
            current[last] = torch.lerp(current[last], value, alpha, out=out[:, :, t])
        return out, {"stages": torch.stack(current)}

    def _filter_differentiable(self, x: Tensor, stages: Tensor) -> tuple[Tensor, State]:
        """The same lerps without writing into tensors, for training (autograd, tau too)."""
        alpha = -torch.expm1(-1.0 / operand(self.tau, x.dtype))
        current = list(stages.to(x.dtype).unbind(0))
        outputs = []
        for t in range(x.shape[2]):
            value = x[:, :, t]
            for k in range(self.n):
                current[k] = value = torch.lerp(current[k], value, alpha)
            outputs.append(value)
        return torch.stack(outputs, dim=2), {"stages": torch.stack(current)}

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        return self._filter(x, state)


class TemporalHighPass(TemporalLowPass):
    """x - lowpass(x): the transient part of the input; a constant input gives 0."""

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        low, new_state = self._filter(x, state)
        if low.requires_grad:
            return x - low, new_state
        return torch.sub(x, low, out=low), new_state  # low is this call's own tensor
