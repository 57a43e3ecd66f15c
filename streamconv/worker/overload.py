"""Live streams under overload: the newest frames win.

When a live stream arrives faster than the worker computes, frames wait in the sockets and
latency grows without bound. The serve loop takes every waiting message at once, and of a live
stream's frames in hand keeps only the newest `keep` (one chunk): the older ones are dropped
and counted (`live_dropped`). The stream's state goes on across the gap, as if the dropped
frames had never been sent (no reset, no discontinuity): a temporal filter then sees a jump in
time, which is what a live viewer wants. Lossless streams are never thinned.
"""

from __future__ import annotations

from collections import Counter

from streamconv.wire.protocol import InputMessage


def thin_live(messages: list[InputMessage], keep: int) -> tuple[list[InputMessage], Counter[str]]:
    """`messages` in order without all but the newest `keep` frames of each live stream's
    session; and how many were dropped per stream."""
    counts: Counter[tuple[str, str]] = Counter()
    for m in messages:
        if m.live and m.kind == "frame":
            counts[(m.stream, m.session)] += 1
    over = {key: n - keep for key, n in counts.items() if n > keep}
    if not over:
        return messages, Counter()
    kept: list[InputMessage] = []
    gone: Counter[tuple[str, str]] = Counter()
    for m in messages:
        key = (m.stream, m.session)
        if m.live and m.kind == "frame" and gone[key] < over.get(key, 0):
            gone[key] += 1
            continue
        kept.append(m)
    dropped: Counter[str] = Counter()
    for (stream, _), n in gone.items():
        dropped[stream] += n
    return kept, dropped
