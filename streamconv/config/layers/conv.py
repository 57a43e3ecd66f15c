"""Layer type 'conv': a MemoryConv3d, its kernel from helpers or a weights file (torch is
imported inside `build` and the helpers only: settings load without it, see LayerConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from streamconv.config.layers.base import LayerConfig
from streamconv.config.layers.kernels import (
    DogKernel,
    ExponentialKernel,
    FileKernel,
    FullKernel,
    GaussianKernel,
    SpatialKernel,
)
from streamconv.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

    from streamconv.layers import Layer


class ConvLayer(LayerConfig):
    """A MemoryConv3d. Its kernel is `kernel` (random or from a file), or the product of a
    `temporal` (exponential) and a `spatial` (gaussian/dog) kernel, either of which may be
    left out."""

    type: Literal["conv"]
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

    def build(self, channels: int) -> tuple[Layer, int]:
        import torch

        from streamconv.layers import MemoryConv3d

        try:
            conv = MemoryConv3d(
                channels,
                self.out_channels,
                1,
                stride=self.stride,
                bias=self.bias_values() is not None,
                padding_mode=self.padding_mode,
                temporal_fill=self.temporal_fill,
                dilation=self.dilation,
                groups=self.groups,
                dtype=torch.float64,  # kernels rounded once, by build_model's .to(dtype)
            )
            conv.set_weight(conv_kernel(self), normalize=self.normalize, flip=self.flip)
        except ValueError as e:
            msg = f"layer {self.name!r}: {e}"
            raise ConfigError(msg) from e
        values = self.bias_values()
        if conv.bias is not None and values is not None:
            with torch.no_grad():
                conv.bias.copy_(torch.tensor(values, dtype=conv.bias.dtype))
        return conv, self.out_channels


def conv_kernel(spec: ConvLayer) -> Tensor:
    """The kernel a conv layer spec describes, as given to `MemoryConv3d.set_weight`."""
    import torch

    from streamconv.layers import (
        dog_kernel,
        exponential_kernel,
        gaussian_kernel,
        random_kernel,
    )

    if spec.kernel is not None:
        if isinstance(spec.kernel, FileKernel):
            return load_weights(spec.kernel.path)
        return random_kernel(spec.kernel.size, spec.kernel.seed, scale=spec.kernel.scale)
    spatial = torch.ones(1, 1, dtype=torch.float64)
    if isinstance(spec.spatial, GaussianKernel):
        spatial = gaussian_kernel(spec.spatial.sigma, spec.spatial.size)
    elif isinstance(spec.spatial, DogKernel):
        spatial = dog_kernel(
            spec.spatial.sigma_center,
            spec.spatial.sigma_surround,
            surround_weight=spec.spatial.surround_weight,
            size=spec.spatial.size,
        )
    temporal = torch.ones(1, dtype=torch.float64)
    if spec.temporal is not None:
        temporal = exponential_kernel(spec.temporal.tau, spec.temporal.n, spec.temporal.length)
    return temporal[:, None, None] * spatial[None]


def load_weights(path: Path) -> Tensor:
    import numpy as np
    import torch

    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if path.suffix == ".pt":
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except OSError:
                raise
            except Exception as e:  # a corrupt file raises EOFError, IndexError, pickle errors
                msg = f"cannot load weights file {path}: {e!r}"
                raise ConfigError(msg) from e
            if isinstance(loaded, torch.Tensor):
                return loaded
            msg = f"weights file {path} holds a {type(loaded).__name__}, not a tensor"
            raise ConfigError(msg)
    except (OSError, ValueError, RuntimeError) as e:
        msg = f"cannot load weights file {path}: {e}"
        raise ConfigError(msg) from e
    msg = f"weights file {path} must end in .npy or .pt"
    raise ConfigError(msg)
