"""Layer toolkit: broadcasting, run in chunks, state copy/restore, fitting, Output."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest
import torch

from streamconv.errors import ShapeError
from streamconv.layers import (
    Layer,
    MemoryConv3d,
    Nonlinearity,
    Output,
    Sequential,
    TemporalHighPass,
    TemporalLowPass,
    exponential_kernel,
    gaussian_kernel,
)
from streamconv.layers.base import map_state, state_tensors


def retina(dtype: torch.dtype = torch.float64) -> Sequential:
    torch.manual_seed(0)
    return Sequential(
        OrderedDict(
            conv=MemoryConv3d(1, 2, (3, 3, 3), dtype=dtype),
            low=TemporalLowPass(tau=3.0, n=2),
            high=TemporalHighPass(tau=5.0),
            rect=Nonlinearity("relu", threshold=0.1),
        ),
        return_all=True,
    )


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((9,), (1, 1, 9, 1, 1)), ((9, 4, 5), (1, 1, 9, 4, 5)), ((2, 1, 9, 4, 5), (2, 1, 9, 4, 5))],
)
def test_input_of_few_dimensions_is_broadcast_to_5d(shape: tuple, expected: tuple) -> None:
    layer = MemoryConv3d(1, 1, (2, 1, 1), dtype=torch.float64)
    y = layer(np.ones(shape, dtype=np.float32))
    assert y.shape == expected
    assert y.dtype == torch.float64  # numpy input follows the layer's dtype


def test_bad_rank_is_a_clear_error() -> None:
    with pytest.raises(ShapeError, match=r"got shape \(2, 3\)"):
        MemoryConv3d(1, 1, 1)(torch.zeros(2, 3))


def test_run_returns_output_for_every_stage_and_equals_one_call() -> None:
    x = torch.randn(1, 1, 23, 7, 7, dtype=torch.float64)
    model = retina()
    whole = model.run(x)
    model.reset()
    chunked = model.run(x, dt=4)
    assert isinstance(whole, Output)
    assert isinstance(chunked, Output)
    assert whole.keys() == ["conv", "low", "high", "rect"]
    for name in whole.keys():
        assert torch.allclose(whole[name], chunked[name], rtol=0, atol=1e-12), name
    assert whole[-1] is whole["rect"]
    assert chunked["conv"].device.type == "cpu"


def test_get_state_is_a_deep_copy_and_set_state_continues_the_stream() -> None:
    x = torch.randn(1, 1, 20, 6, 6, dtype=torch.float64)
    model = retina()
    expected = model.run(x, dt=20)
    model.reset()
    first = model.run(x[:, :, :11], dt=3)
    saved = model.get_state()
    assert saved["conv"]["history"] is not model.conv.history
    model.run(torch.zeros(1, 1, 5, 6, 6, dtype=torch.float64))  # must not alter `saved`
    other = retina()  # same weights (same seed), fresh state
    other.set_state(saved)
    rest = other.run(x[:, :, 11:], dt=2)
    assert isinstance(first, Output)
    assert isinstance(rest, Output)
    assert isinstance(expected, Output)
    for name in expected.keys():
        joined = torch.cat([first[name], rest[name]], dim=2)
        assert torch.allclose(joined, expected[name], rtol=0, atol=1e-12), name


def test_reset_clears_state_recursively() -> None:
    model = retina()
    model.run(torch.randn(1, 1, 5, 6, 6, dtype=torch.float64))
    assert model.conv.history is not None
    assert model.low.stages is not None
    model.reset()
    assert model.conv.history is None
    assert model.low.stages is None
    assert model.high.stages is None


def test_set_state_rejects_a_state_of_another_layer() -> None:
    with pytest.raises(ValueError, match="state keys"):
        retina().set_state({"history": None})


def test_fit_recovers_a_known_kernel() -> None:
    torch.manual_seed(4)
    truth = MemoryConv3d(1, 1, (3, 3, 3), dtype=torch.float64)
    x = torch.randn(1, 1, 60, 10, 10, dtype=torch.float64)
    target = truth.run(x)
    learner = MemoryConv3d(1, 1, (3, 3, 3), dtype=torch.float64)
    learner.make_optimizer("Adam", lr=0.02)
    losses = learner.fit(x, target, dt=10, epochs=150)
    assert len(losses) == 150
    assert losses[-1] < 1e-4 * losses[0]
    assert torch.allclose(learner.weight, truth.weight, atol=1e-2)


def test_make_optimizer_names_the_bad_name() -> None:
    with pytest.raises(ValueError, match="'Adamm'"):
        MemoryConv3d(1, 1, 1).make_optimizer("Adamm")


def test_sequential_rejects_plain_modules() -> None:
    with pytest.raises(TypeError, match="not a streaming Layer"):
        Sequential(torch.nn.ReLU())  # type: ignore[arg-type]


def separable_conv() -> MemoryConv3d:
    layer = MemoryConv3d(1, 1, 1, dtype=torch.float64)
    layer.set_weight(exponential_kernel(1.5, length=3)[:, None, None] * gaussian_kernel(1.0))
    return layer


def random_conv() -> MemoryConv3d:
    torch.manual_seed(5)
    return MemoryConv3d(1, 1, (3, 5, 5), dtype=torch.float64)  # one channel, not separable


def multichannel_conv() -> MemoryConv3d:
    torch.manual_seed(6)
    return MemoryConv3d(1, 3, (3, 3, 3), bias=True)  # float32: oneDNN in inference


def pipeline() -> Sequential:
    return Sequential(
        OrderedDict(
            conv=separable_conv(),
            low=TemporalLowPass(tau=3.0, n=2),
            high=TemporalHighPass(tau=5.0),
            rect=Nonlinearity("relu", threshold=0.01),
        ),
        return_all=True,
    )


LAYERS: dict[str, Callable[[], Layer]] = {
    "separable conv": separable_conv,
    "non-separable conv": random_conv,
    "multi-channel conv": multichannel_conv,
    "low pass": lambda: TemporalLowPass(tau=2.5, n=2),
    "high pass": lambda: TemporalHighPass(tau=4.0),
    "sequential": pipeline,
}
MODES: dict[str, Callable[[], contextlib.AbstractContextManager[object]]] = {
    "normal": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


def every_entry_point(make: Callable[[], Layer], build: str, call: str) -> list[torch.Tensor]:
    """Build the layer in one grad mode, then use every entry point in another."""
    x = torch.randn(1, 1, 13, 9, 9, generator=torch.Generator().manual_seed(7))
    with MODES[build]():
        layer = make()
    outs: list[torch.Tensor | Output] = []
    with MODES[call]():
        outs.append(layer(x[:, :, :5]))
        saved = layer.get_state()
        outs.append(layer(x[:, :, 5:]))
        layer.reset()
        layer.set_state(saved)
        outs.append(layer(x[:, :, 5:]))
        y, state = layer.step(layer.prepare(x[:, :, :4]), None)
        outs += [y, layer.step(layer.prepare(x[:, :, 4:]), state)[0]]
        layer.reset()
        outs.append(layer.run(x, dt=3))
        for conv in (m for m in layer.modules() if isinstance(m, MemoryConv3d)):
            conv.set_weight(conv.weight.detach() * 0.5, flip=False)  # same size: in place
            outs.append(layer.run(x[:, :, :6], dt=2))
            conv.set_weight(conv.weight.detach()[:, :, 1:], flip=False)  # a new size
            outs.append(layer.run(x, dt=4))
    for conv in (m for m in layer.modules() if isinstance(m, MemoryConv3d)):
        assert not any(p.is_inference() for p in conv.parameters())  # trainable after all
        if make in (separable_conv, pipeline):
            assert conv._factor_cache is not None  # the fast path ran (at least in run())
    return [t.detach() for out in outs for t in (out if isinstance(out, Output) else [out])]


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize(
    ("build", "call"),
    [
        ("inference_mode", "inference_mode"),
        ("normal", "inference_mode"),
        ("inference_mode", "no_grad"),
        ("no_grad", "inference_mode"),
        ("inference_mode", "normal"),
    ],
)
def test_layers_work_under_inference_mode_and_give_the_normal_results(
    make: Callable[[], Layer], build: str, call: str
) -> None:
    expected = every_entry_point(make, "normal", "no_grad")
    got = every_entry_point(make, build, call)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        if call == "normal":  # with gradients: the direct convolution, not oneDNN or separable
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(b.abs().max())), i
        else:  # the same kernels as the normal inference path: the same bits
            assert torch.equal(a, b), i


def test_a_layer_built_under_inference_mode_can_be_trained() -> None:
    with torch.inference_mode():
        learner = MemoryConv3d(1, 1, (3, 3, 3), dtype=torch.float64)
    x = torch.randn(1, 1, 20, 8, 8, dtype=torch.float64)
    target = 0.5 * x
    learner.make_optimizer("Adam", lr=0.05)
    losses = learner.fit(x, target, dt=5, epochs=20)
    assert learner.weight.grad is not None
    assert losses[-1] < losses[0]


def test_the_state_walker_maps_every_tensor_in_nested_dicts_lists_and_tuples() -> None:
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    state = {"x": a, "child": {"y": (b, None), "z": [c, 4]}, "none": None}
    doubled = map_state(state, lambda t: t * 2)
    assert doubled["child"]["y"][1] is None
    assert isinstance(doubled["child"]["y"], tuple)
    assert doubled["child"]["z"][1] == 4
    assert torch.equal(doubled["child"]["z"][0], c * 2)
    assert [t.tolist() for t in state_tensors(state)] == [[0.0], [1.0, 1.0], [2.0, 2.0, 2.0]]
