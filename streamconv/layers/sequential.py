"""`Sequential`: a chain of streaming layers, each stage carrying its own state."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor

from streamconv.layers.base import Layer, Output, State


class Sequential(Layer):
    """Runs streaming layers in order. Returns the last output, or every stage as an
    `Output` (indexable by stage name and position) when `return_all=True`."""

    def __init__(self, *layers: Layer | OrderedDict[str, Layer], return_all: bool = False) -> None:
        super().__init__()
        named: list[tuple[str, object]]
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            named = list(layers[0].items())
        else:
            named = [(str(i), layer) for i, layer in enumerate(layers)]
        for name, layer in named:
            if not isinstance(layer, Layer):
                msg = f"stage {name!r} is a {type(layer).__name__}, not a streaming Layer"
                raise TypeError(msg)
            self.add_module(name, layer)
        self.return_all = return_all

    def stage_names(self) -> list[str]:
        return [name for name, _ in self.layer_children()]

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor | Output, State]:
        state = state or {}
        new_state: State = {}
        outputs = []
        value: Tensor = x
        for name, layer in self.layer_children():
            out, new_state[name] = layer.step(value, state.get(name))
            value = out[-1] if isinstance(out, Output) else out
            outputs.append((name, value))
        return (Output(outputs) if self.return_all else value), new_state
