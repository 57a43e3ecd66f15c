"""A temporal high pass written as a user would write it (bench/own_model.py): the math of
the built-in `highpass` layer (y = x - lowpass(x), lowpass[t] = lerp(lowpass[t-1], x[t], a)),
as a plain `streamconv.layers.Layer` of one's own."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from streamconv.layers import Layer, State


class MyHighPass(Layer):
    state_names = ("low",)  # declared, so that streams batch and checkpoint

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.alpha = 1.0 - math.exp(-1.0 / tau)

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        low = state.get("low") if state else None
        # An owned copy, updated in place (a state handed out earlier must never change).
        low = (x[:, :, 0] if low is None else low).clone()
        out = torch.empty_like(x)
        for t in range(x.shape[2]):
            low.lerp_(x[:, :, t], self.alpha)
            torch.sub(x[:, :, t], low, out=out[:, :, t])
        return out, {"low": low}
