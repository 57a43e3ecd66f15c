"""Batching across streams: a stream's outputs do not depend on which streams share its pass.

The property: for any interleaving of several streams' frames (some of one frame size, some
of another) and any moments at which due chunks run, the worker's engine batching up to 3
streams per pass gives every stream exactly (bit for bit) what it gives with every stream
run alone, and both equal the float64 offline reference to float32 rounding. Also here: the
GPU's data path (integer pixels divided on the device, outputs converted there) run on the
CPU, and copying back only the layers someone subscribes to.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamconv.config import load_settings
from streamconv.layers import Output, Sequential
from streamconv.model import build_model
from streamconv.wire.protocol import InputMessage
from streamconv.worker.engine import ChunkResult, Engine, Result
from streamconv.worker.pixels import frame_to_chw
from tests.unit.reference import rel_err

CPU = torch.device("cpu")
SIZES = {"a": (6, 7), "b": (6, 7), "c": (9, 5), "d": (6, 7)}


def retina(dtype: str = "float32", color: str = "gray") -> Sequential:
    worker = {"device": "cpu", "dtype": dtype, "color": color, "http": "off"}
    return build_model(load_settings("retina", {"worker": worker}, environ={}), CPU)


MODEL, REFERENCE = retina(), retina("float64")
NAMES = MODEL.stage_names()


def engine(max_batch: int, **kw: object) -> Engine:
    return Engine.build(MODEL, device=CPU, dtype=torch.float32, chunk=4, max_wait_s=0.0625,
                  max_batch=max_batch, **kw)  # type: ignore[arg-type]  # fmt: skip


def frames_of(stream: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, ord(stream)])
    return rng.integers(0, 256, (n, *SIZES[stream]), dtype=np.uint8)


def per_stream(results: list[Result]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for r in results:
        if isinstance(r, ChunkResult):
            for name, arr in r.layers.items():
                out.setdefault(r.stream, {}).setdefault(name, []).append(arr)
    return {s: {n: np.concatenate(a) for n, a in layers.items()} for s, layers in out.items()}


def offline64(frames: np.ndarray) -> dict[str, np.ndarray]:
    x = np.stack([frame_to_chw(f, "gray") for f in frames], axis=1)[None]
    REFERENCE.reset()
    out = REFERENCE.run(torch.from_numpy(x).double())
    REFERENCE.reset()
    assert isinstance(out, Output)
    return {name: t[0].transpose(0, 1).numpy() for name, t in out.items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.fixed_dictionaries({s: st.integers(1, 11) for s in SIZES}),
    data=st.data(),
)
def test_batched_outputs_equal_each_stream_alone_and_the_float64_reference(
    lengths: dict[str, int], data: st.DataObject
) -> None:
    seed = data.draw(st.integers(0, 2**16))
    clips = {s: frames_of(s, n, seed) for s, n in lengths.items()}
    # Any arrival order that keeps each stream's own order; after any message, time may
    # pass (partial chunks become due) or the read may end (full chunks run).
    order = data.draw(st.permutations([s for s, n in lengths.items() for _ in range(n)]))
    pauses = data.draw(st.lists(st.sampled_from(["none", "read", "wait"]), min_size=len(order),
                                max_size=len(order)))  # fmt: skip
    batched, alone = engine(max_batch=3), engine(max_batch=1)
    got: dict[int, list[Result]] = {3: [], 1: []}
    sent = dict.fromkeys(SIZES, 0)
    now = 0.0
    for stream, pause in zip(order, pauses, strict=True):
        msg = InputMessage("frame", stream, "s", sent[stream], 0, clips[stream][sent[stream]])
        sent[stream] += 1
        for eng, results in ((batched, got[3]), (alone, got[1])):
            results += eng.submit(msg, now)
            if pause == "read":
                results += eng.run_ready()
            elif pause == "wait":
                results += eng.due(now + 0.0625)
        now += 0.0625 if pause == "wait" else 0.0
    for eng, results in ((batched, got[3]), (alone, got[1])):
        results += eng.flush_all()
    a, b = per_stream(got[3]), per_stream(got[1])
    assert sorted(a) == sorted(b) == sorted(SIZES)
    for stream, clip in clips.items():
        reference = offline64(clip)
        for name in NAMES:
            assert a[stream][name].shape == (len(clip), 1, *SIZES[stream])
            assert np.array_equal(a[stream][name], b[stream][name]), (stream, name)
            assert rel_err(a[stream][name], reference[name]) < 1e-5, (stream, name)


def test_chunks_due_together_share_one_pass_up_to_max_batch() -> None:
    eng = engine(max_batch=3)
    clips = {s: frames_of(s, 4, 0) for s in SIZES}
    results: list[Result] = []
    for i in range(4):
        for s, clip in clips.items():
            results += eng.submit(InputMessage("frame", s, "s", i, 0, clip[i]), 0.0)
    assert results == []  # full chunks wait for the end of the read
    results = eng.run_ready()
    # a, b, d share a size (one pass of 3), c has its own: two passes for four streams.
    assert eng.batcher.passes == 2
    assert sorted(r.stream for r in results if isinstance(r, ChunkResult)) == sorted(SIZES)


def test_one_failing_stream_does_not_fail_the_others_of_its_pass() -> None:
    eng = engine(max_batch=4)
    good = frames_of("a", 8, 1)
    for i in range(8):
        eng.submit(InputMessage("frame", "a", "s", i, 0, good[i]), 0.0)
        eng.submit(InputMessage("frame", "b", "s", i, 0, good[i]), 0.0)
        if i == 3:
            eng.run_ready()
            # A state the model cannot take (and that cannot be stacked with a's).
            eng.streams["b"].state["opl"]["history"] = torch.zeros(1, 1, 5, 3, 3)  # type: ignore[index]
    results = eng.run_ready()
    kinds = {r.stream: type(r).__name__ for r in results}
    assert kinds == {"a": "ChunkResult", "b": "Failed"}
    assert "does not continue the stream" in results[1].detail  # type: ignore[union-attr]


@pytest.mark.parametrize(("color", "shape"), [("gray", (6, 7)), ("rgb", (6, 7, 3))])
@pytest.mark.parametrize("output_dtype", ["float32", "float16", "uint8"])
def test_the_gpu_data_path_on_the_cpu_gives_the_same_outputs(
    color: str, shape: tuple[int, ...], output_dtype: str
) -> None:
    model = retina(color=color)
    clip = np.random.default_rng(5).integers(0, 256, (9, *shape), dtype=np.uint8)
    outs = {}
    for device_side in (False, True):
        eng = Engine.build(model, device=CPU, dtype=torch.float32, chunk=4, color=color,
                     in_channels=3 if color == "rgb" else 1, output_dtype=output_dtype,
                     device_pixels=device_side)  # fmt: skip
        results: list[Result] = []
        for i, f in enumerate(clip):
            results += eng.submit(InputMessage("frame", "s", "x", i, 0, f), 0.0)
            if device_side:  # the chunk really travelled as bytes
                assert eng.streams["s"].buffer is None or eng.streams["s"].buffer.dtype == np.uint8
            results += eng.run_ready()
        outs[device_side] = per_stream(results + eng.flush_all())["s"]
    for name in model.stage_names():
        host, device = outs[False][name], outs[True][name]
        assert device.dtype == host.dtype
        assert device.shape == host.shape
        assert device.flags.c_contiguous
        if output_dtype == "uint8":  # two quantisers (OpenCV's, torch's): at most one step
            assert np.abs(device.astype(int) - host.astype(int)).max() <= 1
        else:
            assert np.array_equal(device, host), name


def test_only_layers_with_a_subscriber_are_copied_back() -> None:
    wanted = {"a": {"ganglion"}, "b": set()}
    eng = engine(max_batch=1, wanted=wanted.get)
    clip = frames_of("a", 4, 2)
    results: list[Result] = []
    for i in range(4):
        for s in ("a", "b", "d"):  # d: no answer (None) means every layer
            results += eng.submit(InputMessage("frame", s, "s", i, 0, clip[i]), 0.0)
    results += eng.run_ready()
    layers = {r.stream: sorted(r.layers) for r in results if isinstance(r, ChunkResult)}
    assert layers == {"a": ["ganglion"], "b": [], "d": sorted(NAMES)}
    # The state still ran through every layer: the next chunk goes on exactly.
    assert eng.streams["b"].state is not None
    assert eng.streams["b"].next_seq == 4
