"""`Nonlinearity`: stateless pointwise functions (rectification and friends)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from streamconv.layers.base import Floats, Layer, State, learning, operand, scalar

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
        self.kind = kind
        self.threshold, self.gain = scalar(threshold), scalar(gain)  # learnable, loadable
        self._fn = _FUNCTIONS[kind]
        self._floats = Floats()

    def extra_repr(self) -> str:
        threshold, gain = self._floats.of(self.threshold, self.gain)
        return f"{self.kind!r}, threshold={threshold}, gain={gain}"

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        if learning(self.threshold, self.gain, x):  # tensors all the way: threshold, gain learn
            shifted = x - operand(self.threshold, x.dtype)
            return self._fn(shifted) * operand(self.gain, x.dtype), {}
        # Skip the no-op arithmetic: each op is a full pass over the frames (and an
        # identity stage then costs nothing). Never in place on x (another stage's output):
        # the first op makes a new tensor, the others update that one.
        threshold, gain = self._floats.of(self.threshold, self.gain)
        y = _IN_PLACE[self.kind](x - threshold) if threshold else self._fn(x)
        if gain != 1.0:
            y = y * gain if y is x else y.mul_(gain)
        return y, {}
