"""Lossless resume: the frames a restarted worker may ask for again, and asking it where to go on.

A lossless Sender keeps every frame it queued since the worker's last checkpoint of its stream
(bounded: `max_frames` and `max_bytes`, oldest dropped first). It learns where that checkpoint
is, and after a reconnect where the worker goes on, from probes (docs/PROTOCOL.md): an eos on
stream `_probe` that `watch`es this stream and asks to `resume` this session, answered on the
worker's output with `next_seq` (the seq it needs next) and `checkpointed` (its last
checkpoint's next seq). The frames from `next_seq` on are then sent again, marked `replay`.

An answer counts only for the question it answers and the worker that gives it: probes are
numbered (their session is `PREFIX.N`), a reconnect starts a new round that takes no answer to
a probe sent before it (answers of a worker that has since died wait in the SUB queue), and
the round's first answer names the worker (its `boot` id) whose later answers may trim the
buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from streamconv.errors import ProtocolError
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import PROBE_STREAM

log = logging.getLogger(__name__)

ASK_EVERY_S = 0.25  # how often a running sender asks for the last checkpoint and its credit
CREDIT_NEAR = 16  # frames before the credit runs out: ask for more at once
CREDIT_ASK_S = 0.005  # ...at most this often
RETRY_MS = 100  # how often it asks while waiting to resume
NEVER_ANSWERED_S = 2.0  # the wait to resume when the worker never answered a probe


class Resender:
    def __init__(
        self,
        ctx: transport.Context,
        output: str,
        stream: str,
        session: str,
        *,
        max_frames: int = 2048,
        max_bytes: int = 512 * 2**20,
        **keys: Any,
    ) -> None:
        self.stream, self.session = stream, session
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.output = output
        self.sub = transport.sub_socket(ctx, output, [protocol.stream_topic(PROBE_STREAM)],
                                        **keys)  # fmt: skip
        self.kept: deque[tuple[int, list[Any]]] = deque()
        self.nbytes = 0
        self.dropped = 0  # frames pushed out of the buffer by its bounds, before a checkpoint
        self.resent = 0
        self._prefix = protocol.new_session()[:16] + "."
        self._asked = 0
        self._round = 1  # probes numbered from here on are of the current round
        self.boot: str | None = None  # the worker that answered the current round
        self._last_ask = 0.0
        # Lossless subscribers: the first seq the worker lets this sender send (None: any).
        self.credit: int | None = None
        # The worker's verdict: frames of this session it dropped, by reason.
        self.verdict: dict[str, int] = {}
        self.answered = False  # the worker has answered a probe (it can resume)
        # The worker's checkpoint interval in frames (0: it keeps none; None: not said yet).
        self.checkpoint_every: int | None = None

    # -- the buffer -----------------------------------------------------------------------
    def keep(self, seq: int, parts: list[Any]) -> None:
        self.kept.append((seq, parts))
        self.nbytes += _size(parts)
        while self.kept and (len(self.kept) > self.max_frames or self.nbytes > self.max_bytes):
            self._pop()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("resend buffer full (%d frames, %d MB): frames before the worker's "
                            "next checkpoint can no longer be sent again after a restart",
                            self.max_frames, self.max_bytes // 2**20)  # fmt: skip

    def _pop(self) -> None:
        _, parts = self.kept.popleft()
        self.nbytes -= _size(parts)

    def trim(self, upto: int) -> None:
        """Forget frames before `upto`: the worker's checkpoint has them."""
        while self.kept and self.kept[0][0] < upto:
            self._pop()

    def _trim_to(self, answer: dict[str, Any]) -> None:
        """Forget what the worker can no longer ask for: frames before its last checkpoint,
        or, when it keeps no checkpoints, every frame it has taken (a restart starts the
        stream afresh; after a lost connection it goes on from its `next_seq`). So the buffer
        holds only what is in flight, or since the last checkpoint, however fast it sends."""
        if answer.get("checkpointed") is not None:
            self.trim(answer["checkpointed"])
        elif answer.get("checkpoint_every") == 0 and not answer.get("ended"):
            self.trim(answer["next_seq"])

    def since(self, seq: int) -> list[list[Any]] | None:
        """The kept frames from `seq` on, marked as replays; None if `seq` was not kept."""
        if not self.kept or self.kept[0][0] > seq:
            return None
        out = []
        for s, parts in self.kept:
            if s >= seq:
                out.append(protocol.as_replay(parts))
        return out

    # -- asking the worker ----------------------------------------------------------------
    def ask(self, push: transport.Socket) -> None:
        self._asked += 1
        probe = protocol.encode_eos(PROBE_STREAM, f"{self._prefix}{self._asked}", 0,
                                    watch=self.stream, resume=self.session)  # fmt: skip
        transport.send(push, probe, block=False)
        self._last_ask = time.monotonic()

    def answers(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        """The answers that arrived (waiting up to `timeout_ms`) to this round's probes, from
        the worker that answered the round first."""
        out = []
        frames = transport.recv(self.sub, timeout_ms)
        while frames is not None:
            header = self._answer(frames)
            if header is not None and (self.boot is None or header.get("boot") == self.boot):
                self.boot = header.get("boot")
                out.append(header)
                self.answered = True
                self.credit = header.get("credit")
                if "checkpoint_every" in header:
                    self.checkpoint_every = header["checkpoint_every"] or 0
                self.verdict = header.get("dropped") or {}
            frames = transport.recv_nowait(self.sub)
        return out

    def _answer(self, frames: list[Any]) -> dict[str, Any] | None:
        """The header if it answers a probe of this round with a resume point."""
        try:
            header, _ = protocol.decode_output([f.buffer for f in frames])
        except ProtocolError:
            return None
        session = header["session"]
        if not session.startswith(self._prefix) or "next_seq" not in header:
            return None
        number = session[len(self._prefix) :]
        return header if number.isdigit() and int(number) >= self._round else None

    def tick(self, push: transport.Socket, sent: int) -> None:
        """While sending (`sent` frames so far): now and then ask for the last checkpoint (and
        trim to it) and for the credit; often when the credit is near."""
        for answer in self.answers():
            self._trim_to(answer)
        near = self.credit is not None and self.credit - sent <= CREDIT_NEAR
        if time.monotonic() - self._last_ask >= (CREDIT_ASK_S if near else ASK_EVERY_S):
            self.ask(push)

    def resume_point(
        self, push: transport.Socket, stop: threading.Event, timeout_s: float,
        want_subscriber: bool,
    ) -> int | None:  # fmt: skip
        """After a reconnect: the seq the worker needs next (with a subscriber, if wanted);
        None if it did not say within `timeout_s` (an older worker, or no output reachable),
        or within NEVER_ANSWERED_S if it never answered a probe so far. Only answers to the
        probes asked from now on count: the worker may have restarted since the last ones."""
        limit = timeout_s if self.answered else min(timeout_s, NEVER_ANSWERED_S)
        deadline = time.monotonic() + limit
        self._round, self.boot = self._asked + 1, None
        while not stop.is_set() and time.monotonic() < deadline:
            self.ask(push)
            for answer in self.answers(RETRY_MS):
                if want_subscriber and not answer.get("subscribed"):
                    self.boot = None  # ask again; any worker's next answer may do
                    continue
                self._trim_to(answer)
                return int(answer["next_seq"])
        return None

    def retarget(self, output: str) -> None:
        """Ask another worker (the stream's new owner) from now on."""
        transport.retarget(self.sub, self.output, output)
        self.output = output

    def close(self) -> None:
        transport.close(self.sub, 0)


def _size(parts: list[Any]) -> int:
    return sum(p.nbytes if hasattr(p, "nbytes") else len(p) for p in parts)
