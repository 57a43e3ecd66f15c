"""Kernel specs: the spatial and temporal kernels a conv layer is built from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from streamconv.config.layers.base import Strict


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
