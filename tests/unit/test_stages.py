"""The pipelined worker's hand-offs (worker/stages.py): the outbox publishes in order on its
own thread and runs what must follow outputs only after them; a full outbox holds the serve
loop; a dead stage thread stops the worker; the inbox reads a real socket on its own thread,
stops reading when the serve loop falls behind (back-pressure), and nothing read is lost at
a stop."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from streamconv.config import WorkerSettings
from streamconv.wire import protocol, transport
from streamconv.worker import stages
from streamconv.worker.intake import BATCH, Intake
from streamconv.worker.results import ChunkResult, EndResult
from streamconv.worker.stats import Stats

TIMEOUT_S = 10.0


class FakePublisher:
    """The Publisher's interface, recording what it was given and on which thread."""

    def __init__(self, gate: threading.Event | None = None, fail_at: int = -1) -> None:
        self.published: list[Any] = []
        self.threads: set[str] = set()
        self.gate, self.fail_at = gate, fail_at
        self.subscription_reads = 0
        self.entered = threading.Event()  # publish was called (and may wait at the gate)

    def publish(self, results: list[Any]) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT_S)
        if len(self.published) == self.fail_at:
            msg = "the socket broke"
            raise RuntimeError(msg)
        self.threads.add(threading.current_thread().name)
        self.published.extend(results)

    def take_subscriptions(self) -> int:
        self.subscription_reads += 1
        return 0

    def flush_previews(self) -> None:
        pass


def ends(n: int, start: int = 0) -> list[EndResult]:
    return [EndResult(stream="s", session="x", seq=i) for i in range(start, start + n)]


def test_the_outbox_publishes_in_order_on_its_thread_and_actions_follow_their_outputs() -> None:
    pub = FakePublisher()
    box = stages.Outbox(pub, threaded=True)  # type: ignore[arg-type]
    box.start()
    seen_by_action: list[int] = []
    for i in range(50):
        box.put(ends(3, 3 * i))
        box.then(lambda: seen_by_action.append(len(pub.published)))
    assert box.close(TIMEOUT_S) == 0
    assert [r.seq for r in pub.published] == list(range(150))
    # Each action ran after every output put before it had gone out.
    assert seen_by_action == [3 * (i + 1) for i in range(50)]
    assert pub.threads == {"worker-output"}
    assert pub.subscription_reads >= 50  # read before each batch: a probe's answer is fresh


def test_inline_the_outbox_publishes_at_once_on_the_callers_thread() -> None:
    pub = FakePublisher()
    box = stages.Outbox(pub, threaded=False)  # type: ignore[arg-type]
    box.start()
    box.put(ends(2))
    assert [r.seq for r in pub.published] == [0, 1]
    assert pub.threads == {threading.current_thread().name}


def test_a_full_outbox_holds_the_serve_loop_until_the_output_thread_goes_on() -> None:
    gate = threading.Event()
    pub = FakePublisher(gate)
    box = stages.Outbox(pub, threaded=True)  # type: ignore[arg-type]
    box.start()
    done = threading.Event()

    def loop() -> None:
        for i in range(stages.OUTBOX + 3):
            box.put(ends(1, i))
        done.set()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    time.sleep(0.3)
    assert not done.is_set()  # the publisher is stuck: the loop waits, nothing is dropped
    gate.set()
    assert done.wait(TIMEOUT_S)
    assert box.close(TIMEOUT_S) == 0
    assert [r.seq for r in pub.published] == list(range(stages.OUTBOX + 3))


def test_outputs_left_when_the_time_is_up_are_counted_as_frames() -> None:
    """A cut shutdown (close with no time) counts every output frame it did not publish: the
    lists still queued and the one the thread took off the queue after the cut."""
    gate = threading.Event()
    pub = FakePublisher(gate)
    box = stages.Outbox(pub, threaded=True)  # type: ignore[arg-type]
    box.start()
    planes = {"a": np.zeros((2, 1, 2, 2)), "b": np.zeros((2, 1, 2, 2))}
    chunk = ChunkResult("s", "x", seqs=[0, 1], t_ns=[0, 0], discontinuity=False, layers=planes)
    for _ in range(3):
        box.put([chunk])
    assert pub.entered.wait(TIMEOUT_S)  # the first list is in the publisher's hands
    threading.Timer(0.3, gate.set).start()  # it finishes, then takes the second: cut
    assert box.close(0.0) == 8  # 2 lists x 2 frames x 2 layers
    assert len(pub.published) == 1


def test_a_dead_output_thread_stops_the_worker_with_the_reason() -> None:
    box = stages.Outbox(FakePublisher(fail_at=2), threaded=True)  # type: ignore[arg-type]
    box.start()
    with pytest.raises(stages.StageError, match="the socket broke"):  # noqa: PT012
        for i in range(100):
            box.put(ends(1, i))
            time.sleep(0.01)


def frames_socket(zmq_ctx: transport.Context) -> tuple[transport.Socket, transport.Socket]:
    pull = transport.open_socket(
        zmq_ctx, "pull", transport.socket_settings("tcp://127.0.0.1:*", True, 100_000, 0)
    )
    push = transport.open_socket(
        zmq_ctx,
        "push",
        transport.socket_settings(transport.endpoint(pull), False, 100_000, 0),
    )
    return pull, push


def test_the_inbox_reads_on_its_thread_holds_back_and_loses_nothing_at_a_stop(
    zmq_ctx: transport.Context,
) -> None:
    pull, push = frames_socket(zmq_ctx)
    settings = WorkerSettings(live_drop_oldest=False)
    intake = Intake(pull, settings, Stats())
    stop = threading.Event()
    box = stages.Inbox(intake, stop, threaded=True)
    n = 6 * BATCH
    frame = np.zeros((4, 4), np.uint8)
    for seq in range(n):
        transport.send(push, protocol.encode_frame("s", "x" * 32, seq, frame))
    time.sleep(0.3)  # all on the PULL's side: the thread finds full batches
    box.start()
    deadline, held = time.monotonic() + TIMEOUT_S, (stages.INBOX + 1) * BATCH
    while intake.read < held and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # had it gone on reading, it would have by now
    # Nothing taken by the serve loop: the thread read what the queue holds and one batch
    # more, and left the rest on the socket (back-pressure to the senders).
    assert intake.read == held < n
    got: list[int] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < n and time.monotonic() < deadline:
        got += [m.seq for b in box.get(0.5) for m, _ in b[0]]
    assert got == list(range(n))  # in order, each once
    for seq in range(n, n + 3 * BATCH):
        transport.send(push, protocol.encode_frame("s", "x" * 32, seq, frame))
    time.sleep(0.3)
    stop.set()
    left = [m.seq for b in box.close() for m, _ in b[0]]
    assert left == list(range(n, n + len(left)))  # what was read before the stop, kept
    assert intake.read == n + len(left)
