"""Kernel helpers for `MemoryConv3d.set_weight`: Gaussian, difference of Gaussians,
exponential (gamma) temporal kernels and seeded random kernels. All return float64 tensors
written as impulse responses (use them with `flip=True`, the default)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _size(sigma: float, size: int | None) -> int:
    return 2 * math.ceil(3 * sigma) + 1 if size is None else size


def gaussian_kernel(sigma: float, size: int | None = None, *, normalize: bool = True) -> Tensor:
    """2-D isotropic Gaussian (size x size, default 2*ceil(3 sigma)+1), summing to 1."""
    if not sigma > 0:
        msg = f"sigma must be > 0 pixels, got {sigma!r}"
        raise ValueError(msg)
    size = _size(sigma, size)
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g1 = torch.exp(-(r**2) / (2 * sigma**2))
    g = g1[:, None] * g1[None, :]
    return g / g.sum() if normalize else g


def dog_kernel(
    sigma_center: float,
    sigma_surround: float,
    *,
    surround_weight: float = 1.0,
    size: int | None = None,
) -> Tensor:
    """Difference of Gaussians: center - surround_weight * surround (each summing to 1).

    With surround_weight 1 it sums to 0: an on-center receptive field that ignores uniform
    light. Negate it for an off-center one.
    """
    if not sigma_surround > sigma_center:
        msg = f"sigma_surround ({sigma_surround}) must exceed sigma_center ({sigma_center})"
        raise ValueError(msg)
    size = _size(sigma_surround, size)
    return gaussian_kernel(sigma_center, size) - surround_weight * gaussian_kernel(
        sigma_surround, size
    )


def exponential_kernel(
    tau: float, n: int = 1, length: int | None = None, *, normalize: bool = True
) -> Tensor:
    """1-D temporal impulse response of `n` cascaded exponential stages (gamma kernel),
    t^(n-1) exp(-t/tau), sampled at t = 0..length-1 (default covers all but ~0.3% of it)."""
    if not tau > 0 or n < 1:
        msg = f"tau must be > 0 frames and n >= 1, got tau={tau!r}, n={n!r}"
        raise ValueError(msg)
    length = math.ceil(tau * (n + 6)) if length is None else length
    t = torch.arange(length, dtype=torch.float64)
    k = t ** (n - 1) * torch.exp(-t / tau)
    return k / k.sum() if normalize else k


def random_kernel(shape: tuple[int, ...], seed: int, *, scale: float = 1.0) -> Tensor:
    """Reproducible Gaussian random kernel of `shape` (the same numbers on every machine)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale
