"""Subscriber against real ZeroMQ sockets: the end of a stream, timeouts, gaps, bad messages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from streamconv.client.subscriber import Subscriber
from streamconv.errors import ConfigError
from streamconv.wire import protocol, transport
from tests.integration.outputs import SESSION, FakeWorker

pytestmark = pytest.mark.integration

TIMEOUT_S = 5.0


@pytest.fixture
def worker(zmq_ctx: transport.Context) -> FakeWorker:
    return FakeWorker(zmq_ctx)


@pytest.fixture
def open_sub(zmq_ctx: transport.Context, worker: FakeWorker) -> Iterator[Any]:
    """open_sub(**kw) -> a Subscriber whose subscriptions have reached the worker."""
    subs: list[Subscriber] = []

    def make(**kw: Any) -> Subscriber:
        kw.setdefault("timeout_s", TIMEOUT_S)
        sub = Subscriber(worker.endpoint, ctx=zmq_ctx, **kw)
        subs.append(sub)
        stream, layers = kw.get("stream"), sorted(kw.get("layers") or [])
        if stream is None:
            topics = [b""]
        elif layers:
            topics = [protocol.topic(stream, layer) for layer in layers]
        else:
            topics = [protocol.stream_topic(stream)]
        worker.wait_subscribed(*topics)
        return sub

    yield make
    for sub in subs:
        sub.close()


def kinds(messages: list[tuple[dict[str, Any], np.ndarray | None]]) -> list[str]:
    return [f"{h['layer']}:{h['kind']}:{h['seq']}" for h, _ in messages]


def test_iteration_ends_after_eos_on_every_layer_seen(worker: FakeWorker, open_sub: Any) -> None:
    sub = open_sub(stream="cam0")
    for seq in range(3):
        worker.output("cam0", "c1", seq)
        worker.output("cam0", "c2", seq)
    worker.eos("cam0", "c1", 3)
    worker.eos("cam0", "c2", 3)
    got = list(sub)  # before the fix: TimeoutError after the last eos
    assert len(got) == 8
    assert kinds(got)[-2:] == ["c1:eos:3", "c2:eos:3"]
    assert [frame is None for _, frame in got] == [False] * 6 + [True] * 2
    assert sub.ended


def test_iteration_waits_for_every_given_layer(worker: FakeWorker, open_sub: Any) -> None:
    """With `layers`, a layer that never published (a long temporal delay) still counts."""
    sub = open_sub(stream="cam0", layers=["c1", "c2"])
    worker.output("cam0", "c1", 0)
    worker.eos("cam0", "c1", 1)
    it = iter(sub)
    assert kinds([next(it), next(it)]) == ["c1:output:0", "c1:eos:1"]
    assert not sub.ended
    worker.eos("cam0", "c2", 1)
    assert kinds(list(it)) == ["c2:eos:1"]


def test_an_eos_of_an_earlier_session_does_not_end_the_current_one(
    worker: FakeWorker, open_sub: Any
) -> None:
    sub = open_sub(stream="cam0")
    worker.output("cam0", "c1", 0, session="new")
    worker.eos("cam0", "c1", 9, session="old")  # a late eos of the sender's previous run
    worker.output("cam0", "c1", 1, session="new")
    worker.eos("cam0", "c1", 2, session="new")
    got = list(sub)
    assert [(h["session"], h["kind"]) for h, _ in got] == [
        ("new", "output"), ("old", "eos"), ("new", "output"), ("new", "eos"),
    ]  # fmt: skip


def test_a_new_session_starts_the_count_over(worker: FakeWorker, open_sub: Any) -> None:
    sub = open_sub(stream="cam0")
    worker.output("cam0", "c1", 0, session="a")
    worker.output("cam0", "c2", 0, session="a")
    worker.eos("cam0", "c1", 1, session="a")
    worker.output("cam0", "c1", 0, session="b")  # restarted before c2's eos of session a
    worker.eos("cam0", "c2", 1, session="a")
    worker.eos("cam0", "c1", 1, session="b")
    got = list(sub)
    assert [(h["session"], h["layer"], h["kind"]) for h, _ in got][-1] == ("b", "c1", "eos")
    assert len(got) == 6


def test_output_after_an_idle_eos_keeps_the_layer_live(worker: FakeWorker, open_sub: Any) -> None:
    """The worker ends an idle stream with an eos; frames of the same session may follow."""
    sub = open_sub(stream="cam0", layers=["c1", "c2"])
    worker.eos("cam0", "c1", 1)
    worker.output("cam0", "c1", 1)
    worker.eos("cam0", "c2", 2)
    it = iter(sub)
    assert kinds([next(it) for _ in range(3)]) == ["c1:eos:1", "c1:output:1", "c2:eos:2"]
    assert not sub.ended  # c1 is live again
    worker.eos("cam0", "c1", 2)
    assert kinds(list(it)) == ["c1:eos:2"]


def test_other_streams_and_probes_do_not_end_it(worker: FakeWorker, open_sub: Any) -> None:
    sub = open_sub(stream="cam1", layers=["c"])
    worker.eos("cam10", "c", 0)  # prefix of neither topic: not even received
    worker.eos(protocol.PROBE_STREAM, "c", 0)
    worker.output("cam1", "c", 0)
    worker.eos("cam1", "c", 1)
    assert kinds(list(sub)) == ["c:output:0", "c:eos:1"]


def test_recv_still_returns_eos_and_goes_on(worker: FakeWorker, open_sub: Any) -> None:
    sub = open_sub(stream="cam0")
    worker.output("cam0", "c1", 0)
    worker.eos("cam0", "c1", 1)
    worker.output("cam0", "c1", 0, session="next")
    assert kinds([sub.recv(), sub.recv()]) == ["c1:output:0", "c1:eos:1"]
    header, frame = sub.recv()
    assert (header["session"], frame is not None, sub.ended) == ("next", True, False)


def test_without_a_stream_iteration_ends_in_a_timeout(worker: FakeWorker, open_sub: Any) -> None:
    sub = open_sub(stream=None, timeout_s=0.3)
    worker.output("cam0", "c1", 0)
    worker.eos("cam0", "c1", 1)
    it = iter(sub)
    assert kinds([next(it), next(it)]) == ["c1:output:0", "c1:eos:1"]
    with pytest.raises(TimeoutError, match=r"0\.3 s"):
        next(it)


def test_a_timeout_of_a_year_does_not_overflow(worker: FakeWorker, open_sub: Any) -> None:
    """A year in ms is too large for zmq's poll: before the fix, OverflowError at once."""
    sub = open_sub(stream="cam0")
    timer = threading.Timer(0.3, lambda: worker.output("cam0", "c1", 7))
    timer.start()
    try:
        header, _ = sub.recv(timeout_s=3600.0 * 24 * 365)
    finally:
        timer.join()
    assert header["seq"] == 7


