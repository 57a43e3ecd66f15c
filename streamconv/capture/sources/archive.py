"""A recorded session as a source (`streamconv replay`): its frames exactly as the worker
received them, an interval of them, and the warm-up frames before it so that a stateful model
is in the right state when the interval starts. Each frame's original capture time is kept:
`capture_time()` gives the one of the frame yielded last (the replay sends it as `t_ns`).
One segment is read at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamconv.archive.format import Segment, segments
from streamconv.capture.sources.base import BaseSource
from streamconv.errors import SourceError


@dataclass(frozen=True)
class Interval:
    """What to send: seqs `start - warmup .. end` of one session (`start` begins the part
    asked for; the frames before it only bring the state up)."""

    session: str
    first: int  # the first seq sent (the warm-up's first)
    start: int  # the first seq of the interval asked for
    end: int  # the last seq sent

    @property
    def warmup(self) -> int:
        return self.start - self.first


def choose(
    found: list[Segment], session: str | None, from_seq: int | None, to_seq: int | None,
    from_t_ns: int | None, to_t_ns: int | None, warmup: int,
) -> Interval:  # fmt: skip
    """The interval of a stream's segments the options name; SourceError saying what is
    missing otherwise."""
    if not found:
        raise SourceError("the archive holds no segment of this stream")
    sessions = sorted({s.session for s in found}, key=lambda x: min(
        s.first_t_ns for s in found if s.session == x))  # fmt: skip
    if session is not None:
        named = [x for x in sessions if x.startswith(session)]
        if len(named) != 1:
            msg = f"session {session!r} names {len(named)} of the recorded {sessions}"
            raise SourceError(msg)
        chosen = named[0]
    elif from_t_ns is not None:
        holding = [s.session for s in found if s.first_t_ns <= from_t_ns <= s.last_t_ns]
        chosen = holding[0] if holding else sessions[-1]
    else:
        chosen = sessions[-1]  # the latest
    mine = [s for s in found if s.session == chosen]
    lo, hi = min(s.first_seq for s in mine), max(s.last_seq for s in mine)
    start = lo if from_seq is None else from_seq
    if from_t_ns is not None:
        start = max(start, _seq_at(mine, from_t_ns, after=True))
    end = hi if to_seq is None else to_seq
    if to_t_ns is not None:
        end = min(end, _seq_at(mine, to_t_ns, after=False))
    if not lo <= start <= end <= hi:
        msg = f"session {chosen[:8]} holds seqs {lo}..{hi}: nothing in {start}..{end}"
        raise SourceError(msg)
    return Interval(chosen, max(lo, start - warmup), start, end)


def _seq_at(mine: list[Segment], t_ns: int, after: bool) -> int:
    """The first seq at or after `t_ns` (after), or the last at or before it."""
    seqs: list[int] = []
    for seg in mine:
        if (after and seg.last_t_ns < t_ns) or (not after and seg.first_t_ns > t_ns):
            continue
        _, s, t = seg.read()
        seqs += [int(q) for q, x in zip(s, t, strict=True) if (x >= t_ns if after else x <= t_ns)]
    if not seqs:
        raise SourceError("no frame of the session at that time")
    return min(seqs) if after else max(seqs)


class ArchiveSource(BaseSource):
    def __init__(self, root: Path, stream: str, interval: Interval, *,
                 fps: float | None = None) -> None:  # fmt: skip
        super().__init__()
        self.root, self.stream, self.interval = root, stream, interval
        found = [s for s in segments(root, stream) if s.session == interval.session]
        i = interval
        self._segments = [s for s in found if s.last_seq >= i.first and s.first_seq <= i.end]
        recorded = next((s.fps for s in found if s.fps), None)
        self._fps = fps if fps is not None else recorded
        self._length = sum(int(np.count_nonzero((q >= interval.first) & (q <= interval.end)))
                           for q in (s.seqs() for s in self._segments))  # fmt: skip
        self._t_ns: int | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    def _pass_length(self) -> int | None:
        return self._length

    def capture_time(self) -> int | None:
        return self._t_ns

    def _read_pass(self, first: bool) -> Iterator[np.ndarray]:
        last = -1  # a seq kept twice (an archive of an older version) is sent once
        for seg in sorted(self._segments, key=lambda s: s.first_seq):
            frames, seqs, t_ns = seg.read()
            for frame, seq, t in zip(frames, seqs, t_ns, strict=True):
                if self.interval.first <= seq <= self.interval.end and seq > last:
                    last = int(seq)
                    self._t_ns = int(t)
                    yield frame

    def __repr__(self) -> str:
        i = self.interval
        return (f"archive {self.root} stream {self.stream} session {i.session[:8]} "
                f"seqs {i.first}..{i.end}")  # fmt: skip
