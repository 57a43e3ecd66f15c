"""A worker inside the caller's own process (the documented API), fed by a Sender."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streamconv.client import Sender, Subscriber
from streamconv.config import load_settings
from streamconv.worker import Worker

pytestmark = pytest.mark.integration


def test_worker_runs_in_a_thread_and_stops_on_request() -> None:
    settings = load_settings(
        "default",
        {"worker": {"http": "off", "device": "cpu", "input": "tcp://127.0.0.1:*",
                    "output": "tcp://127.0.0.1:*"}},
        environ={},
    )  # fmt: skip
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert worker.ready.wait(60), "the worker never became ready"
        assert worker.endpoints is not None
        inp, out = worker.endpoints
        frames = [np.full((12, 16), 20 * i, np.uint8) for i in range(6)]
        with Subscriber(out, stream="own", layers=["motion"], timeout_s=15) as sub:
            sub.wait_ready(inp)
            with Sender(inp, stream="own", wait_s=10) as sender:
                for frame in frames:
                    assert sender.send(frame)
            seqs = [head["seq"] for head, frame in sub if frame is not None]
        assert seqs == list(range(len(frames)))
    finally:
        worker.stop()
        thread.join(15)
    assert not thread.is_alive()
    assert worker.stats.counts["frames_out"] == len(frames)
