"""`Nonlinearity`: stateless pointwise functions (rectification and friends)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from streamconv.layers.base import Layer, State

NonlinearityKind = Literal["relu", "abs", "square", "sigmoid", "tanh", "identity"]

_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "abs": torch.abs,
    "square": torch.square,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "identity": lambda v: v,
}
# The same functions in place, for a tensor this layer made itself.
_IN_PLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu_,
    "abs": torch.abs_,
    "square": lambda v: v.square_(),
    "sigmoid": torch.sigmoid_,
    "tanh": torch.tanh_,
    "identity": lambda v: v,
}


class Nonlinearity(Layer):
    """y = gain * f(x - threshold), frame by frame; no temporal state."""

    def __init__(
        self, kind: NonlinearityKind = "relu", *, threshold: float = 0.0, gain: float = 1.0
    ) -> None:
        super().__init__()
        if kind not in _FUNCTIONS:
            msg = f"nonlinearity must be one of {sorted(_FUNCTIONS)}, got {kind!r}"
            raise ValueError(msg)
        self.kind, self.threshold, self.gain = kind, float(threshold), float(gain)
        self._fn = _FUNCTIONS[kind]

    def extra_repr(self) -> str:
        return f"{self.kind!r}, threshold={self.threshold}, gain={self.gain}"

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        # Skip the no-op arithmetic: each op is a full pass over the frames (and an
        # identity stage then costs nothing). Never in place on x (another stage's output):
        # the first op makes a new tensor, the others update that one.
        # Autograd keeps relu/sigmoid/tanh outputs for the backward pass: no in place then.
        grad = torch.is_grad_enabled() and x.requires_grad
        if self.threshold:
            shifted = x - self.threshold
            y = self._fn(shifted) if grad else _IN_PLACE[self.kind](shifted)
        else:
            y = self._fn(x)
        if self.gain != 1.0:
            y = y * self.gain if grad or y is x else y.mul_(self.gain)
        return y, {}
