"""What a subscriber missed, counted in outputs, per stream, layer and session.

A session's frames are numbered 0, 1, 2, ... by its sender, and its eos carries how many were
sent, so a subscriber can tell every output it never got: before the first it received (it
joined late, or the worker never ran them), between two it received (a gap: a slow subscriber
past its high-water mark, a worker restart, frames lost on the way in), and after the last
(missed before the eos). A session whose eos never came before the subscriber stopped is
reported as not ended: its end is unknown. The worker marks where its state was reset
(`discontinuity`): counted too, as it says the outputs around it are not one continuous run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

KEPT = 1024  # (stream, layer, session) records kept: the oldest finished ones go first


@dataclass
class Tally:
    """One layer of one session of one stream, as this subscriber saw it."""

    received: int = 0
    first: int | None = None  # the first seq received
    last: int = -1  # the highest seq received
    start: int = 0  # outputs before the first received
    middle: int = 0  # outputs missing between two received
    end: int = 0  # outputs missing after the last received, known at eos
    discontinuities: int = 0
    sent: int | None = None  # the eos' seq: how many frames the sender numbered

    @property
    def missed(self) -> int:
        return self.start + self.middle + self.end

    @property
    def ended(self) -> bool:
        return self.sent is not None


class Losses:
    """Fed every output and eos header a subscriber passes on (replays already skipped)."""

    def __init__(self) -> None:
        self.tallies: OrderedDict[tuple[str, str, str], Tally] = OrderedDict()

    def _tally(self, header: dict[str, Any]) -> Tally:
        key = (header["stream"], header["layer"], header["session"])
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = Tally()
            while len(self.tallies) > KEPT:
                self.tallies.popitem(last=False)
        return tally

    def output(self, header: dict[str, Any]) -> None:
        t, seq = self._tally(header), header["seq"]
        if header.get("discontinuity") and t.received:
            t.discontinuities += 1
        if t.first is None:
            t.first, t.start = seq, seq
        elif seq > t.last + 1:
            t.middle += seq - t.last - 1
        t.received += 1
        t.last = max(t.last, seq)

    def eos(self, header: dict[str, Any]) -> None:
        t = self._tally(header)
        if t.ended:
            return  # an idle eos and the sender's own: the first one says how many were sent
        t.sent = header["seq"]
        if t.first is None:
            t.start = t.sent  # not one output of the session arrived
        else:
            t.end = max(0, t.sent - t.last - 1)

    # -- readers ----------------------------------------------------------------------------
    def missed(self, stream: str | None = None) -> int:
        """Outputs missed in all (or `stream`'s) sessions and layers."""
        return sum(t.missed for (s, _, _), t in self.tallies.items() if stream in (None, s))

    def not_ended(self, stream: str | None = None) -> list[tuple[str, str, str]]:
        """(stream, layer, session) whose eos never came."""
        return [k for k, t in self.tallies.items() if not t.ended and stream in (None, k[0])]

    def report(self) -> list[str]:
        """One line per layer and session that missed outputs, was reset or did not end."""
        lines = []
        for (stream, layer, session), t in self.tallies.items():
            if not (t.missed or t.discontinuities or not t.ended):
                continue
            total = "?" if t.sent is None else str(t.sent)
            text = (
                f"{stream}/{layer} session {session[:8]}: received {t.received} of {total}, "
                f"missed {t.missed} (at the start {t.start}, in gaps {t.middle}, "
                f"at the end {t.end})"
            )
            if t.discontinuities:
                text += f", {t.discontinuities} state resets"
            if not t.ended:
                text += ", no eos: the stream did not end while subscribed (its end is unknown)"
            lines.append(text)
        return lines