def test_poll_returns_none_on_timeout(open_sub: Any) -> None:
    assert open_sub(stream="cam0").poll(0.05) is None


def test_gaps_are_counted_unless_marked(worker: FakeWorker, open_sub: Any) -> None:
    sub = open_sub(stream="cam0", layers=["c1"])
    for seq, flag in [(0, False), (1, False), (3, False), (7, True), (8, False)]:
        worker.output("cam0", "c1", seq, discontinuity=flag)
    worker.output("cam0", "c1", 0, session="other")  # a new session is not a gap
    worker.eos("cam0", "c1", 1, session="other")
    assert len(list(sub)) == 7
    assert dict(sub.gaps) == {("cam0", "c1"): 1}


def test_bad_messages_are_skipped_and_counted(worker: FakeWorker, open_sub: Any) -> None:
    sub = open_sub(stream="cam0")
    bad = protocol.encode_output_eos("cam0", "c1", SESSION, 0)
    worker.raw(bad[0], bad[1].replace(b'"seq": 0', b'"seq": ' + str(10**100).encode()), b"")
    worker.raw(bad[0], bad[1].replace(b'"v": 1', b'"v": 1.0'), b"")
    worker.raw(b"cam0/c1/", b"not json", b"")
    worker.output("cam0", "c1", 0)
    worker.eos("cam0", "c1", 1)
    assert kinds(list(sub)) == ["c1:output:0", "c1:eos:1"]
    assert sub.bad_messages == 3


