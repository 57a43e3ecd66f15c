"""Does a model stream exactly? Checked before any frame is served (`streamconv check`, and a
quick form at every worker start).

On a random clip, in the model's dtype on its device:
- chunked == whole: the clip in chunks of 1, of primes, and of random lengths gives the
  outputs of one pass over the whole clip (float64 within 1e-10, float32 within 1e-5,
  relative to the largest value);
- a checkpoint round trip: a stream's state packed and unpacked as a checkpoint file goes on
  as if nothing happened;
- batched == alone: streams stacked into one pass (their states stacked, then split) give
  each stream's own outputs and states;
- every parameter, buffer, output and state tensor is on the configured device.
A failure names the first published layer (in order) that went wrong, and the property.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from streamconv import weights
from streamconv.config import Settings
from streamconv.errors import ConfigError
from streamconv.layers import Layer, Output, State
from streamconv.layers.base import state_tensors
from streamconv.model import build_model, configure_torch, input_channels, published, resolve_device
from streamconv.worker.checkpoints import CheckpointError, Snapshot, pack, snapshot_state, unpack

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2,
             torch.bfloat16: 5e-2}  # fmt: skip
PRIMES = (2, 3, 5, 7)
HORIZON = 128  # frames an impulse is followed for, to tell how long a layer remembers
CHECK_FINGERPRINT = "streamconv-check"


class NotStreamableError(ConfigError):
    """The model does not stream exactly: serving it would give outputs that depend on how
    the stream happened to be chunked, batched or restored."""


@dataclass
class Failure:
    layer: str
    prop: str
    detail: str

    def __str__(self) -> str:
        return f"layer {self.layer!r}: {self.prop}: {self.detail}"


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class Clip:
    """What the properties run on: a random clip (N=1) and the model's pass over all of it."""

    x: Tensor
    whole: Output
    tolerance: float


def check(
    model: Layer, channels: int, *, frames: int = 40, size: tuple[int, int] = (32, 32),
    seed: int = 0, quick: bool = False,
) -> Report:  # fmt: skip
    """Every property on a random clip of `frames` frames of `size` (H, W); `quick`: fewer
    chunkings, for the worker's start."""
    ref = next(_tensors(model), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, channels, frames, *size, generator=gen, dtype=torch.float64)
    x = x.to(device=device, dtype=dtype)
    with torch.inference_mode():
        try:
            whole, _ = model.step(x, None)
        except Exception as e:  # its own code failed on a plain clip: no property holds
            prop = f"one pass over a {size[1]}x{size[0]} clip"
            return Report([prop], [Failure(type(model).__name__, prop, f"{type(e).__name__}: {e}")])
        if not isinstance(whole, Output):
            msg = "the model must return an Output (build_model wraps one that does not)"
            raise TypeError(msg)
        clip = Clip(x, whole, TOLERANCE.get(dtype, 1e-5))
        report = Report()
        rng = random.Random(seed)
        props: list[tuple[str, Callable[[], Failure | None]]] = [
            (f"chunked == whole ({name})", partial(_chunked, model, clip, sizes, name))
            for name, sizes in _chunkings(frames, rng, quick)
        ]
        props += [
            (
                "checkpoint round trip",
                partial(_round_trip, model, clip, rng.randint(1, frames - 1)),
            ),
            ("batched == alone", partial(_batched, model, clip, seed)),
            (f"on {device}", partial(_on_device, model, clip, device)),
        ]
        for prop, run_prop in props:
            report.checked.append(prop)
            try:
                failure = run_prop()
            except Exception as e:  # the model's own code failed under this property
                failure = Failure(_culprit(model, clip), prop, f"raised {type(e).__name__}: {e}")
            if failure is not None:
                report.failures.append(failure)
    return report


def require(model: Layer, channels: int, what: str) -> None:
    """The quick check, as the worker runs it at start: NotStreamableError on a failure."""
    # 32 x 32, as the build's probe: a layer with a large kernel may need that much.
    report = check(model, channels, frames=16, size=(32, 32), quick=True)
    if report.failures:
        first = report.failures[0]
        msg = (f"{what} does not stream exactly, so it is not served: {first} "
               f"(`streamconv check` for the whole report; [worker] startup_check = false "
               f"serves it anyway)")  # fmt: skip
        raise NotStreamableError(msg)


