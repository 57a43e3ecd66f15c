"""Credit for lossless streams: how far a sender may run ahead of its slowest lossless
subscriber.

A lossless subscriber acknowledges, per stream, the next seq it needs (every output before it
consumed), by probes on the worker's input (docs/PROTOCOL.md, "Lossless subscribers"). A
stream's credit is the smallest such seq over its lossless subscribers plus WINDOW: a lossless
sender sends only frames below it, so a subscriber that falls behind holds its stream's sender
back instead of losing outputs past its queue. A subscriber that stops acknowledging for
EXPIRE_S is no longer waited for (logged once). Torch-free, no sockets: the engine owns it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

WINDOW = 32  # frames a sender may run ahead of its slowest lossless subscriber
EXPIRE_S = 10.0  # a lossless subscriber silent this long is no longer waited for


@dataclass
class Ack:
    session: str | None  # the stream's session it refers to (None: whatever comes first)
    next_seq: int
    at: float


class Credits:
    def __init__(self, window: int = WINDOW, expire_s: float = EXPIRE_S) -> None:
        self.window, self.expire_s = window, expire_s
        self.acks: dict[str, dict[str, Ack]] = {}  # stream -> subscriber id -> its last ack
        self.expired = 0  # subscribers no longer waited for

    def ack(self, stream: str, subscriber: str, session: str | None, next_seq: int,
            now: float) -> None:  # fmt: skip
        self.acks.setdefault(stream, {})[subscriber] = Ack(session, next_seq, now)

    def credit(self, stream: str, session: str, now: float, at: int = 0) -> int | None:
        """The first seq of `session` a lossless sender may not send yet; None: no limit.
        `at`: where the stream is now (its next seq here)."""
        subs = self.acks.get(stream)
        if not subs:
            return None
        for sub, a in list(subs.items()):
            if now - a.at > self.expire_s:
                del subs[sub]
                self.expired += 1
                log.warning("a lossless subscriber of stream %s sent no acknowledgement for "
                            "%.0f s: no longer waited for", stream, self.expire_s)  # fmt: skip
        if not subs:
            del self.acks[stream]
            return None
        # A subscriber that has seen nothing of this session yet (it joined mid-stream, or acks
        # an earlier session) needs it from where it is now: counting it as 0 would hold the
        # sender back for good, as no output it could ack would come.
        needed = min(a.next_seq if a.session == session else at for a in subs.values())
        return needed + self.window

    def subscribers(self) -> int:
        return sum(len(s) for s in self.acks.values())
