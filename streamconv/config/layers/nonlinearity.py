"""Layer type 'nonlinearity': a stateless pointwise function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from streamconv.config.layers.base import LayerConfig

if TYPE_CHECKING:
    from streamconv.layers import Layer


class NonlinearityLayer(LayerConfig):
    type: Literal["nonlinearity"]
    # As streamconv.layers.pointwise.NonlinearityKind, which config cannot import (torch).
    kind: Literal["relu", "abs", "square", "sigmoid", "tanh", "identity"] = "relu"
    threshold: float = 0.0
    gain: float = 1.0

    def build(self, channels: int) -> tuple[Layer, int]:
        from streamconv.layers import Nonlinearity

        return Nonlinearity(self.kind, threshold=self.threshold, gain=self.gain), channels
