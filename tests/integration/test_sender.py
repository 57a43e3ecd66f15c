"""client.Sender against real ZeroMQ sockets: a PULL in the test stands in for the worker's input
(a real worker for the subscriber probe). Every receive has a timeout."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamconv.client import Sender, Subscriber
from streamconv.client.link import WorkerLostError
from streamconv.client.sender import STOP_WAIT_S
from streamconv.errors import StartupError, StreamconvError
from streamconv.wire import protocol, transport
from tests.conftest import recv_parts

pytestmark = pytest.mark.integration

BIG = np.zeros((1024, 1024), np.uint8)  # 1 MiB: a few fill every buffer on the way


def pull(ctx: transport.Context, endpoint: str = "tcp://127.0.0.1:*", hwm: int = 1) -> Any:
    """A bound PULL; binding a port just released may fail for a moment, so it retries."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return transport.pull_socket(ctx, endpoint, hwm=hwm)
        except transport.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def drain(sock: transport.Socket) -> tuple[list[protocol.InputMessage], protocol.InputMessage]:
    """Every frame up to the eos, and the eos (each receive times out)."""
    frames: list[protocol.InputMessage] = []
    while True:
        msg = protocol.decode_input(recv_parts(sock))
        if msg.kind == "eos":
            return frames, msg
        frames.append(msg)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout_s} s")
        time.sleep(0.02)


def test_round_trip_every_dtype_then_eos(zmq_ctx: transport.Context) -> None:
    sock = pull(zmq_ctx, hwm=8)
    frames = [
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.arange(24, dtype=np.uint16).reshape(2, 4, 3) * 1000,
        np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5),
        np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4)),  # not C-order
    ]
    with Sender(transport.endpoint(sock), stream="s1", fps=25.0) as sender:
        assert [sender.send(f) for f in frames] == [True] * 4
    got, eos = drain(sock)
    assert [m.seq for m in got] == [0, 1, 2, 3]
    for msg, frame in zip(got, frames, strict=True):
        assert (msg.stream, msg.session, msg.fps) == ("s1", sender.session, 25.0)
        assert msg.frame is not None
        assert msg.frame.dtype == frame.dtype
        np.testing.assert_array_equal(msg.frame, frame)
    assert (eos.stream, eos.session, eos.seq) == ("s1", sender.session, 4)
    assert (sender.sent, sender.dropped, sender.eos_sent, sender.drained) == (4, 0, True, True)
    assert "queued 4 frames" in sender.summary()
    assert "connection held throughout" in sender.summary()


def test_lossless_waits_for_the_reader(zmq_ctx: transport.Context) -> None:
    sock = pull(zmq_ctx)
    total = 30

    def read_later() -> tuple[list[protocol.InputMessage], protocol.InputMessage]:
        time.sleep(1.0)
        return drain(sock)

    with Sender({"endpoint": transport.endpoint(sock), "hwm": 1}) as sender:
        assert sender.wait_worker()
        reader, result = in_thread(read_later)
        start = time.monotonic()
        for i in range(total):
            frame = BIG.copy()
            frame[0, 0] = i
            assert sender.send(frame)
        took = time.monotonic() - start
    reader.join(30)
    (got, eos) = result[0]
    assert took > 0.9, "30 MiB went out at once: no back-pressure"
    assert [int(m.frame[0, 0]) for m in got if m.frame is not None] == list(range(total))
    assert [m.seq for m in got] == list(range(total))
    assert eos.seq == total
    assert (sender.sent, sender.dropped) == (total, 0)


