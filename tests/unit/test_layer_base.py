"""Layer toolkit: broadcasting, run in chunks, state copy/restore, fitting, Output."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from streamconv.errors import ShapeError
from streamconv.layers import (
    MemoryConv3d,
    Nonlinearity,
    Output,
    Sequential,
    TemporalHighPass,
    TemporalLowPass,
)


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
