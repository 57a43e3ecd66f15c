"""Streams -> one forward pass: chunks of equal shape stacked along N, states with them.

The engine hands over the chunks that are due; this module groups those that can share a
pass (same frame shape, frame count and pixel dtype, and all fresh or all running), runs
each group of up to `max_batch` streams once, and splits outputs and states back. The
layers treat every batch entry alike (element-wise or per-plane operations), so a stream's
outputs are the same whichever streams run beside it (tests/unit/test_batcher.py).

Pixels: on a GPU (or when `device_pixels` is set, to test the same path on the CPU) the
chunks stay in their wire dtype (uint8 frames are a quarter of the float32 bytes), go up
through a pinned staging buffer and become floats on the device: the same division as the
host's colour step, bit for bit. Outputs: only the layers someone subscribes to (`wanted`)
are converted and copied back, with one device sync per pass (outputs.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from streamconv.errors import StreamconvError
from streamconv.layers import Layer, State
from streamconv.wire.quant import FULL_SCALE
from streamconv.worker.outputs import gather


@dataclass(slots=True)
class Job:
    """One stream's chunk: `frames` (T, C, H, W) in float32 or a raw integer dtype.

    Frames first, so that each frame is one contiguous block from the colour step to the
    wire: the model sees a (C, T) view of it, and a layer that passes its input on (or an
    output of one channel) goes out without a copy."""

    stream: str
    frames: np.ndarray
    state: State | None


@dataclass(slots=True)
class Done:
    """A job's outputs (T, C, H, W) per copied layer, uint8 scales, and the new state."""

    layers: dict[str, np.ndarray]
    quant: dict[str, tuple[list[float], list[float]]]
    state: State | None
    compute_s: float


@dataclass(slots=True)
class Broken:
    """A job that failed in the model (the stream's state is then lost)."""

    error: str


def group_key(job: Job) -> tuple[object, ...]:
    return (job.frames.shape, job.frames.dtype.str, job.state is None)