def test_stop_ends_a_blocked_lossless_send_promptly(zmq_ctx: transport.Context) -> None:
    sock = pull(zmq_ctx)  # never read: the queue fills and stays full
    sender = Sender({"endpoint": transport.endpoint(sock), "hwm": 1})
    stopped_at: list[float] = []

    def stop() -> None:
        time.sleep(0.5)
        stopped_at.append(time.monotonic())
        sender.stop()

    timer, _ = in_thread(stop)
    while sender.send(BIG):
        assert sender.sent < 200, "the queue never filled"
    returned = time.monotonic()
    timer.join(5)
    assert returned - stopped_at[0] < 0.5
    queued = sender.sent
    start = time.monotonic()
    sender.close()
    # Shutdown is bounded: at most STOP_WAIT_S for the eos, then as long for the linger.
    assert time.monotonic() - start < 2 * STOP_WAIT_S + 1.0
    with pytest.raises(StreamconvError, match="closed"):
        sender.send(BIG)  # not silently dropped
    assert (sender.sent, sender.eos_sent, sender.drained) == (queued, False, False)
    summary = sender.summary()
    assert "stopped" in summary
    assert "the eos was not queued" in summary
    assert "its last frames were discarded" in summary


def test_live_drops_and_counts_without_seq_gaps(zmq_ctx: transport.Context) -> None:
    sock = pull(zmq_ctx)
    total = 200
    frame = np.zeros((240, 320, 3), np.uint8)
    sender = Sender(transport.endpoint(sock), mode="live")
    assert sender.wait_worker()
    results = [sender.send(frame) for _ in range(total)]  # nobody reads meanwhile
    reader, got = in_thread(lambda: drain(sock))
    sender.close()
    reader.join(15)
    frames, eos = got[0]
    assert results.count(False) == sender.dropped > 0
    assert sender.sent + sender.dropped == total
    assert sender.dropped_no_worker == 0
    assert [m.seq for m in frames] == list(range(sender.sent))
    assert eos.seq == sender.sent
    assert f"dropped {sender.dropped} (live mode)" in sender.summary()


