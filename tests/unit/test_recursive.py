"""Recursive temporal filters: exact across any chunking; steady state for constant input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamconv.layers import TemporalHighPass, TemporalLowPass
from tests.unit.reference import offline_lowpass, rel_err


@settings(max_examples=60, deadline=None)
@given(
    t_len=st.integers(1, 30),
    tau=st.floats(0.3, 20.0),
    n=st.integers(1, 3),
    fill=st.sampled_from(["first", "zeros"]),
    high=st.booleans(),
    data=st.data(),
)
def test_any_chunking_equals_offline(
    t_len: int, tau: float, n: int, fill: str, high: bool, data: st.DataObject
) -> None:
    cuts = data.draw(st.sets(st.integers(1, max(1, t_len - 1)), max_size=t_len))
    bounds = [0, *sorted(c for c in cuts if c < t_len), t_len]
    x = torch.from_numpy(np.random.default_rng(t_len).normal(size=(2, 1, t_len, 3, 4)))
    cls = TemporalHighPass if high else TemporalLowPass
    layer = cls(tau, n, temporal_fill=fill)  # type: ignore[arg-type]
    streamed = torch.cat([layer(x[:, :, s:e]) for s, e in itertools.pairwise(bounds)], dim=2)
    low = offline_lowpass(x.numpy(), tau, n, fill)
    expected = x.numpy() - low if high else low
    assert rel_err(streamed.detach().numpy(), expected) < 1e-10  # tau is a parameter


def test_constant_input_passes_the_low_pass_and_vanishes_in_the_high_pass() -> None:
    x = torch.full((1, 1, 10, 2, 2), 0.7)
    assert torch.allclose(TemporalLowPass(4.0, 3).run(x, dt=3), x)
    assert torch.all(TemporalHighPass(4.0).run(x, dt=3) == 0)


def test_low_pass_step_response_matches_time_constant() -> None:
    x = torch.ones(200, dtype=torch.float64)
    y = TemporalLowPass(10.0, temporal_fill="zeros").run(x)[0, 0, :, 0, 0]
    assert y[9].item() == pytest.approx(1 - np.exp(-1.0), rel=1e-12)  # 63% after tau frames


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="tau must be > 0"):
        TemporalLowPass(0.0)
    with pytest.raises(ValueError, match="temporal_fill"):
        TemporalLowPass(1.0, temporal_fill="last")  # type: ignore[arg-type]
