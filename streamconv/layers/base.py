"""`Layer`: the streaming vocabulary every layer speaks, and `Output`, a bundle of named outputs.

A layer processes one chunk of frames at a time and carries its temporal state to the next
chunk. The state lives in two forms:

* inside the module, as non-persistent buffers (so `.to(device)` moves it and `state_dict()`
  holds only weights), used by `forward`, `run` and `fit`;
* outside the module, as a plain nested dict passed to and returned by the pure `step(x, state)`,
  so that many streams can share one layer's weights, each with its own state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from streamconv.errors import ShapeError

State = dict[str, Any]
"""Temporal state: {state_name: Tensor | None, child_name: State}."""


class Output:
    """Several named outputs of one layer (e.g. every stage of a Sequential).

    Indexable by position (`out[-1]`) and by name (`out["conv"]`); iterates over the tensors.
    """

    def __init__(self, items: Iterable[tuple[str, Tensor]]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: int | str) -> Tensor:
        if isinstance(key, int):
            return list(self._items.values())[key]
        return self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self._items.values())

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._items.items())
        return f"Output({shapes})"

    def keys(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, Tensor]]:
        return list(self._items.items())

    def map(self, fn: Callable[[Tensor], Tensor]) -> Output:
        return Output((k, fn(v)) for k, v in self._items.items())

    @staticmethod
    def cat(outputs: list[Output], dim: int = 2) -> Output:
        names = outputs[0].keys()
        return Output((n, torch.cat([o[n] for o in outputs], dim=dim)) for n in names)


def to_5d(x: Tensor | np.ndarray) -> Tensor:
    """Broadcast (T,), (T,H,W), (C,T,H,W) or (N,C,T,H,W) input to (N,C,T,H,W)."""
    t = torch.as_tensor(x)
    if t.ndim == 1:
        return t[None, None, :, None, None]
    if t.ndim == 3:
        return t[None, None]
    if t.ndim == 4:
        return t[None]
    if t.ndim == 5:
        return t
    msg = f"input must be (T,), (T,H,W), (C,T,H,W) or (N,C,T,H,W); got shape {tuple(t.shape)}"
    raise ShapeError(msg)


def detach_state(state: State | None) -> State | None:
    return None if state is None else map_state(state, lambda t: t.detach())


def clone_state(state: State | None) -> State | None:
    return None if state is None else map_state(state, lambda t: t.detach().clone())


def map_state(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """The state walker: `value` (a state, or any part of one) with `fn` applied to every
    tensor in its nested dicts, lists and tuples; anything else (None, numbers) as is.
    Checkpoints move states with it; the module's own copies and detaches use it too."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_state(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(map_state(v, fn) for v in value)
    return value


def state_tensors(state: Any) -> list[Tensor]:
    """Every tensor in a state, found by the walker (e.g. to measure what a stream holds)."""
    found: list[Tensor] = []

    def keep(t: Tensor) -> Tensor:
        found.append(t)
        return t

    map_state(state, keep)
    return found


def scalar(value: float) -> nn.Parameter:
    """A learnable scalar of a built-in layer (a time constant, a threshold, a gain): in
    `state_dict()`, so `fit` moves it and `[model] weights` loads it. Made in float64, so that
    the value given is the value used until `.to(dtype)` rounds it with the rest."""
    return nn.Parameter(torch.tensor(float(value), dtype=torch.float64))


class Floats:
    """Python floats of a layer's scalar parameters, for its inference path. Read again only
    when one changed (an optimizer step, a load, a move): reading a GPU tensor waits for it."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] = ()
        self._values: tuple[float, ...] = ()

    def of(self, *params: Tensor) -> tuple[float, ...]:
        key = tuple((_version(p), p.data_ptr(), p.dtype, p.device) for p in params)
        if key != self._key:
            self._key, self._values = key, tuple(float(p.detach()) for p in params)
        return self._values


def learning(*tensors: Tensor) -> bool:
    """Would autograd track an op on these now? (Grad mode on and one of them needs a grad;
    inference tensors never do.)"""
    return torch.is_grad_enabled() and any(
        t.requires_grad and not t.is_inference() for t in tensors
    )


def operand(p: Tensor, dtype: torch.dtype) -> Tensor:
    """A scalar parameter as an operand on the tracked path: itself (so it learns), or a
    normal copy of an inference tensor (a layer built under inference_mode), which autograd
    cannot record."""
    return (p.clone() if p.is_inference() else p).to(dtype)


def _version(t: Tensor) -> int | None:
    """The tensor's in-place change counter; inference tensors (made under inference_mode)
    keep none, and outside that mode they cannot change in place."""
    return None if t.is_inference() else t._version


class Layer(nn.Module):
    """A streaming torch module: chunk in, chunk out, temporal state carried in between.

    Subclasses name their state buffers in `state_names` and implement the pure `step`.
    """

    state_names: ClassVar[tuple[str, ...]] = ()
    # The batch dimension (N) of each state tensor, where it is not the first.
    state_batch_dims: ClassVar[dict[str, int]] = {}

    def __init__(self) -> None:
        super().__init__()
        for name in self.state_names:
            self.register_buffer(name, None, persistent=False)
        self.optimizer: torch.optim.Optimizer | None = None

    # -- the pure streaming step ---------------------------------------------------------
    def step(self, x: Tensor, state: State | None) -> tuple[Tensor | Output, State]:
        """Process one chunk `x` (N,C,T,H,W) from `state` (None: a fresh stream).

        Returns the output and the new state; touches no state held by the module.
        """
        raise NotImplementedError

    def layer_children(self) -> Iterator[tuple[str, Layer]]:
        for name, child in self.named_children():
            if isinstance(child, Layer):
                yield name, child

    # -- state held by the module ----------------------------------------------------------
    def _live_state(self) -> State:
        state: State = {name: getattr(self, name) for name in self.state_names}
        for name, child in self.layer_children():
            state[name] = child._live_state()
        return state

    def _store_state(self, state: State | None) -> None:
        state = state or {}
        for name in self.state_names:
            setattr(self, name, state.get(name))
        for name, child in self.layer_children():
            child._store_state(state.get(name))

    def reset(self) -> None:
        """Forget all temporal state, recursively: the next chunk starts a new stream."""
        self._store_state(None)

    def get_state(self) -> State:
        """A deep copy of all temporal state (never references to the live buffers)."""
        return clone_state(self._live_state()) or {}

    def set_state(self, state: State | None) -> None:
        """Restore state from `get_state()` (copied, so the argument stays untouched)."""
        if state is not None:
            self._check_state_keys(state)
        self._store_state(clone_state(state))

    def _check_state_keys(self, state: State) -> None:
        expected = set(self.state_names) | {name for name, _ in self.layer_children()}
        if set(state) != expected:
            msg = f"state keys {sorted(state)} do not match this layer's {sorted(expected)}"
            raise ValueError(msg)
        for name, child in self.layer_children():
            if state[name] is not None:
                child._check_state_keys(state[name])

    # -- many streams in one forward pass -------------------------------------------------
    def stack_states(self, states: list[State | None]) -> State | None:
        """The states of several streams as one state for their inputs joined along N
        (all fresh, None, or none fresh: a fresh stream takes its history from its input)."""
        if all(s is None for s in states):
            return None
        if any(s is None for s in states):
            msg = "cannot stack fresh (None) and running states; run them apart"
            raise ValueError(msg)
        given = [s for s in states if s is not None]
        joined: State = {}
        for name in self.state_names:
            parts = [s.get(name) for s in given]
            tensors = [p for p in parts if isinstance(p, Tensor)]
            if not tensors:  # e.g. a layer with no memory
                joined[name] = None
            elif len(tensors) < len(parts):
                msg = f"state {name!r} is set for some streams only; run them apart"
                raise ValueError(msg)
            else:
                joined[name] = torch.cat(tensors, dim=self.state_batch_dims.get(name, 0))
        for name, child in self.layer_children():
            joined[name] = child.stack_states([s.get(name) for s in given])
        return joined

    def split_state(self, state: State | None, sizes: list[int]) -> list[State | None]:
        """`stack_states` undone: one state per stream of `sizes` batch entries. Copies when
        there are several: a view would keep the whole batch's tensor alive for as long as
        any one stream of it waits."""
        if state is None:
            return [None] * len(sizes)
        out: list[State] = [{} for _ in sizes]
        for name in self.state_names:
            t = state.get(name)
            pieces: list[Tensor | None] = [None] * len(sizes)
            if t is not None:
                split = t.split(sizes, dim=self.state_batch_dims.get(name, 0))
                pieces = list(split) if len(sizes) == 1 else [p.clone() for p in split]
            for o, piece in zip(out, pieces, strict=True):
                o[name] = piece
        for name, child in self.layer_children():
            for o, sub in zip(out, child.split_state(state.get(name), sizes), strict=True):
                o[name] = sub
        return list(out)

    # -- torch entry points ---------------------------------------------------------------
    def prepare(self, x: Tensor | np.ndarray) -> Tensor:
        """Input as a 5-D tensor on this layer's device, in its floating dtype (that of its
        first kernel or buffer: a learnable scalar, a time constant or a gain, follows the
        input)."""
        t = to_5d(x)
        own = itertools.chain(self.parameters(), self.buffers())
        ref = next((p for p in own if p.ndim > 0), None)
        if ref is not None and ref.is_floating_point():
            return t.to(device=ref.device, dtype=ref.dtype)
        return t if t.is_floating_point() else t.float()

    def forward(self, x: Tensor | np.ndarray) -> Tensor | Output:
        y, state = self.step(self.prepare(x), self._live_state())
        # Truncated backpropagation: the state carried to the next chunk is detached.
        self._store_state(detach_state(state))
        return y

    @torch.no_grad()
    def run(self, x: Tensor | np.ndarray, dt: int | None = None) -> Tensor | Output:
        """Process a long input chunk by chunk (`dt` frames each) and return the whole output.

        Equals one call on the whole input. Chunks are gathered on the CPU so that device
        memory does not grow with the length of the stream. State carries on afterwards.
        """
        x5 = to_5d(x)
        total = x5.shape[2]
        dt = total if dt is None else dt
        if dt < 1:
            msg = f"chunk length dt must be >= 1, got {dt}"
            raise ValueError(msg)
        pieces = [_to_cpu(self(x5[:, :, start : start + dt])) for start in range(0, total, dt)]
        if isinstance(pieces[0], Output):
            return Output.cat([p for p in pieces if isinstance(p, Output)])
        return torch.cat([p for p in pieces if isinstance(p, Tensor)], dim=2)

    # -- fitting --------------------------------------------------------------------------
    def make_optimizer(self, name: str = "Adam", **kwargs: Any) -> torch.optim.Optimizer:
        """Create (and keep) a torch.optim optimizer over this layer's parameters."""
        cls = getattr(torch.optim, name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            msg = f"unknown optimizer {name!r}; use a class name from torch.optim, e.g. 'Adam'"
            raise ValueError(msg)
        self.optimizer = cls(self.parameters(), **kwargs)
        return self.optimizer

    def fit(
        self,
        x: Tensor | np.ndarray,
        target: Tensor | np.ndarray,
        *,
        dt: int | None = None,
        epochs: int = 1,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> list[float]:
        """Fit the parameters so that the output follows `target`; returns the loss per epoch.

        Each epoch starts a fresh stream and runs it in chunks of `dt` frames; the state is
        carried across chunks but detached (truncated backpropagation through time).
        """
        optimizer = self.optimizer or self.make_optimizer("Adam")
        loss_fn = loss_fn or nn.functional.mse_loss
        x5, y5 = to_5d(x), to_5d(target)
        total = x5.shape[2]
        if y5.shape[2] != total:
            msg = f"target has {y5.shape[2]} frames, input has {total}"
            raise ShapeError(msg)
        dt = total if dt is None else dt
        losses = []
        for _ in range(epochs):
            self.reset()
            running = 0.0
            for start in range(0, total, dt):
                optimizer.zero_grad()
                out = self(x5[:, :, start : start + dt])
                y = out[-1] if isinstance(out, Output) else out
                chunk_target = y5[:, :, start : start + dt].to(device=y.device, dtype=y.dtype)
                loss = loss_fn(y, chunk_target)
                loss.backward()
                optimizer.step()
                running += float(loss.detach()) * y.shape[2]
            losses.append(running / total)
        self.reset()
        return losses


def _to_cpu(y: Tensor | Output) -> Tensor | Output:
    if isinstance(y, Output):
        return y.map(lambda t: t.detach().cpu())
    return y.detach().cpu()