def test_live_counts_frames_dropped_while_the_worker_is_away(
    zmq_ctx: transport.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first = pull(zmq_ctx, hwm=8)
    endpoint = transport.endpoint(first)
    frame = np.ones((4, 4), np.uint8)
    with Sender({"endpoint": endpoint, "hwm": 8}, stream="cam0", mode="live") as sender:
        for _ in range(3):
            assert sender.send(frame)
        assert [protocol.decode_input(recv_parts(first)).seq for _ in range(3)] == [0, 1, 2]
        transport.close(first, 0)  # the worker goes away
        wait_until(lambda: not sender.connected, "seen as gone")
        assert [sender.send(frame) for _ in range(5)] == [False] * 5
        second = pull(zmq_ctx, endpoint, hwm=8)  # and comes back
        wait_until(lambda: sender.connected, "seen as back")
        assert sender.send(frame)
        back = protocol.decode_input(recv_parts(second))
    assert back.seq == 3  # the dropped frames took no number
    _, eos = drain(second)
    assert eos.seq == 4
    assert (sender.sent, sender.dropped, sender.dropped_no_worker) == (4, 5, 5)
    assert sender.disconnects == 1
    summary = sender.summary()
    assert "dropped 5 (5 while no worker was connected)" in summary
    assert "the worker disconnected 1 time(s): frames queued after that may be lost" in summary
    assert "disconnected after 3 frames were queued" in caplog.text
    assert "dropping frames until it is back" in caplog.text
    assert "is back after" in caplog.text


def test_lossless_fails_when_the_worker_does_not_come_back(zmq_ctx: transport.Context) -> None:
    sock = pull(zmq_ctx, hwm=8)
    with Sender(transport.endpoint(sock), wait_s=0.5) as sender:
        assert sender.send(np.ones((4, 4), np.uint8))
        assert sender.send(np.ones((4, 4), np.uint8))
        transport.close(sock, 0)
        wait_until(lambda: not sender.connected, "seen as gone")
        start = time.monotonic()
        with pytest.raises(WorkerLostError, match=r"went away after 2 frames were queued") as e:
            sender.send(np.ones((4, 4), np.uint8))
        assert 0.4 < time.monotonic() - start < 3.0
    assert "did not come back within 0.5 s" in str(e.value)
    assert sender.sent == 2
    assert "disconnected 1 time(s)" in sender.summary()


def test_lossless_waits_for_the_worker_to_come_back(zmq_ctx: transport.Context) -> None:
    first = pull(zmq_ctx, hwm=8)
    endpoint = transport.endpoint(first)
    frame = np.ones((4, 4), np.uint8)
    with Sender(endpoint, wait_s=10) as sender:
        assert sender.send(frame)
        assert protocol.decode_input(recv_parts(first)).seq == 0
        transport.close(first, 0)
        wait_until(lambda: not sender.connected, "seen as gone")

        def come_back() -> transport.Socket:
            time.sleep(0.5)
            return pull(zmq_ctx, endpoint, hwm=8)

        thread, second = in_thread(come_back)
        start = time.monotonic()
        assert sender.send(frame)  # waits for the worker instead of queueing into the void
        assert time.monotonic() - start > 0.4
        thread.join(10)
    frames, eos = drain(second[0])
    assert [m.seq for m in frames] == [1]
    assert eos.seq == 2


def test_no_worker_is_a_startup_error_within_wait_s(free_endpoint: Callable[[], str]) -> None:
    endpoint = free_endpoint()
    for mode in ("lossless", "live"):
        with Sender(endpoint, mode=mode, wait_s=0.5) as sender:
            start = time.monotonic()
            with pytest.raises(StartupError, match="no worker answered at") as e:
                sender.send(np.ones((4, 4), np.uint8))
            assert 0.4 < time.monotonic() - start < 2.0
        assert str(e.value) == (
            f"no worker answered at {endpoint} within 0.5 s; is `streamconv worker` running? "
            "(--wait to wait longer)"
        )
        assert (sender.sent, sender.eos_sent) == (0, False)
        assert "queued nothing" in sender.summary()


def test_stop_ends_the_wait_for_a_worker(free_endpoint: Callable[[], str]) -> None:
    stop = threading.Event()
    with Sender(free_endpoint(), wait_s=0, stop=stop) as sender:
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        start = time.monotonic()
        assert not sender.send(np.ones((4, 4), np.uint8))
        assert time.monotonic() - start < 1.0
        timer.join()
    assert sender.sent == 0


def test_wait_subscriber_with_a_real_worker(
    start_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    worker = start_worker()
    caplog.set_level(logging.INFO)
    frame = np.full((8, 8), 7, np.uint8)
    with Sender(worker.input, stream="probed", wait_s=1.0) as sender:
        with pytest.raises(StartupError, match="no subscriber of stream probed on"):
            sender.wait_subscriber(worker.output)
        with Subscriber(worker.output, stream="probed", timeout_s=10) as sub:
            assert sender.wait_subscriber(worker.output)
            for _ in range(3):
                assert sender.send(frame)
            sender.close()
            outputs = [h for h, _ in sub if h["kind"] == "output"]
    assert "waiting for a subscriber of stream probed on" in caplog.text
    assert "subscriber present" in caplog.text
    layers = {h["layer"] for h in outputs}
    assert layers
    for layer in layers:
        assert [h["seq"] for h in outputs if h["layer"] == layer] == [0, 1, 2]


def test_wait_subscriber_on_a_wrong_output_endpoint_says_so(
    start_worker: Any, free_endpoint: Callable[[], str]
) -> None:
    worker = start_worker()
    wrong = free_endpoint()
    with (
        Sender(worker.input, stream="probed", wait_s=0.5) as sender,
        pytest.raises(StartupError, match=f"no answer on {wrong} within 0.5 s"),
    ):
        sender.wait_subscriber(wrong)


def test_a_worker_that_starts_later_is_waited_for(
    zmq_ctx: transport.Context,
    free_endpoint: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    endpoint = free_endpoint()

    def start_worker_later() -> transport.Socket:
        time.sleep(1.5)  # past ANNOUNCE_S: the wait is logged
        return pull(zmq_ctx, endpoint, hwm=8)

    thread, sock = in_thread(start_worker_later)
    with Sender(endpoint, wait_s=10) as sender:
        assert sender.send(np.ones((4, 4), np.uint8))
        thread.join(10)
    frames, eos = drain(sock[0])
    assert ([m.seq for m in frames], eos.seq) == ([0], 1)
    assert f"waiting for a worker at {endpoint} (up to 10 s)" in caplog.text
    assert f"the worker at {endpoint} answered" in caplog.text
