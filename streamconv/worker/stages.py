"""The worker's pipeline around the serve loop: the input socket read and decoded on one
thread (Inbox), the model's passes on the serve loop's, outputs encoded and published on a
third (Outbox). The forward pass and ZeroMQ release the GIL, so the three overlap.

Each socket has one owner thread: the PULL is the Inbox's, the XPUB the Outbox's. The
hand-offs are small bounded queues, so back-pressure works as with one thread: a full outbox
holds the serve loop, the inbox then fills, its thread stops reading, and the senders'
sockets fill (a lossless sender waits; a live one drops at its end and counts it). Order per
stream holds because every stage is one thread and every queue is FIFO. What may happen only
once outputs are out (a checkpoint handed to its writer, an ended stream's file removed, the
weights' version in the headers) travels through the outbox behind those outputs: a
checkpoint never covers an output that was not handed to the socket.

`[worker] pipeline = false` runs both inline on the serve loop's thread (one stage after the
other, as before), for comparison side by side and for debugging.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from streamconv.errors import StreamconvError
from streamconv.wire import transport
from streamconv.worker.intake import Intake, Taken
from streamconv.worker.publisher import Publisher
from streamconv.worker.results import ChunkResult, Failed, Result

log = logging.getLogger(__name__)

POLL_S = 0.05  # how quickly a stage thread notices a stop
INBOX = 2  # batches read ahead of the serve loop (each a socket's worth, up to intake.BATCH)
OUTBOX = 4  # result lists waiting to be published
Batch = tuple[list[Taken], list[Failed]]
Action = Callable[[], None]
_END = object()


class StageError(StreamconvError):
    """A stage thread died: the worker stops instead of waiting on it for ever."""


class Inbox:
    """Messages read and decoded off the input socket (on its own thread when threaded)."""

    def __init__(self, intake: Intake, stop: threading.Event, threaded: bool) -> None:
        self.intake, self.stop = intake, stop
        self._queue: queue.Queue[Batch] | None = queue.Queue(INBOX) if threaded else None
        self._left: list[Batch] = []  # read as the stop came, with the queue full
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        if self._queue is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="worker-input", daemon=True)
            self._thread.start()

    def get(self, timeout_s: float) -> list[Batch]:
        """What was read, waiting up to `timeout_s` for the first of it."""
        if self._queue is None:
            if not transport.wait_readable([self.intake.pull], int(timeout_s * 1000)):
                return []
            return [self.intake.take(self.stop)]
        if self.error is not None:
            msg = f"the input thread failed: {self.error!r}"
            raise StageError(msg) from self.error
        try:
            got = [self._queue.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        return got + self._drain()

    def close(self) -> list[Batch]:
        """Stop reading (the caller set `stop`); what was read and not yet taken. It is in
        hand: the caller runs it as it runs the chunks in hand."""
        if self._thread is not None:
            self._thread.join(POLL_S * 20)
            if self._thread.is_alive():  # pragma: no cover - a recv never blocks
                log.warning("the input thread did not stop")
        return self._drain() + self._left

    def _drain(self) -> list[Batch]:
        out: list[Batch] = []
        while self._queue is not None:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def _run(self) -> None:
        assert self._queue is not None
        try:
            while not self.stop.is_set():
                if not transport.wait_readable([self.intake.pull], int(POLL_S * 1000)):
                    continue
                batch = self.intake.take(self.stop)
                if batch[0] or batch[1]:
                    self._hand(batch)
        except BaseException as e:  # the serve loop raises it
            self.error = e
            log.exception("the input thread failed")

    def _hand(self, batch: Batch) -> None:
        assert self._queue is not None
        while True:
            try:
                self._queue.put(batch, timeout=POLL_S)
                return
            except queue.Full:
                if self.stop.is_set():
                    self._left.append(batch)
                    return


class Outbox:
    """Results published in order, and the actions that must follow them (on its own thread
    when threaded; the thread also reads subscriptions and sends the previews due)."""

    def __init__(self, publisher: Publisher, threaded: bool) -> None:
        self.publisher = publisher
        self._queue: queue.Queue[Any] | None = queue.Queue(OUTBOX) if threaded else None
        self._thread: threading.Thread | None = None
        self._cut = False  # the shutdown ran out of time: stop after the item in hand
        self._unsent: Any = None  # what the thread took off the queue after the cut
        self.error: BaseException | None = None

    def start(self) -> None:
        if self._queue is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="worker-output", daemon=True)
            self._thread.start()

    def put(self, results: list[Result], then: tuple[Action, ...] = ()) -> None:
        """Publish `results`, then run `then`; waits while the outbox is full."""
        if self._queue is None or self._thread is None:
            self._publish(results, then)
            return
        while True:
            if self.error is not None or not self._thread.is_alive():
                msg = f"the output thread failed: {self.error!r}"
                raise StageError(msg) from self.error
            try:
                self._queue.put((results, then), timeout=POLL_S)
                return
            except queue.Full:
                continue

    def then(self, action: Action) -> None:
        """Run `action` once every result put before it is published."""
        self.put([], (action,))

    def tick(self) -> None:
        """Inline: subscriptions and previews due (the thread does this itself); threaded:
        a dead output thread stops the worker, even while nothing is published."""
        if self._thread is not None and (self.error is not None or not self._thread.is_alive()):
            msg = f"the output thread failed: {self.error!r}"
            raise StageError(msg) from self.error
        if self._thread is None:
            self.publisher.take_subscriptions()
            self.publisher.flush_previews()

    def close(self, timeout_s: float) -> int:
        """Publish what waits (within `timeout_s`) and stop the thread; the output frames
        left unpublished (0 when all went out)."""
        if self._thread is None or self._queue is None:
            return 0
        thread, self._thread = self._thread, None
        with contextlib.suppress(queue.Full):  # the join below then gives up as well
            self._queue.put(_END, timeout=timeout_s)
        thread.join(timeout_s)
        if thread.is_alive():
            self._cut = True
            thread.join(POLL_S * 20)
        left, items = 0, [self._unsent] if self._unsent is not None else []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is not _END:
                left += sum(len(r.seqs) * len(r.layers) for r in item[0]
                            if isinstance(r, ChunkResult))  # fmt: skip
        return left

    def _publish(self, results: list[Result], then: tuple[Action, ...]) -> None:
        if results:
            self.publisher.take_subscriptions()  # a probe's answer says who is subscribed now
            self.publisher.publish(results)
        for action in then:
            action()

    def _run(self) -> None:
        assert self._queue is not None
        pub = self.publisher
        try:
            while True:
                try:
                    item = self._queue.get(timeout=POLL_S)
                except queue.Empty:
                    item = None
                if item is _END:
                    return
                if self._cut:  # taken off the queue but not sent: close() counts it
                    self._unsent = item
                    return
                pub.take_subscriptions()
                if item is not None:
                    self._publish(*item)
                pub.flush_previews()
        except BaseException as e:  # the serve loop raises it at its next put
            self.error = e
            log.exception("the output thread failed")
