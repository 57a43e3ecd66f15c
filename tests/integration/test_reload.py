"""Issue 19: new weights without a restart, with a real worker process. SIGHUP (and POST
/reload when enabled) loads the weights file again between two chunks: the stream keeps its
temporal state, the new weights apply from the next chunk, every output names the weights
that computed it; a file of another structure is refused and the old weights stay."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamconv.client import Sender, Subscriber
from streamconv.weights import save
from tests.helpers import status
from tests.integration.conftest import WorkerProc
from tests.integration.test_own_model import frames, module

pytestmark = pytest.mark.integration

CHUNK = 8  # the example's [worker] chunk: parts below are whole chunks


def fitted(folder: Path, sigma: float) -> Any:
    model = module(folder / "model.py").build(tau=4.0, change_tau=2.0).double()
    with torch.no_grad():
        model.norm.sigma.fill_(sigma)
    return model


def take(sub: Subscriber, n: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    """`n` outputs of layer norm, in order (every receive bounded by the subscriber)."""
    got: list[tuple[dict[str, Any], np.ndarray]] = []
    while len(got) < n:
        header, frame = sub.recv()
        if frame is not None and header["layer"] == "norm":
            got.append((header, frame))
    return got


def post(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}") if e.code != 404 else {}


def test_new_weights_apply_from_the_next_chunk_and_the_state_is_kept(
    divisive_example: Path, start_worker: Callable[..., WorkerProc]
) -> None:
    weights = divisive_example / "fitted.safetensors"
    old = module(divisive_example / "model.py").build(tau=4.0, change_tau=2.0).double()
    old.load_state_dict(load_file(str(weights)))  # what the worker starts with
    worker = start_worker(divisive_example / "config.toml",
                          env={"STREAMCONV_WORKER__RELOAD_HTTP": "true"})  # fmt: skip
    clip = frames(4 * CHUNK)
    parts = [clip[: 2 * CHUNK], clip[2 * CHUNK : 3 * CHUNK], clip[3 * CHUNK :]]
    first = status(worker)["model_version"]
    with Subscriber(worker.output, stream="swap", layers=["norm"], timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        with Sender(worker.input, stream="swap", wait_s=20) as sender:
            for f in parts[0]:
                assert sender.send(f)
            before = take(sub, len(parts[0]))  # all of it ran: the swap falls between chunks
            save(fitted(divisive_example, 0.2), weights)
            worker.proc.send_signal(signal.SIGHUP)
            worker.wait_for_line(r"weights reloaded from .*: version \w+ -> \w+", 30)
            second = status(worker)["model_version"]
            for f in parts[1]:
                assert sender.send(f)
            middle = take(sub, len(parts[1]))
            # Another structure: refused, the weights in use stay.
            save(torch.nn.Linear(2, 2), weights)
            code, said = post(worker.http + "/reload")
            assert code == 409, said
            assert "do not fit the model" in said["error"]
            assert said["model_version"] == second
            assert status(worker)["model_version"] == second
            for f in parts[2]:
                assert sender.send(f)
            after = take(sub, len(parts[2]))
    assert first != second
    assert {h["model_version"] for h, _ in before} == {first}
    assert {h["model_version"] for h, _ in middle + after} == {second}
    assert "reload refused, still serving weights version" in worker.log()
    # Offline: the fitted weights up to the swap, then sigma 0.2, the state carried through.
    x = torch.from_numpy(np.stack(clip)[None, None].astype(np.float64) / 255.0)
    new = fitted(divisive_example, 0.2)
    with torch.no_grad():
        y0, state = old.step(x[:, :, : 2 * CHUNK], None)
        y1, _ = new.step(x[:, :, 2 * CHUNK :], state)
    streamed = np.stack([f for _, f in before + middle + after])[:, 0]
    expected = np.concatenate([y0["norm"][0, 0].numpy(), y1["norm"][0, 0].numpy()])
    np.testing.assert_allclose(streamed, expected.astype(np.float32), rtol=1e-6, atol=1e-7)
    # Not the old weights throughout: the swap shows in the outputs.
    with torch.no_grad():
        unswapped, _ = old.step(x, None)
    assert not np.allclose(streamed, unswapped["norm"][0, 0].numpy(), rtol=1e-3)


def test_reload_over_http_is_off_unless_enabled(
    divisive_example: Path, start_worker: Callable[..., WorkerProc]
) -> None:
    worker = start_worker(divisive_example / "config.toml")
    code, _ = post(worker.http + "/reload")
    assert code in (404, 405)
    assert "POST /reload" not in worker.log()
