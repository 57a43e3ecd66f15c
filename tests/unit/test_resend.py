"""The lossless resume handshake against a fake worker on real sockets: an answer counts only
for the probe round it answers and the worker (boot id) that gives it."""

from __future__ import annotations

import threading

import pytest
import zmq

from streamconv.client.resend import Resender
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import PROBE_STREAM


class FakeWorker:
    """A PULL for probes and an XPUB for answers, like a worker's input and output."""

    def __init__(self, ctx: transport.Context) -> None:
        self.pull = ctx.socket(zmq.PULL)
        self.pull.bind("tcp://127.0.0.1:*")
        self.xpub = ctx.socket(zmq.XPUB)
        self.xpub.bind("tcp://127.0.0.1:*")
        self.input, self.output = transport.endpoint(self.pull), transport.endpoint(self.xpub)

    def wait_subscribed(self) -> None:
        assert self.xpub.poll(10_000), "the resender never subscribed"
        self.xpub.recv_multipart()

    def answer_next(
        self, next_seq: int, checkpointed: int | None, boot: str, every: int | None = None
    ) -> str:
        """Read one probe and answer it; returns the probe's session."""
        assert self.pull.poll(10_000), "no probe arrived"
        head = protocol.decode_input(self.pull.recv_multipart())
        assert head.stream == PROBE_STREAM
        resume = {"next_seq": next_seq, "checkpointed": checkpointed, "ended": False}
        if every is not None:
            resume["checkpoint_every"] = every
        parts = protocol.encode_output_eos(PROBE_STREAM, "conv", head.session, 0,
                                           resume=resume, boot=boot)  # fmt: skip
        self.xpub.send_multipart(parts)
        return head.session


@pytest.fixture
def rig(zmq_ctx: transport.Context) -> tuple[FakeWorker, Resender, transport.Socket]:
    worker = FakeWorker(zmq_ctx)
    resender = Resender(zmq_ctx, worker.output, "cam0", "s" * 32)
    push = zmq_ctx.socket(zmq.PUSH)
    push.connect(worker.input)
    worker.wait_subscribed()
    return worker, resender, push


def keep(resender: Resender, frames: int) -> None:
    for seq in range(frames):
        resender.keep(seq, [b"{}", b"x" * 10])


def test_an_answer_to_a_probe_before_the_reconnect_is_not_the_resume_point(
    rig: tuple[FakeWorker, Resender, transport.Socket],
) -> None:
    """The crash of issue 16: the worker that died answered a probe whose answer still waits
    in the SUB queue; the restarted worker needs seq 16, not the 27 the dead one had."""
    worker, resender, push = rig
    keep(resender, 27)
    resender.ask(push)
    worker.answer_next(27, 10, boot="old")
    assert resender.sub.poll(10_000), "the stale answer never arrived"
    answering = threading.Thread(target=worker.answer_next, args=(16, 10), kwargs={"boot": "new"})
    answering.start()
    point = resender.resume_point(push, threading.Event(), 10.0, want_subscriber=False)
    answering.join(10)
    assert point == 16
    assert resender.boot == "new"
    assert resender.kept[0][0] == 10  # trimmed to the new worker's checkpoint


def test_only_the_worker_that_answered_the_round_trims_the_buffer(
    rig: tuple[FakeWorker, Resender, transport.Socket],
) -> None:
    worker, resender, push = rig
    keep(resender, 40)
    answering = threading.Thread(target=worker.answer_next, args=(40, 5), kwargs={"boot": "new"})
    answering.start()
    assert resender.resume_point(push, threading.Event(), 10.0, want_subscriber=False) == 40
    answering.join(10)
    resender.ask(push)
    worker.answer_next(40, 30, boot="another")  # not the worker this round talks to
    assert resender.sub.poll(10_000)
    resender.tick(push, 40)
    assert resender.kept[0][0] == 5
    resender.ask(push)
    worker.answer_next(40, 30, boot="new")
    assert resender.sub.poll(10_000)
    resender.tick(push, 40)
    assert resender.kept[0][0] == 30


@pytest.mark.parametrize(("every", "checkpointed", "first"), [(0, None, 90), (10, 60, 60)])
def test_the_buffer_keeps_only_what_the_worker_may_ask_for(
    rig: tuple[FakeWorker, Resender, transport.Socket], every: int, checkpointed: int | None,
    first: int,
) -> None:  # fmt: skip
    """A worker without checkpoints can ask only for what it has not taken yet (a restart
    starts the stream afresh): the buffer keeps the frames from its next_seq on; one that
    checkpoints, the frames from its last checkpoint on (issue 17: 2048 frames, ~600 MB at
    640x480, were kept for a worker that could never ask for them)."""
    worker, resender, push = rig
    keep(resender, 100)
    resender.ask(push)
    worker.answer_next(90, checkpointed, boot="w", every=every)
    assert resender.sub.poll(10_000)
    resender.tick(push, 100)
    assert resender.checkpoint_every == every
    assert resender.kept[0][0] == first
    assert len(resender.kept) == 100 - first
