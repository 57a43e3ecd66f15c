"""The layer pipeline's settings: kernels and layers, as the [[layers]] of a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Layer names become torch module names too, which cannot contain a dot.
LAYER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
LayerName = Annotated[str, Field(pattern=LAYER_NAME_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- kernels ---------------------------------------------------------------------------------
class GaussianKernel(Strict):
    kind: Literal["gaussian"]
    sigma: float = Field(gt=0)
    size: int | None = Field(default=None, ge=1)


class DogKernel(Strict):
    kind: Literal["dog"]
    sigma_center: float = Field(gt=0)
    sigma_surround: float = Field(gt=0)
    surround_weight: float = 1.0
    size: int | None = Field(default=None, ge=1)


class ExponentialKernel(Strict):
    kind: Literal["exponential"]
    tau: float = Field(gt=0)
    n: int = Field(default=1, ge=1)
    length: int | None = Field(default=None, ge=1)


class RandomKernel(Strict):
    kind: Literal["random"]
    seed: int = 0
    size: tuple[int, int, int]
    scale: float = 0.1


class FileKernel(Strict):
    """A .npy or .pt file holding a (kt,kh,kw) kernel or a full (out, in, kt, kh, kw) weight."""

    kind: Literal["file"]
    path: Path


SpatialKernel = Annotated[GaussianKernel | DogKernel, Field(discriminator="kind")]
FullKernel = Annotated[RandomKernel | FileKernel, Field(discriminator="kind")]


# -- layers ----------------------------------------------------------------------------------
class ConvLayer(Strict):
    """A MemoryConv3d. Its kernel is `kernel` (random or from a file), or the product of a
    `temporal` (exponential) and a `spatial` (gaussian/dog) kernel, either of which may be
    left out."""

    type: Literal["conv"]
    name: LayerName
    out_channels: int = Field(default=1, ge=1)
    kernel: FullKernel | None = None
    spatial: SpatialKernel | None = None
    temporal: ExponentialKernel | None = None
    normalize: bool = False
    flip: bool = Field(
        default=True,
        description="kernels are impulse responses; false for nn.Conv3d-style weights",
    )
    bias: bool | float | list[float] = Field(
        default=False,
        description="added to the output: a number for every output channel, or one per "
        "channel; true is a bias of 0 (a parameter to set later), false none",
    )
    padding_mode: Literal["zeros", "replicate", "reflect", "circular"] = "replicate"
    temporal_fill: Literal["first", "zeros"] = "first"
    dilation: int = Field(default=1, ge=1)
    stride: int = Field(default=1, ge=1)
    groups: int = Field(default=1, ge=1)
    publish: bool = True

    @model_validator(mode="after")
    def _one_kernel_source(self) -> ConvLayer:
        if self.kernel is not None and (self.spatial is not None or self.temporal is not None):
            msg = "give either 'kernel' or 'spatial'/'temporal', not both"
            raise ValueError(msg)
        if self.kernel is None and self.spatial is None and self.temporal is None:
            msg = "needs a 'kernel' (random or file) or a 'spatial' and/or 'temporal' kernel"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _bias_per_channel(self) -> ConvLayer:
        if isinstance(self.bias, list) and len(self.bias) != self.out_channels:
            msg = (
                f"bias has {len(self.bias)} values for {self.out_channels} output channels: "
                "give one number for all, or one per channel"
            )
            raise ValueError(msg)
        return self

    def bias_values(self) -> list[float] | None:
        """The bias of each output channel, or None for no bias."""
        if self.bias is False:
            return None
        if isinstance(self.bias, list):
            return list(self.bias)
        return [0.0 if self.bias is True else float(self.bias)] * self.out_channels


class FilterLayer(Strict):
    """A recursive exponential TemporalLowPass or TemporalHighPass."""

    type: Literal["lowpass", "highpass"]
    name: LayerName
    tau: float = Field(gt=0)
    n: int = Field(default=1, ge=1)
    temporal_fill: Literal["first", "zeros"] = "first"
    publish: bool = True


class NonlinearityLayer(Strict):
    type: Literal["nonlinearity"]
    name: LayerName
    kind: Literal["relu", "abs", "square", "sigmoid", "tanh", "identity"] = "relu"
    threshold: float = 0.0
    gain: float = 1.0
    publish: bool = True


LayerSpec = Annotated[ConvLayer | FilterLayer | NonlinearityLayer, Field(discriminator="type")]