class Batcher:
    """Runs jobs in as few forward passes as their shapes allow."""

    def __init__(
        self,
        model: Layer,
        *,
        device: torch.device,
        dtype: torch.dtype,
        publish: list[str],
        output_dtype: str = "float32",
        max_batch: int = 0,
        wanted: Callable[[str], set[str] | None] | None = None,
        device_pixels: bool | None = None,
    ) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.publish, self.output_dtype = publish, output_dtype
        # 0: 32 on a GPU; 1 on the CPU, where a batch's working set falls out of the cache and
        # runs slower than its streams one by one (BENCHMARKS.md, bench/streams.py).
        self.max_batch = max(1, max_batch) if max_batch else (32 if device.type == "cuda" else 1)
        # stream -> the layers someone subscribes to (None: every published layer)
        self.wanted = wanted
        # Integer pixels and output conversion on the device: always on a GPU; on the CPU
        # only when asked (the tests run the GPU's data path there).
        self.device_pixels = device.type == "cuda" if device_pixels is None else device_pixels
        self.passes = 0  # forward passes run (a batch of N streams counts once)
        self.bytes_up = 0  # pixel bytes sent to the device (the wire dtype's, uint8: 1/px)
        self.bytes_down = 0  # output bytes copied back
        # Seconds per stage, when `profile` is set (benchmarks): it waits for the device
        # after each stage, so it is off in the worker.
        self.profile = False
        self.stage_s: dict[str, float] = dict.fromkeys(("upload", "forward", "copy back"), 0.0)
        self._last_lap = 0.0

    def run(self, jobs: list[Job]) -> list[Done | Broken]:
        """Every job's outcome, in the order given."""
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(group_key(job), []).append(i)
        outcomes: list[Done | Broken | None] = [None] * len(jobs)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                part = indices[start : start + self.max_batch]
                for i, outcome in zip(part, self._run_group([jobs[i] for i in part]), strict=True):
                    outcomes[i] = outcome
        return [o if o is not None else Broken("not run") for o in outcomes]

    def _run_group(self, jobs: list[Job]) -> list[Done | Broken]:
        start = time.perf_counter()
        try:  # copies in and out included: CUDA errors surface there too
            x = self._to_device([job.frames for job in jobs])
            self._lap("upload", start)
            state = self.model.stack_states([job.state for job in jobs])
            with torch.inference_mode():
                out, new_state = self.model.step(x, state)
            self._lap("forward", start)
            names = self._copied_layers(jobs)
            per_stream = gather(out, names, self.output_dtype, self.device_pixels)
            if not names and self.device.type == "cuda":
                # Nothing to copy back: still wait for the pass, so the GPU's pace holds the
                # loop back and its errors surface here, on these streams.
                torch.cuda.current_stream(self.device).synchronize()
            self._lap("copy back", start)
        except (StreamconvError, RuntimeError, ValueError) as e:
            if len(jobs) > 1:  # one stream's trouble must not fail the others: alone, then
                return [outcome for job in jobs for outcome in self._run_group([job])]
            return [Broken(str(e))]
        self.passes += 1
        self.bytes_up += sum(job.frames.nbytes for job in jobs)
        self.bytes_down += sum(a.nbytes for layers, _ in per_stream for a in layers.values())
        states = self.model.split_state(new_state, [1] * len(jobs))
        share = (time.perf_counter() - start) / len(jobs)
        return [
            Done(layers, quant, st, share)
            for (layers, quant), st in zip(per_stream, states, strict=True)
        ]

    def _lap(self, stage: str, start: float) -> None:
        """Adds the time since the previous lap (or `start`) to `stage`, when profiling."""
        if not self.profile:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        since = max(start, self._last_lap)
        self.stage_s[stage] += now - since
        self._last_lap = now

    def _copied_layers(self, jobs: list[Job]) -> list[str]:
        """The published layers any stream of the pass has a subscriber for."""
        if self.wanted is None:
            return self.publish
        union: set[str] = set()
        for job in jobs:
            names = self.wanted(job.stream)
            if names is None:
                return self.publish
            union |= names
        return [name for name in self.publish if name in union]

    # -- pixels in ------------------------------------------------------------------------
    def _to_device(self, chunks: list[np.ndarray]) -> torch.Tensor:
        """(N, C, T, H, W) in the model's dtype on its device, from (T, C, H, W) chunks;
        integer chunks are divided by their full scale there (the host's colour step,
        moved)."""
        raw = chunks[0].dtype
        if self.device.type != "cuda":
            host = torch.from_numpy(chunks[0][None] if len(chunks) == 1 else np.stack(chunks))
            return _to_float(host, raw, self.dtype).transpose(1, 2)
        # Pinned staging makes the upload asynchronous. torch's caching host allocator
        # recycles these buffers, and only once the copies out of them are done.
        dtype = torch.from_numpy(np.empty(0, raw)).dtype
        staging = torch.empty((len(chunks), *chunks[0].shape), dtype=dtype, pin_memory=True)
        pixels = staging.numpy()
        for i, chunk in enumerate(chunks):
            pixels[i] = chunk
        on_device = staging.to(self.device, non_blocking=True)
        return _to_float(on_device, raw, self.dtype).transpose(1, 2).contiguous()


def _to_float(x: torch.Tensor, raw: np.dtype, dtype: torch.dtype) -> torch.Tensor:
    scale = FULL_SCALE.get(raw)
    if scale is None:
        return x.to(dtype)
    # float32 division as numpy's colour step does it (then the model's dtype), so the
    # pixels are the same bits wherever the division runs. The divisor is a tensor on the
    # device: with a Python scalar CUDA multiplies by its reciprocal (1 ulp off, often).
    divisor = torch.tensor(scale, dtype=torch.float32, device=x.device)
    return x.to(torch.float32).div_(divisor).to(dtype)
