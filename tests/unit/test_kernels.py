"""Kernel helpers: shapes, sums, symmetry; a center-surround stage in a few lines."""

from __future__ import annotations

import pytest
import torch

from streamconv.layers import (
    MemoryConv3d,
    dog_kernel,
    exponential_kernel,
    gaussian_kernel,
    random_kernel,
)


def test_gaussian_is_normalized_symmetric_and_peaked() -> None:
    g = gaussian_kernel(1.5)
    assert g.shape == (11, 11)
    assert g.sum().item() == pytest.approx(1.0)
    assert torch.allclose(g, g.T)
    assert torch.allclose(g, g.flip(0))
    assert g.argmax().item() == 5 * 11 + 5


def test_dog_sums_to_zero_and_is_positive_in_the_center() -> None:
    k = dog_kernel(1.0, 3.0)
    assert k.sum().item() == pytest.approx(0.0, abs=1e-12)
    assert k[k.shape[0] // 2, k.shape[1] // 2] > 0
    assert k[0, k.shape[1] // 2] < 0
    with pytest.raises(ValueError, match="must exceed"):
        dog_kernel(3.0, 1.0)


def test_exponential_kernel_peaks_at_n_minus_1_tau() -> None:
    k = exponential_kernel(4.0, n=3)
    assert k.sum().item() == pytest.approx(1.0)
    assert k.argmax().item() == 8
    assert exponential_kernel(2.0, length=5).shape == (5,)


def test_random_kernel_is_reproducible() -> None:
    assert torch.equal(random_kernel((2, 3), seed=7), random_kernel((2, 3), seed=7))
    assert not torch.equal(random_kernel((2, 3), seed=7), random_kernel((2, 3), seed=8))


def test_center_surround_stage_ignores_uniform_light() -> None:
    layer = MemoryConv3d(1, 1, 1, dtype=torch.float64)
    layer.set_weight(exponential_kernel(2.0)[:, None, None] * dog_kernel(1.0, 2.0)[None])
    flat = layer.run(torch.full((12, 16, 16), 0.5, dtype=torch.float64))
    assert flat.abs().max().item() < 1e-12
    spot = torch.zeros(12, 16, 16, dtype=torch.float64)
    spot[:, 8, 8] = 1.0
    assert layer.run(spot)[0, 0, -1, 8, 8] > 0