def _chunkings(frames: int, rng: random.Random, quick: bool) -> Iterator[tuple[str, list[int]]]:
    yield "chunks of 1", [1] * frames
    for p in PRIMES[:1] if quick else PRIMES:
        yield f"chunks of {p}", [p] * (frames // p) + ([frames % p] if frames % p else [])
    sizes, left = [], frames
    while left:
        sizes.append(rng.randint(1, min(left, 9)))
        left -= sizes[-1]
    yield f"random chunks {sizes}", sizes


def _run(model: Layer, x: Tensor, sizes: list[int], state: State | None) -> tuple[Output, State]:
    outs, start = [], 0
    for n in sizes:
        y, state = model.step(x[:, :, start : start + n], state)
        assert isinstance(y, Output)
        outs.append(y)
        start += n
    return Output.cat(outs), state or {}


def _first_diff(got: Output, want: Output, tolerance: float, prop: str) -> Failure | None:
    """The first layer, in order, whose outputs differ by more than `tolerance` (relative)."""
    for name in want.keys():
        a, b = got[name], want[name]
        if a.shape != b.shape:
            return Failure(name, prop, f"shape {tuple(a.shape)}, expected {tuple(b.shape)}")
        scale = max(float(b.abs().max()), 1e-30) if b.numel() else 1.0
        err = float((a.double() - b.double()).abs().max()) / scale if b.numel() else 0.0
        if not err <= tolerance:  # NaN fails too
            return Failure(name, prop, f"max relative error {err:.2e} > {tolerance:g}")
    return None


def _chunked(model: Layer, clip: Clip, sizes: list[int], name: str) -> Failure | None:
    got, _ = _run(model, clip.x, sizes, None)
    return _first_diff(got, clip.whole, clip.tolerance, f"chunked == whole ({name})")


def _round_trip(model: Layer, clip: Clip, split: int) -> Failure | None:
    prop = "checkpoint round trip"
    _, state = _run(model, clip.x, [split], None)
    snap = Snapshot("check", "check", split, tuple(clip.x.shape[1:]), snapshot_state(state))
    try:
        back = unpack(pack(snap, CHECK_FINGERPRINT), CHECK_FINGERPRINT, clip.x.device)
    except (CheckpointError, RuntimeError, TypeError) as e:
        return Failure(_culprit(model, clip), prop, f"the state cannot be written: {e}")
    rest = clip.x.shape[2] - split
    got, _ = _run(model, clip.x[:, :, split:], [rest], back.state)
    tail = clip.whole.map(lambda t: t[:, :, split:])
    return _first_diff(got, tail, clip.tolerance, prop)


def _batched(model: Layer, clip: Clip, seed: int) -> Failure | None:
    """Two streams with different histories (and a fresh pair) in one pass == each alone."""
    prop = "batched == alone"
    gen = torch.Generator().manual_seed(seed + 1)
    other = torch.rand(clip.x.shape, generator=gen, dtype=torch.float64)
    xs = [clip.x, other.to(clip.x)]
    frames = clip.x.shape[2]
    first, second = max(1, frames // 3), max(1, frames // 2)
    fresh = [_run(model, x[:, :, :first], [first], None) for x in xs]
    together, _ = model.step(torch.cat([x[:, :, :first] for x in xs]), None)
    assert isinstance(together, Output)
    for i, (alone, _) in enumerate(fresh):
        failure = _first_diff(_row(together, i), alone, clip.tolerance, prop + " (fresh streams)")
        if failure:
            return failure
    # Different histories: stream 0 at `first` frames, stream 1 at `second`.
    states: list[State | None] = [fresh[0][1], _run(model, xs[1][:, :, :second], [second], None)[1]]
    n = min(frames - second, 3)
    chunks = [xs[0][:, :, first : first + n], xs[1][:, :, second : second + n]]
    try:
        joined = model.stack_states(states)
        out, state = model.step(torch.cat(chunks), joined)
        split = model.split_state(state, [1, 1])
    except (RuntimeError, ValueError) as e:
        return Failure(_culprit(model, clip), prop, f"states do not stack and split: {e}")
    assert isinstance(out, Output)
    for i in range(2):
        alone, alone_state = _run(model, chunks[i], [n], states[i])
        failure = _first_diff(_row(out, i), alone, clip.tolerance, prop)
        if failure:
            return failure
        # The split state goes on as the stream's own would.
        nxt = xs[i][:, :, [first, second][i] + n :][:, :, :1]
        if nxt.shape[2]:
            a, _ = _run(model, nxt, [1], split[i])
            b, _ = _run(model, nxt, [1], alone_state)
            failure = _first_diff(a, b, clip.tolerance, prop + " (after the split)")
            if failure:
                return failure
    return None


def _row(out: Output, i: int) -> Output:
    """Stream `i`'s outputs out of a batched pass."""
    return out.map(lambda t: t[i : i + 1])


def _on_device(model: Layer, clip: Clip, device: torch.device) -> Failure | None:
    prop = f"on {device}"
    away = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
            if t is not None and t.device != device]  # fmt: skip
    if away:
        return Failure(_culprit(model, clip), prop, f"tensors elsewhere: {', '.join(away)}")
    y, state = model.step(clip.x[:, :, :2], None)
    assert isinstance(y, Output)
    for name, t in y.items():
        if t.device != device:
            return Failure(name, prop, f"its output is on {t.device}")
    elsewhere = [t.device for t in state_tensors(state) if t.device != device]
    if elsewhere:
        return Failure(_culprit(model, clip), prop, f"its state is on {elsewhere[0]}")
    return None


def _culprit(model: Layer, clip: Clip) -> str:
    """The name a failure of the whole model goes by: its first published layer."""
    return clip.whole.keys()[0] if len(clip.whole) else type(model).__name__


def _tensors(model: Layer) -> Iterator[Tensor]:
    yield from model.parameters()
    yield from (b for b in model.buffers() if b is not None)


# -- what `streamconv check` prints besides the verdict ------------------------------------------
@dataclass
class LayerInfo:
    name: str
    channels: int
    memory: str  # frames an impulse is still felt after, or ">HORIZON"
    state_bytes_per_pixel: float


def describe(model: Layer, channels: int, side: int = 32) -> list[LayerInfo]:
    """Each published layer: output channels, how many frames back it remembers (from an
    impulse response) and the state bytes per input pixel it holds between chunks."""
    ref = next(_tensors(model), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    zeros = torch.zeros(1, channels, HORIZON, side, side, device=device, dtype=dtype)
    impulse = zeros.clone()
    impulse[:, :, 0] = 1.0
    with torch.inference_mode():
        base, state = _run(model, zeros, [16] * (HORIZON // 16), None)
        hit, _ = _run(model, impulse, [16] * (HORIZON // 16), None)
    per_layer = state if set(state) >= set(base.keys()) else {}
    infos = []
    for name in base.keys():
        diff = (hit[name].double() - base[name].double()).abs().amax(dim=(0, 1, 3, 4))
        peak = float(diff.max())
        felt = (diff > peak * 1e-6).nonzero() if peak > 0 else torch.empty(0, 1)
        last = int(felt.max()) if felt.numel() else 0
        memory = f">{HORIZON - 1}" if last >= HORIZON - 1 else str(last)
        held = per_layer.get(name, state if len(base) == 1 else None)
        nbytes = sum(t.numel() * t.element_size() for t in state_tensors(held))
        infos.append(LayerInfo(name, int(base[name].shape[1]), memory, nbytes / side**2))
    return infos


def ms_per_frame(model: Layer, channels: int, size: tuple[int, int], chunk: int,
                 repeats: int = 5) -> float:  # fmt: skip
    """Median milliseconds per frame of one stream at `size` (W, H), in chunks of `chunk`."""
    ref = next(_tensors(model), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    w, h = size
    x = torch.rand(1, channels, chunk, h, w, device=device, dtype=dtype)
    times = []
    state: State | None = None
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            _, state = model.step(x, state)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first pass warms up
                times.append((time.perf_counter() - start) * 1000 / chunk)
    return sorted(times)[len(times) // 2]


def run(settings: Settings, frames: int, size: tuple[int, int], seed: int) -> int:
    """`streamconv check`: build the model as the worker would, check it, describe it; prints
    a report and returns 0 when every property holds, 1 otherwise."""
    w = settings.worker
    configure_torch(w)
    device = resolve_device(w.device)
    model = build_model(settings, device)
    channels = input_channels(w)
    report = check(model, channels, frames=frames, seed=seed)
    names = published(settings, model)
    print(f"model: {settings.model.factory or 'the [[layers]]'} on {device} ({w.dtype}), "
          f"weights version {weights.version(model)}; published: {', '.join(names)}")  # fmt: skip
    print(f"{'layer':<16} {'channels':>8} {'remembers (frames)':>19} {'state B/pixel':>14}")
    for info in describe(model, channels):
        mark = "" if info.name in names else "  (not published)"
        print(f"{info.name:<16} {info.channels:>8} {info.memory:>19} "
              f"{info.state_bytes_per_pixel:>14.1f}{mark}")  # fmt: skip
    ms = ms_per_frame(model, channels, size, w.chunk)
    print(f"{ms:.3f} ms per frame at {size[0]}x{size[1]} (one stream, chunks of {w.chunk})")
    for prop in report.checked:  # a failure's prop may add detail: "(fresh streams)"
        failure = next((f for f in report.failures if f.prop.startswith(prop)), None)
        print(f"  {prop}: {'ok' if failure is None else f'FAILED: {failure}'}")
    print("the model streams exactly" if report.ok else "the model does NOT stream exactly")
    return 0 if report.ok else 1
