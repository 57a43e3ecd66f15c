"""The separable fast path: same results as the direct convolution, for any chunking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamconv.layers import MemoryConv3d, dog_kernel, exponential_kernel, gaussian_kernel
from streamconv.layers.separable import factorize
from tests.unit.reference import offline_conv, rel_err

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def low_rank_kernel(rng: np.random.Generator, kt: int, kh: int, kw: int, rank: int) -> np.ndarray:
    spatial = sum(np.outer(rng.normal(size=kh), rng.normal(size=kw)) for _ in range(rank))
    return rng.normal(size=kt)[:, None, None] * spatial[None]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kernel=st.tuples(st.integers(2, 5), st.integers(5, 7), st.integers(5, 7)),  # worth it
    rank=st.integers(1, 2),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    mode=st.sampled_from(["zeros", "replicate", "reflect", "circular"]),
    fill=st.sampled_from(["first", "zeros"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    bias=st.booleans(),
    t_len=st.integers(1, 12),
    data=st.data(),
)
def test_streamed_separable_equals_offline_reference(
    kernel: tuple[int, int, int],
    rank: int,
    dilation: tuple[int, int, int],
    stride: tuple[int, int],
    mode: str,
    fill: str,
    dtype: torch.dtype,
    bias: bool,
    t_len: int,
    data: st.DataObject,
) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    kt, kh, kw = kernel
    layer = MemoryConv3d(1, 1, kernel, stride=stride, dilation=dilation, padding_mode=mode,  # type: ignore[arg-type]
                         temporal_fill=fill, bias=bias, dtype=dtype)  # type: ignore[arg-type]  # fmt: skip
    layer.set_weight(low_rank_kernel(rng, kt, kh, kw, rank), flip=False)
    h = (kh - 1) * dilation[1] + 1 + data.draw(st.integers(0, 4))
    w = (kw - 1) * dilation[2] + 1 + data.draw(st.integers(0, 4))
    x = torch.from_numpy(rng.normal(size=(2, 1, t_len, h, w)))
    cuts = data.draw(st.sets(st.integers(1, max(1, t_len - 1)), max_size=t_len))
    bounds = [0, *sorted(c for c in cuts if c < t_len), t_len]
    with torch.no_grad():
        streamed = torch.cat([layer(x[:, :, a:b]) for a, b in itertools.pairwise(bounds)], dim=2)
    assert layer._factor_cache is not None  # the fast path ran
    expected = offline_conv(
        x.to(dtype).numpy(),
        layer.weight.detach().numpy(),
        bias=None if layer.bias is None else layer.bias.detach().numpy(),
        fill=fill,
        padding_mode=mode,
        dilation=dilation,
        stride=stride,
    )
    assert rel_err(streamed.numpy(), expected) < TOLERANCE[dtype]


def test_helper_kernels_are_separable_and_random_ones_are_not() -> None:
    gauss = exponential_kernel(1.5, length=4)[:, None, None] * gaussian_kernel(1.0)
    dog = exponential_kernel(1.2, 2, 6)[:, None, None] * dog_kernel(0.8, 2.0, size=11)
    for kernel, terms in ((gauss, 1), (dog, 2)):
        factors = factorize(kernel[None, None].float())
        assert factors is not None
        assert len(factors.rows) == terms
    assert factorize(torch.randn(1, 1, 3, 7, 7)) is None
    assert factorize(torch.ones(2, 1, 3, 7, 7)) is None  # several channels: direct path


def test_training_uses_the_direct_path_and_an_optimizer_step_refreshes_the_cache() -> None:
    layer = MemoryConv3d(1, 1, 1)
    layer.set_weight(exponential_kernel(1.0, length=3)[:, None, None] * gaussian_kernel(1.0))
    x = torch.randn(1, 1, 8, 12, 12)
    with torch.no_grad():
        fast = layer.run(x)
    layer.reset()
    slow = layer(x)  # grad enabled and weight requires grad: direct convolution
    assert layer._factor_cache is not None  # from the no_grad pass
    assert rel_err(slow.detach().numpy(), fast.numpy()) < 1e-5
    slow.sum().backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))  # no longer separable
        layer.reset()
        direct = layer.run(x)
    assert layer._factor_cache is None
    reference = offline_conv(x.numpy(), layer.weight.detach().numpy())
    assert rel_err(direct.numpy(), reference) < 1e-5


def test_the_cache_follows_dtype_and_half_precision_keeps_the_direct_path() -> None:
    layer = MemoryConv3d(1, 1, 1)
    layer.set_weight(exponential_kernel(1.0, length=3)[:, None, None] * gaussian_kernel(1.0))
    x = torch.randn(1, 1, 6, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        layer.run(x)
        assert layer._factor_cache is not None  # float32: separable to float32 rounding
        layer.double()
        layer.reset()
        y = layer.run(x)
    # The float32-rounded kernel is not separable to float64 precision: direct path, exact.
    assert layer._factor_cache is None
    assert rel_err(y.numpy(), offline_conv(x.numpy(), layer.weight.detach().numpy())) < 1e-12
    assert factorize(layer.weight.detach().half()) is None


def test_non_finite_weights_are_rejected() -> None:
    layer = MemoryConv3d(1, 1, 1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        layer.set_weight(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
            ],
        ),
    ],
)
@pytest.mark.parametrize("convert", [False, True], ids=["normal weight", "inference weight"])
def test_the_cache_sees_weight_changes_under_inference_mode(device: str, convert: bool) -> None:
    kernel = exponential_kernel(1.0, length=3)[:, None, None] * gaussian_kernel(1.0)
    x = torch.randn(1, 1, 8, 12, 12, dtype=torch.float64)
    with torch.inference_mode():
        if convert:  # converted under inference mode: an inference tensor, no version counter
            layer = MemoryConv3d(1, 1, (3, 7, 7)).to(device, torch.float64)
        else:  # built under inference mode: still a normal parameter
            layer = MemoryConv3d(1, 1, (3, 7, 7), device=device, dtype=torch.float64)
        layer.set_weight(kernel)  # the same size: copied into the weight in place
        assert layer.weight.is_inference() == convert
        first = layer.run(x)
        assert layer._factor_cache is not None
        layer.weight.mul_(-2.0)  # in place: the version counter or the value check sees it
        layer.reset()
        doubled = layer.run(x)
        layer.set_weight(2 * kernel)
        layer.reset()
        last = layer.run(x)
    assert layer._factor_cache is not None  # still the fast path
    assert isinstance(first, torch.Tensor)
    assert isinstance(doubled, torch.Tensor)
    assert isinstance(last, torch.Tensor)
    assert rel_err(doubled.numpy(), -2 * first.numpy()) < 1e-12
    reference = offline_conv(x.numpy(), layer.weight.detach().cpu().numpy())
    assert rel_err(last.numpy(), reference) < 1e-12
