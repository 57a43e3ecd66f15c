"""Layer types 'lowpass' and 'highpass': recursive exponential temporal filters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from streamconv.config.layers.base import LayerConfig

if TYPE_CHECKING:
    from streamconv.layers import Layer


class FilterLayer(LayerConfig):
    """A recursive exponential TemporalLowPass or TemporalHighPass."""

    type: Literal["lowpass", "highpass"]
    tau: float = Field(gt=0)
    n: int = Field(default=1, ge=1)
    temporal_fill: Literal["first", "zeros"] = "first"

    def build(self, channels: int) -> tuple[Layer, int]:
        from streamconv.layers import TemporalHighPass, TemporalLowPass

        cls = TemporalLowPass if self.type == "lowpass" else TemporalHighPass
        return cls(self.tau, self.n, temporal_fill=self.temporal_fill), channels
