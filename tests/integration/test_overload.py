"""A live burst the worker cannot keep up with: it keeps the newest frames, counts the rest, and
the stream's state goes on across the gaps (no reset); a lossless burst loses nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamconv.capture.sources import synthetic_frame
from streamconv.client import Subscriber
from streamconv.wire import protocol, transport
from tests.helpers import RETINA, offline, preset_layers, status
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

LAYERS = preset_layers(RETINA)
N, W, H = 60, 320, 240


@pytest.mark.parametrize("live", [True, False], ids=["live", "lossless"])
def test_a_burst_the_worker_cannot_keep_up_with(
    start_worker: Callable[..., WorkerProc], zmq_ctx: transport.Context, live: bool
) -> None:
    worker = start_worker(RETINA, "--chunk", "2", "--max-wait-ms", "0")
    frames = [synthetic_frame(i, W, H, channels=1) for i in range(N)]
    got: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {name: [] for name in LAYERS}
    with Subscriber(worker.output, stream="cam", timeout_s=30, hwm=100_000) as sub:
        sub.wait_ready(worker.input)
        push = transport.push_socket(zmq_ctx, worker.input, hwm=1000)
        session = protocol.new_session()
        for seq, frame in enumerate(frames):  # all at once: far faster than the worker runs
            transport.send(push, protocol.encode_frame("cam", session, seq, frame, live=live))
        transport.send(push, protocol.encode_eos("cam", session, N))
        for head, array in sub:
            if array is not None:
                got[head["layer"]].append((head, array))
    deadline = time.monotonic() + 10
    while status(worker)["counts"].get("eos", 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    counts = status(worker)["counts"]
    seqs = [h["seq"] for h, _ in got["ganglion"]]
    if not live:
        assert seqs == list(range(N))  # back-pressure: nothing lost
        assert "live_dropped" not in counts
        return
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == N - 1  # the newest frame is always run
    dropped = N - len(seqs)
    assert dropped > 0, "the burst was not thinned"
    assert counts["live_dropped"] == dropped
    assert counts["frames_missing"] == dropped
    for name in LAYERS:
        heads = [h for h, _ in got[name]]
        assert [bool(h.get("discontinuity")) for h in heads] == [True] + [False] * (len(heads) - 1)
    # The state went on across the gaps, as if the dropped frames had never been sent.
    expected = offline([frames[s] for s in seqs])
    for name in LAYERS:
        np.testing.assert_allclose(np.stack([a for _, a in got[name]]), expected[name],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
