"""The layer pipeline's settings, as the [[layers]] of a config file: one file per layer type
(its spec and its `build`), registered in LAYER_TYPES below.

Adding a layer type is a file here subclassing LayerConfig plus one entry in LAYER_TYPES: the
`type` values a config may write, and the error naming them, come from that tuple.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, TypeAlias, Union

from pydantic import Field

from streamconv.config.layers.base import LAYER_NAME_PATTERN, LayerConfig, LayerName, Strict
from streamconv.config.layers.conv import ConvLayer
from streamconv.config.layers.filters import FilterLayer
from streamconv.config.layers.kernels import (
    DogKernel,
    ExponentialKernel,
    FileKernel,
    FullKernel,
    GaussianKernel,
    RandomKernel,
    SpatialKernel,
)
from streamconv.config.layers.nonlinearity import NonlinearityLayer
from streamconv.config.layers.python import PythonLayer

LAYER_TYPES: tuple[type[LayerConfig], ...] = (ConvLayer, FilterLayer, NonlinearityLayer,
                                              PythonLayer)  # fmt: skip

if TYPE_CHECKING:  # a union built at run time is no type to mypy; every member is one of these
    LayerSpec: TypeAlias = LayerConfig
else:
    LayerSpec = Annotated[Union[LAYER_TYPES], Field(discriminator="type")]  # noqa: UP007

__all__ = [
    "LAYER_NAME_PATTERN",
    "LAYER_TYPES",
    "ConvLayer",
    "DogKernel",
    "ExponentialKernel",
    "FileKernel",
    "FilterLayer",
    "FullKernel",
    "GaussianKernel",
    "LayerConfig",
    "LayerName",
    "LayerSpec",
    "NonlinearityLayer",
    "PythonLayer",
    "RandomKernel",
    "SpatialKernel",
    "Strict",
]
