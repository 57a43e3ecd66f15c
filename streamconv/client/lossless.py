"""The lossless side of a Sender: what it asks the worker, and what it does with the answers.

Held by a lossless Sender whose worker's output is known (docs/PROTOCOL.md, "Resuming after a
worker restart" and "Lossless subscribers"). Through its Resender (the kept frames and the
numbered probes) it
- checks at the start that the worker's answers arrive at all (else resume is off, said now);
- after a reconnect, asks where the stream goes on and sends the missing frames again;
- holds the next frame while the worker's credit does not cover it (a slow lossless
  subscriber);
- raises RefusedError once the worker says it dropped frames of the session;
- at the end, waits until the worker says it ran the whole session and its eos.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from streamconv.client.resend import Resender
from streamconv.errors import RefusedError
from streamconv.wire import transport

log = logging.getLogger(__name__)

POLL_MS = 100  # the longest single wait: a stop request is seen within this
CREDIT_POLL_MS = 10  # waiting for credit: how often to ask the worker
PATH_CHECK_S = 3.0  # how long the first probe may take to be answered
STALL_WARN_S = 5.0  # waiting this long for credit is logged once


class Lossless:
    def __init__(
        self, resender: Resender, push: transport.Socket, stream: str, stop: threading.Event
    ) -> None:
        self.resender, self.push, self.stream, self.stop = resender, push, stream, stop
        self.verdict: dict[str, int] = {}  # the worker's last word on dropped frames
        self.caught_up = False  # the last resume found the worker holding every frame sent

    def path_works(self, endpoint: str) -> bool:
        """Whether the worker's answers reach this sender. If not, found out now, not at the
        crash: said in one line (the frames then go without resume; a restarted worker goes
        on past a gap, counted)."""
        deadline = time.monotonic() + PATH_CHECK_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.resender.ask(self.push)
            if self.resender.answers(POLL_MS):
                return True
        if self.stop.is_set():
            return True
        log.warning("no answer on %s from the worker at %s within %g s: resume after a worker "
                    "crash is OFF for stream %s; give the worker's output endpoint (--output, "
                    "or [capture] output) to turn it on", self.resender.output, endpoint,
                    PATH_CHECK_S, self.stream)  # fmt: skip
        return False

    def sent_one(self, seq: int, parts: list[Any], endpoint: str) -> None:
        """Frame `seq` was queued: keep it, ask now and then, and heed the verdict."""
        self.resender.keep(seq, parts)
        self.resender.tick(self.push, seq + 1)
        self.check_verdict(endpoint)

    def check_verdict(self, endpoint: str) -> None:
        """RefusedError once the worker says it dropped frames of this session: every later
        frame would be dropped too (another key's stream id, a quota, too large), and a
        lossless stream that lost frames is not what its user asked for."""
        if self.resender.verdict:
            self.verdict = dict(self.resender.verdict)
            raise RefusedError(endpoint, self.stream, self.verdict)

    def await_credit(self, sent: int, peers: Callable[[], int]) -> bool:
        """Wait while the worker's credit does not cover frame `sent` (a lossless subscriber
        fell behind); False if stopped first. A worker that goes away (`peers()` 0) ends the
        wait: the send then waits for it as usual."""
        since, warned = time.monotonic(), False
        resender = self.resender
        while resender.credit is not None and sent >= resender.credit:
            if self.stop.is_set():
                return False
            if peers() == 0:
                return True
            resender.ask(self.push)
            resender.answers(CREDIT_POLL_MS)
            if not warned and time.monotonic() - since > STALL_WARN_S:
                warned = True
                log.warning("stream %s waits for a lossless subscriber that is behind (the "
                            "worker lets it send up to seq %d)", self.stream,
                            resender.credit)  # fmt: skip
        return True

    def resume(self, sent: int, wait_s: float, want_subscriber: bool, endpoint: str) -> bool:
        """The worker came back (maybe restarted): send again what it has not run. False if
        it did not say where the stream goes on (the caller may ask again later)."""
        self.caught_up = False
        point = self.resender.resume_point(self.push, self.stop, wait_s or 30.0,
                                           want_subscriber)  # fmt: skip
        if point is None:
            log.warning("the worker at %s did not say where stream %s goes on; going on "
                        "(it may see a gap)", endpoint, self.stream)  # fmt: skip
            return False
        self.caught_up = point >= sent
        if self.caught_up:
            log.info("the worker is back and has every frame of stream %s", self.stream)
            return True
        again = self.resender.since(point)
        if again is None:
            log.warning("the worker asks for stream %s from seq %d, which is no longer kept: "
                        "it will see a gap", self.stream, point)  # fmt: skip
            return True
        for parts in again:
            while not self.stop.is_set() and not (
                transport.wait_writable(self.push, POLL_MS)
                and transport.send(self.push, parts, block=False)
            ):
                pass
        self.resender.resent += len(again)
        log.info("the worker went on from seq %d of stream %s: sent %d frames again",
                 point, self.stream, len(again))  # fmt: skip
        return True

    def await_end(
        self, sent: int, wait_s: float, reconnected: Callable[[], bool],
        again: Callable[[], object], endpoint: str,
    ) -> bool | None:  # fmt: skip
        """Wait (up to `wait_s`, 0: no limit) until the worker says it ran the whole session,
        its eos included. Until then the frames it may lack are in this process only: a
        worker that dies with them in its queue, once this sender has gone, loses them. After
        a reconnect (`reconnected()`), `again()` resends them and the eos. None: the worker's
        answers cannot say (an older worker); False: no confirmation, or frames dropped."""
        deadline = time.monotonic() + (wait_s or math.inf)
        while not self.stop.is_set() and time.monotonic() < deadline:
            if reconnected():
                again()
            self.resender.ask(self.push)
            for answer in self.resender.answers(POLL_MS):
                if "ended" not in answer:
                    return None
                if answer.get("dropped"):
                    self.verdict = dict(answer["dropped"])
                    return False
                if answer["ended"] and answer["next_seq"] >= sent:
                    return True
        if not self.stop.is_set():
            log.warning(
                "the worker at %s did not confirm the end of stream %s within %g s: "
                "frames it had not run may be lost",
                endpoint,
                self.stream,
                wait_s,
            )
        return False

    def close(self) -> None:
        self.resender.close()
