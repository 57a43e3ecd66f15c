"""MemoryConv3d: streamed output equals the offline whole-video result for any chunking."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamconv.errors import ShapeError
from streamconv.layers import MemoryConv3d, State
from tests.unit.reference import offline_conv, rel_err

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    groups = draw(st.integers(1, 2))
    kt, kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    eff_h, eff_w = (kh - 1) * dil[1] + 1, (kw - 1) * dil[2] + 1
    t_len = draw(st.integers(1, 14))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, t_len - 1)), max_size=t_len))))
    cuts = [c for c in cuts if c < t_len]
    return {
        "n": draw(st.integers(1, 2)),
        "c": groups * draw(st.integers(1, 2)),
        "o": groups * draw(st.integers(1, 2)),
        "groups": groups,
        "kernel": (kt, kh, kw),
        "dilation": dil,
        "stride": (draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        "shape": (t_len, eff_h + draw(st.integers(0, 4)), eff_w + draw(st.integers(0, 4))),
        "bounds": [0, *cuts, t_len],
        "padding_mode": draw(st.sampled_from(["zeros", "replicate", "reflect", "circular"])),
        "fill": draw(st.sampled_from(["first", "zeros"])),
        "bias": draw(st.booleans()),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "seed": draw(st.integers(0, 2**16)),
        # Inference (no grad) takes the daemon's paths: oneDNN on the CPU, or separable.
        "inference": draw(st.booleans()),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_any_chunking_equals_offline_reference(case: dict) -> None:
    torch.manual_seed(case["seed"])
    layer = MemoryConv3d(
        case["c"],
        case["o"],
        case["kernel"],
        stride=case["stride"],
        bias=case["bias"],
        padding_mode=case["padding_mode"],
        temporal_fill=case["fill"],
        dilation=case["dilation"],
        groups=case["groups"],
        dtype=case["dtype"],
    )
    x = torch.randn(case["n"], case["c"], *case["shape"], dtype=torch.float64)
    b = case["bounds"]
    with torch.set_grad_enabled(not case["inference"]):
        chunks = [layer(x[:, :, s:e]) for s, e in itertools.pairwise(b)]
    streamed = torch.cat(chunks, dim=2)
    expected = offline_conv(
        x.to(case["dtype"]).numpy(),
        layer.weight.detach().numpy(),
        bias=None if layer.bias is None else layer.bias.detach().numpy(),
        fill=case["fill"],
        padding_mode=case["padding_mode"],
        dilation=case["dilation"],
        stride=case["stride"],
        groups=case["groups"],
    )
    assert streamed.shape == expected.shape
    assert rel_err(streamed.detach().numpy(), expected) < TOLERANCE[case["dtype"]]
    assert layer.history is None or layer.history.shape[2] == layer.memory


@pytest.mark.parametrize("dt", [1, 2, 3, 5, 40])
def test_run_equals_whole_input_for_chunks_shorter_than_kernel(dt: int) -> None:
    torch.manual_seed(1)
    layer = MemoryConv3d(1, 2, (7, 3, 3), dtype=torch.float64, dilation=2)
    x = torch.randn(40, 9, 9, dtype=torch.float64)
    expected = offline_conv(
        x[None, None].numpy(), layer.weight.detach().numpy(), dilation=(2, 1, 1)
    )
    assert rel_err(layer.run(x, dt=dt).numpy(), expected) < 1e-10


@pytest.mark.parametrize("kernel", [(3, 3, 3), (2, 4, 4), (4, 2, 5)])
def test_set_weight_flip_gives_the_impulse_response(kernel: tuple[int, int, int]) -> None:
    kt, kh, kw = kernel
    layer = MemoryConv3d(1, 1, 1, padding_mode="zeros", temporal_fill="zeros", dtype=torch.float64)
    w = torch.arange(1, kt * kh * kw + 1, dtype=torch.float64).reshape(kernel)
    layer.set_weight(w)
    assert layer.kernel_size == kernel
    x = torch.zeros(12, 11, 11, dtype=torch.float64)
    t0, y0, x0 = 2, 5, 5
    x[t0, y0, x0] = 1.0
    y = layer.run(x)[0, 0]
    for tau in range(kt):
        for i in range(kh):
            for j in range(kw):
                assert y[t0 + tau, y0 + i - (kh - 1) // 2, x0 + j - (kw - 1) // 2] == w[tau, i, j]
    assert y.sum() == pytest.approx(w.sum().item())
    assert y[:t0].abs().sum() == 0  # strictly causal


def test_set_weight_broadcasts_and_normalizes() -> None:
    layer = MemoryConv3d(2, 3, (1, 1, 1), dtype=torch.float64)
    layer.set_weight([1.0, 2.0, 1.0], normalize=True)
    assert layer.weight.shape == (3, 2, 3, 1, 1)
    assert torch.allclose(layer.weight[1, 0, :, 0, 0], torch.tensor([0.25, 0.5, 0.25]).double())
    layer.set_weight(2.0)
    assert torch.all(layer.weight == 2.0)
    with pytest.raises(ShapeError, match="5-D weight must have shape"):
        layer.set_weight(torch.ones(4, 4, 1, 1, 1))


def test_state_is_a_buffer_that_moves_with_to_and_is_not_in_state_dict() -> None:
    layer = MemoryConv3d(1, 1, (3, 3, 3))
    layer(torch.randn(5, 6, 6))
    assert any(b is layer.history for b in layer.buffers())
    assert set(layer.state_dict()) == {"weight"}
    layer.double()
    assert layer.history is not None
    assert layer.history.dtype == torch.float64
    assert layer.history.shape == (1, 1, 2, 6, 6)


def test_shape_change_is_a_clear_error_and_reset_starts_a_new_stream() -> None:
    layer = MemoryConv3d(1, 1, (3, 3, 3))
    layer(torch.randn(4, 8, 8))
    with pytest.raises(ShapeError, match=r"\(1, 1, 4, 9, 8\).*does not continue"):
        layer(torch.randn(4, 9, 8))
    with pytest.raises(ShapeError, match=r"expected input \(N, 1, T, H, W\)"):
        layer(torch.randn(1, 2, 4, 8, 8))
    layer.reset()
    assert layer(torch.randn(4, 9, 8)).shape == (1, 1, 4, 9, 8)


def test_streams_share_weights_but_not_state() -> None:
    torch.manual_seed(2)
    layer = MemoryConv3d(1, 1, (4, 3, 3), dtype=torch.float64)
    a, b = torch.randn(1, 1, 12, 6, 6).double(), torch.randn(1, 1, 12, 6, 6).double()
    alone_a, _ = layer.step(a, None)
    alone_b, _ = layer.step(b, None)
    fresh_b_tail, _ = layer.step(b[:, :, 9:], None)
    states: dict[str, State | None] = {"a": None, "b": None}
    outs: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    for start in range(0, 12, 3):
        for name, x in (("a", a), ("b", b)):
            y, states[name] = layer.step(x[:, :, start : start + 3], states[name])
            outs[name].append(y)
        if start == 6:
            states["b"] = None  # resetting b must not touch a
    streamed_b = torch.cat(outs["b"], dim=2)
    assert torch.allclose(torch.cat(outs["a"], dim=2), alone_a, rtol=0, atol=1e-12)
    assert torch.allclose(streamed_b[:, :, :9], alone_b[:, :, :9], rtol=0, atol=1e-12)
    assert torch.allclose(streamed_b[:, :, 9:], fresh_b_tail, rtol=0, atol=1e-12)
    assert not torch.allclose(streamed_b[:, :, 9:], alone_b[:, :, 9:])
    assert layer.history is None  # step never touches the module's own state


def test_low_precision_dtypes_and_channels_last() -> None:
    torch.manual_seed(3)
    x = torch.randn(1, 2, 10, 8, 8)
    base = MemoryConv3d(2, 2, (3, 3, 3))
    expected = base.run(x, dt=10)
    for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        layer = MemoryConv3d(2, 2, (3, 3, 3), dtype=dtype)
        layer.load_state_dict(base.state_dict())
        y = layer.run(x, dt=3)
        assert y.dtype == dtype
        assert rel_err(y.float().numpy(), expected.numpy()) < tol
    cl = MemoryConv3d(2, 2, (3, 3, 3), channels_last=True)
    cl.load_state_dict(base.state_dict())
    assert rel_err(cl.run(x, dt=4).numpy(), expected.numpy()) < 1e-5
