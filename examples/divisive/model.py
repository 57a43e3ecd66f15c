"""A model of your own for streamconv: divisive normalisation of a temporal contrast signal.

    y[t] = x[t] / (|sigma| + lowpass(|x|)[t])

The low pass (a built-in streaming layer) carries the stream's history from chunk to chunk;
`sigma` is a parameter that `fit` finds. `build` is the factory the config names:

    [model]
    factory = "model.py:build"
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from streamconv.layers import Layer, Output, Sequential, State, TemporalHighPass, TemporalLowPass


class DivisiveNorm(Layer):
    """Each value divided by a running average of the magnitude around it in time."""

    def __init__(self, sigma: float = 0.3, tau: float = 4.0) -> None:
        super().__init__()
        self.sigma = nn.Parameter(torch.tensor(float(sigma)))
        self.pool = TemporalLowPass(tau)  # a child layer: its state is carried for us

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        pooled, pool_state = self.pool.step(x.abs(), None if state is None else state["pool"])
        return x / (self.sigma.abs() + pooled), {"pool": pool_state}


def build(sigma: float = 0.3, tau: float = 4.0, change_tau: float = 2.0) -> Layer:
    """The whole model: temporal change, then its divisive normalisation; both published."""
    stages = OrderedDict(
        change=TemporalHighPass(change_tau), norm=DivisiveNorm(sigma=sigma, tau=tau)
    )
    return Sequential(stages, return_all=True)
