"""Issue 19, the fit-then-serve round trip with real processes: examples/divisive fitted
(sigma 0.3 -> 0.05 with the library's own `fit`), its weights saved, a worker serving it from
the config, and a subscriber's outputs equal to the offline result of the fitted model. A
library user's own model object is served in-process too."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamconv.client import Sender, Subscriber, collect
from streamconv.config import load_settings
from streamconv.weights import save
from streamconv.wire import protocol, transport
from streamconv.worker import Worker
from tests.helpers import IN_PROCESS, running
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration


def module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def frames(n: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (24, 32), dtype=np.uint8) for _ in range(n)]


def test_a_fitted_model_is_served_exactly_as_offline(
    divisive_example: Path, start_worker: Callable[..., WorkerProc]
) -> None:
    worker: WorkerProc = start_worker(divisive_example / "config.toml")
    assert re.search(r"model \(model\.py:build\): change -> norm", worker.log())
    clip = frames()
    with Subscriber(worker.output, stream="fit", timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        with Sender(worker.input, stream="fit", wait_s=20) as sender:
            for f in clip:
                assert sender.send(f)
        got = collect(sub, ["change", "norm"])
    # Offline: the same factory, the fitted weights, the whole clip in one pass.
    fitted = module(divisive_example / "model.py").build(tau=4.0, change_tau=2.0).double()
    fitted.load_state_dict(load_file(str(divisive_example / "fitted.safetensors")))
    assert abs(float(fitted.norm.sigma.detach().abs()) - 0.05) < 1e-3  # recovered
    x = torch.from_numpy(np.stack(clip)[None, None].astype(np.float64) / 255.0)
    with torch.no_grad():
        offline = fitted.run(x)
    for layer in ("change", "norm"):
        streamed = np.stack([frame for _, frame in got[layer]])[:, 0]
        expected = offline[layer][0, 0].numpy()
        assert streamed.shape == expected.shape
        # float64 model, float32 on the wire: the rounding of the wire, nothing else.
        np.testing.assert_allclose(streamed, expected.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_a_model_object_built_in_the_process_is_served(tmp_path: Path) -> None:
    """`Worker(settings, model=...)`: a library user's model, with [model] weights loaded in."""
    from streamconv.layers import Nonlinearity, Sequential, TemporalLowPass

    own = Sequential(TemporalLowPass(3.0), Nonlinearity("identity", gain=2.0))
    save(own, tmp_path / "none.safetensors")  # no parameters: an empty state_dict loads too
    worker_settings = {**IN_PROCESS, "dtype": "float64"}
    weights = {"weights": str(tmp_path / "none.safetensors")}
    settings = load_settings("default", {"worker": worker_settings, "model": weights}, environ={})
    worker = Worker(settings, model=own)
    clip = frames(12)
    with running(worker) as (inp, out), Subscriber(out, stream="own", timeout_s=15) as sub:
        sub.wait_ready(inp)
        with Sender(inp, stream="own", wait_s=10) as sender:
            for f in clip:
                assert sender.send(f)
        got = collect(sub, ["output"])  # one tensor out: published as "output"
    x = torch.from_numpy(np.stack(clip)[None, None].astype(np.float64) / 255.0)
    low = TemporalLowPass(3.0).double().run(x)
    assert isinstance(low, torch.Tensor)
    expected = 2.0 * low[0, 0].numpy()
    streamed = np.stack([frame for _, frame in got["output"]])[:, 0]
    np.testing.assert_allclose(streamed, expected.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_a_python_model_is_checkpointed_and_restored_like_a_built_in_one(
    divisive_example: Path, start_worker: Callable[..., WorkerProc], tmp_path: Path,
    zmq_ctx: transport.Context,
) -> None:  # fmt: skip
    """Stop the worker mid-stream (a partial chunk in hand), start it again: the stream goes
    on from its checkpoint, and the outputs equal the offline fitted model throughout."""
    config = divisive_example / "config.toml"
    flags = ("--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "8")
    clip, session = frames(40), protocol.new_session()
    parts: list[tuple[dict[str, Any], np.ndarray]] = []
    for seqs in (range(21), range(21, 40)):
        worker = start_worker(config, *flags)
        if seqs.start:
            worker.wait_for_line(r"stream cam: restored from its checkpoint \(session \w+, "
                                 r"next seq 21\)")  # fmt: skip
        with Subscriber(worker.output, stream="cam", layers=["norm"], timeout_s=20) as sub:
            sub.wait_ready(worker.input)
            push = transport.push_socket(zmq_ctx, worker.input)
            for seq in seqs:
                transport.send(push, protocol.encode_frame("cam", session, seq, clip[seq]))
            if seqs.start:
                transport.send(push, protocol.encode_eos("cam", session, 40))
                parts += [(h, f) for h, f in sub if f is not None]
            else:
                while len(parts) < len(seqs):
                    header, frame = sub.recv()
                    if frame is not None:
                        parts.append((header, frame))
                assert worker.stop() == 0
    assert [h["seq"] for h, _ in parts] == list(range(40))
    fitted = module(divisive_example / "model.py").build(tau=4.0, change_tau=2.0).double()
    fitted.load_state_dict(load_file(str(divisive_example / "fitted.safetensors")))
    x = torch.from_numpy(np.stack(clip)[None, None].astype(np.float64) / 255.0)
    with torch.no_grad():
        expected = fitted.run(x)["norm"][0, 0].numpy()
    streamed = np.stack([f for _, f in parts])[:, 0]
    np.testing.assert_allclose(streamed, expected.astype(np.float32), rtol=1e-6, atol=1e-7)
