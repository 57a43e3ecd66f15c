"""Streaming torch layers: exact across any chunking, state carried between chunks.

No I/O here and no config objects: constructor arguments like torch.nn.
"""

from streamconv.layers.base import Layer, Output, State
from streamconv.layers.conv import MemoryConv3d
from streamconv.layers.kernels import (
    dog_kernel,
    exponential_kernel,
    gaussian_kernel,
    random_kernel,
)
from streamconv.layers.pointwise import Nonlinearity
from streamconv.layers.recursive import TemporalHighPass, TemporalLowPass
from streamconv.layers.sequential import Sequential

__all__ = [
    "Layer",
    "MemoryConv3d",
    "Nonlinearity",
    "Output",
    "Sequential",
    "State",
    "TemporalHighPass",
    "TemporalLowPass",
    "dog_kernel",
    "exponential_kernel",
    "gaussian_kernel",
    "random_kernel",
]
