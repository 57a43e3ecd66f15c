"""A worker inside the caller's own process (the documented API), fed by a Sender."""

from __future__ import annotations

import numpy as np
import pytest

from streamconv.client import Sender, Subscriber
from streamconv.config import load_settings
from streamconv.worker import Worker
from tests.helpers import IN_PROCESS, running

pytestmark = pytest.mark.integration


def test_worker_runs_in_a_thread_and_stops_on_request() -> None:
    worker = Worker(load_settings("default", {"worker": IN_PROCESS}, environ={}))
    frames = [np.full((12, 16), 20 * i, np.uint8) for i in range(6)]
    with running(worker) as (inp, out):  # the thread ends when asked: checked on the way out
        with Subscriber(out, stream="own", layers=["motion"], timeout_s=15) as sub:
            sub.wait_ready(inp)
            with Sender(inp, stream="own", wait_s=10) as sender:
                for frame in frames:
                    assert sender.send(frame)
            seqs = [head["seq"] for head, frame in sub if frame is not None]
        assert seqs == list(range(len(frames)))
    assert worker.stats.counts["frames_out"] == len(frames)
