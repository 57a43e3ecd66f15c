"""Issue 16: the worker's counts can be trusted with `streamconv view` open (real processes).

A viewer asks for previews, and the publisher's preview path once recreated an ended stream
blank: /status showed it `active` with session "" and zero counts, a per-stream counter on
/metrics fell from 50 to 0, and streamconv_active_streams stayed at 1 for good."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from streamconv.capture.sources import synthetic_frame
from streamconv.client import Sender
from tests.helpers import get, status, until
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

Start = Callable[..., WorkerProc]
FRAMES = 50


def metrics(worker: WorkerProc) -> dict[str, float]:
    """Every sample on /metrics, by its name with labels as written."""
    out = {}
    for line in get(worker, "/metrics").splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_an_ended_stream_keeps_its_counts_while_a_view_is_open(
    start_worker: Start, start_view: Start
) -> None:
    worker = start_worker()
    start_view(worker.output)
    # The view's preview subscription is in before the stream starts.
    until(lambda: any(t.startswith("_preview") for t in status(worker)["subscriptions"]),
          "the view's subscription")  # fmt: skip
    with Sender(worker.input, "cam", wait_s=10) as sender:
        session = sender.session
        for i in range(FRAMES):
            assert sender.send(synthetic_frame(i, 32, 24, channels=1))
    until(lambda: status(worker)["streams"].get("cam", {}).get("state") == "eos", "cam's eos")
    received = 'streamconv_frames_received_total{stream="cam"}'
    seen = []
    for _ in range(10):  # about 2 s: previews of the last chunk go out meanwhile
        st, m = status(worker), metrics(worker)
        cam = st["streams"]["cam"]
        assert cam["state"] == "eos", cam
        assert cam["session"] == session
        assert (cam["frames_received"], cam["frames_processed"]) == (FRAMES, FRAMES)
        assert st["active_streams"] == 0
        assert m["streamconv_active_streams"] == 0
        seen.append(m[received])
        time.sleep(0.2)
    assert seen == [FRAMES] * len(seen)  # a counter never decreases, and this one is done