def test_missed_outputs_are_counted_at_the_start_in_gaps_and_at_the_end(
    worker: FakeWorker, open_sub: Any
) -> None:
    """Joined late (first seq 2), a gap of 3 (seq 4-6, one of them marked by the worker), the
    last 2 missed before the eos of 12: 2 + 3 + 2 outputs missed, one state reset."""
    sub = open_sub(stream="cam0", layers=["c1"])
    for seq, flag in [(2, False), (3, False), (7, True), (8, False), (9, False)]:
        worker.output("cam0", "c1", seq, discontinuity=flag)
    worker.eos("cam0", "c1", 12)
    assert len(list(sub)) == 6
    tally = sub.losses.tallies[("cam0", "c1", SESSION)]
    assert (tally.start, tally.middle, tally.end, tally.discontinuities) == (2, 3, 2, 1)
    assert sub.losses.missed("cam0") == 7
    assert sub.losses.missed("other") == 0
    assert sub.losses.not_ended() == []
    assert "received 5 of 12, missed 7" in sub.losses.report()[0]


def test_a_session_without_eos_is_reported_as_not_ended(worker: FakeWorker, open_sub: Any) -> None:
    sub = open_sub(stream="cam0", layers=["c1"])
    for seq in range(3):
        worker.output("cam0", "c1", seq)
    while sub.poll(0.5) is not None:
        pass
    assert sub.losses.missed() == 0
    assert sub.losses.not_ended() == [("cam0", "c1", SESSION)]
    assert "no eos" in sub.losses.report()[0]


def preview(worker: FakeWorker, stream: str, layer: str, seq: int) -> None:
    small = np.full((1, 4, 4), 0.5, np.float32)
    worker.raw(*protocol.encode_preview(stream, layer, SESSION, seq, 0, small, full_shape=(1, 8, 8),
                                        discontinuity=False, lost=0))  # fmt: skip


def test_previews_only_takes_the_previews_of_every_layer_and_the_input(
    worker: FakeWorker, zmq_ctx: transport.Context
) -> None:
    """The view's way in: samples of each layer and of the input, their eos, no outputs."""
    with Subscriber(worker.endpoint, ctx=zmq_ctx, stream="cam0", previews="only") as sub:
        worker.wait_subscribed(protocol.PREVIEW_PREFIX.encode() + protocol.stream_topic("cam0"))
        worker.output("cam0", "c1", 0)  # not a preview: not taken
        preview(worker, "cam0", "c1", 0)
        preview(worker, "cam0", protocol.INPUT, 0)
        preview(worker, "cam0", "c1", 7)  # samples skip seqs: no gap, no loss
        transport.send(worker.sock, protocol.encode_output_eos("cam0", "c1", SESSION, 8,
                                                               preview=True))  # fmt: skip
        got = sub.take(TIMEOUT_S, 100)
        while not sub.ended:
            got += sub.take(TIMEOUT_S, 100)
        assert kinds(got) == ["c1:output:0", ".input:output:0", "c1:output:7", "c1:eos:8"]
        assert all(h.get("preview") for h, _ in got)
        assert sub.gaps.total() == 0
        assert sub.losses.missed() == 0
        assert sub.losses.report() == []  # nothing tallied: samples are not counted


def test_previews_input_adds_the_inputs_previews_to_the_outputs(
    worker: FakeWorker, zmq_ctx: transport.Context
) -> None:
    with Subscriber(worker.endpoint, ctx=zmq_ctx, previews="input") as sub:
        worker.wait_subscribed(b"", protocol.PREVIEW_PREFIX.encode())
        preview(worker, "cam0", "c1", 0)  # a layer's preview: the outputs are taken instead
        worker.output("cam0", "c1", 0)
        preview(worker, "cam0", protocol.INPUT, 0)
        worker.output("cam0", "c1", 1)
        got = sub.take(TIMEOUT_S, 3)
        while len(got) < 3:
            got += sub.take(TIMEOUT_S, 3 - len(got))
        assert kinds(got) == ["c1:output:0", ".input:output:0", "c1:output:1"]
        assert [bool(h.get("preview")) for h, _ in got] == [False, True, False]
        assert sub.poll(0.3) is None  # nothing more: the layer's preview was not taken


def test_a_lossless_subscriber_takes_outputs_not_samples(worker: FakeWorker) -> None:
    with pytest.raises(ConfigError, match="previews are samples"):
        Subscriber(worker.endpoint, previews="only", lossless=True, inputs=[worker.endpoint])
