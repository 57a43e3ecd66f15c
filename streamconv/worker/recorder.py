"""Recording inputs (`--record DIR`, [record]): every frame of the recorded streams, as it
arrived, in the archive (archive/format.py), for replays through this or another model.

The serve loop only gathers frames (views on the received messages: no copy) into each
stream's open segment and hands a segment over when it is full (`segment_frames`), old
(`segment_s`, checked every turn), or ends (eos, another session, another frame shape). A
writer thread compresses and writes it, then applies retention: segments older than `ttl_s`,
and the oldest beyond `max_stream_bytes` per stream or `max_bytes` in all, are removed
(counted). Nothing here ever stops the worker: a full disk or a writer that falls behind is
logged and counted (record_errors, record_dropped), never raised.
"""

from __future__ import annotations

import fnmatch
import logging
import queue
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamconv.archive.format import folder_name, segments, write_segment
from streamconv.config.roles import RecordSettings
from streamconv.wire.protocol import InputMessage
from streamconv.worker.stats import Stats

log = logging.getLogger(__name__)

RANGES = 64  # seq ranges remembered per session (resends come soon after a restart)
PENDING_BYTES = 256 * 2**20  # frames waiting for the writer; more are dropped (counted)


@dataclass
class Open:
    """A stream's segment being gathered."""

    session: str
    started: float
    fps: float | None
    frames: list[np.ndarray] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    t_ns: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Closed:
    stream: str
    session: str
    frames: list[np.ndarray]
    seqs: list[int]
    t_ns: list[int]
    fps: float | None


class Recorder:
    def __init__(self, settings: RecordSettings, stats: Stats) -> None:
        assert settings.dir is not None
        self.settings, self.stats, self.root = settings, stats, settings.dir
        self.root.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, Open] = {}
        # Per session, the seq ranges the archive holds: a frame sent again (a resend after a
        # restart) is kept once, and one that arrives before an earlier resend still is kept.
        self._have: dict[tuple[str, str], list[list[int]]] = {}
        self._queue: queue.Queue[Closed | None] = queue.Queue()
        self._lock = threading.Lock()  # the pending bytes and the kept list: both threads
        self._pending = 0
        # (path, stream, bytes, written at), oldest first: what retention removes from.
        found = segments(self.root)
        self._kept: deque[tuple[Path, str, int, float]] = deque(sorted(
            ((s.path, s.stream, s.nbytes, s.path.stat().st_mtime) for s in found),
            key=lambda entry: entry[3]))  # fmt: skip
        for s in found:  # frames resent after a restart are in the archive already
            self._have.setdefault((s.stream, s.session), []).append([s.first_seq, s.last_seq])
        self._writer = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._writer.start()
        log.info("recording %s into %s (segments of %d frames or %.1f s; %d kept)",
                 ", ".join(settings.streams), self.root, settings.segment_frames,
                 settings.segment_s, len(self._kept))  # fmt: skip

    def wants(self, stream: str) -> bool:
        return any(fnmatch.fnmatchcase(stream, p) for p in self.settings.streams)

    def add(self, msg: InputMessage, now: float) -> None:
        """A frame the engine took (Engine.on_take) is kept; an eos closes. A segment
        holds rising seqs of one session and one frame shape; anything else starts another."""
        if not self.wants(msg.stream):
            return
        if msg.kind != "frame" or msg.frame is None:
            if msg.kind == "eos":
                self._close(msg.stream)
            return
        key = (msg.stream, msg.session)
        ranges = self._have.setdefault(key, [])
        if any(first <= msg.seq <= last for first, last in ranges):
            return  # sent again after a resume: the archive has it
        seg = self._open.get(msg.stream)
        if seg is not None and (seg.session != msg.session or msg.seq <= seg.seqs[-1] or
                                seg.frames[0].shape != msg.frame.shape or
                                seg.frames[0].dtype != msg.frame.dtype):  # fmt: skip
            self._close(msg.stream)
            seg = None
        if seg is None:
            seg = self._open[msg.stream] = Open(msg.session, now, msg.fps)
        seg.frames.append(msg.frame)
        seg.seqs.append(msg.seq)
        seg.t_ns.append(msg.t_ns)
        if ranges and ranges[-1][1] == msg.seq - 1:
            ranges[-1][1] = msg.seq
        else:
            ranges.append([msg.seq, msg.seq])
            del ranges[:-RANGES]  # a live stream's every gap opens one: the oldest go
        if len(seg.frames) >= self.settings.segment_frames:
            self._close(msg.stream)

    def tick(self, now: float) -> None:
        """Close the segments open longer than segment_s (an idle stream's too)."""
        for stream in [s for s, seg in self._open.items()
                       if now - seg.started >= self.settings.segment_s]:  # fmt: skip
            self._close(stream)

    def close(self, timeout_s: float) -> bool:
        """Hand every open segment over and let the writer finish (False: it did not)."""
        for stream in list(self._open):
            self._close(stream)
        self._queue.put(None)
        self._writer.join(timeout_s)
        return not self._writer.is_alive()

    def status(self) -> dict[str, Any]:
        """For /status: what the archive holds now."""
        with self._lock:
            kept = list(self._kept)
        per_stream: dict[str, int] = {}
        for _, stream, nbytes, _ in kept:
            per_stream[stream] = per_stream.get(stream, 0) + nbytes
        return {"dir": str(self.root), "segments": len(kept), "bytes": sum(per_stream.values()),
                "streams": per_stream}  # fmt: skip

    def _close(self, stream: str) -> None:
        seg = self._open.pop(stream, None)
        if seg is None or not seg.frames:
            return
        nbytes = sum(f.nbytes for f in seg.frames)
        with self._lock:  # one segment is always taken, however large its frames
            behind = self._pending > 0 and self._pending + nbytes > PENDING_BYTES
            if not behind:
                self._pending += nbytes
        if behind:  # the disk is slower than the streams: never hold the loop up
            self.stats.count("record_dropped", len(seg.frames))
            log.warning("recorder: the writer is behind; %d frames of stream %s not recorded "
                        "(counted in record_dropped)", len(seg.frames), stream)  # fmt: skip
            return
        self._queue.put(Closed(stream, seg.session, seg.frames, seg.seqs, seg.t_ns, seg.fps))

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        while (closed := self._queue.get()) is not None:
            folder = self.root / folder_name(closed.stream) / folder_name(closed.session)
            with self._lock:
                self._pending -= sum(f.nbytes for f in closed.frames)
            try:
                path, nbytes = write_segment(
                    folder, closed.stream, closed.session, np.stack(closed.frames),
                    np.asarray(closed.seqs), np.asarray(closed.t_ns), closed.fps,
                    self.settings.level, self.settings.lossy_quality,
                )  # fmt: skip
            except Exception as e:  # a full disk, or anything else: counted, never the end
                self.stats.count("record_errors")
                self.stats.count("record_dropped", len(closed.frames))
                log.error("recorder: %d frames of stream %s not written: %s",
                          len(closed.frames), closed.stream, e)  # fmt: skip
                continue
            with self._lock:
                self._kept.append((path, closed.stream, nbytes, time.time()))
            self.stats.count("record_frames", len(closed.frames))
            self.stats.count("record_bytes", nbytes)
            self.stats.count("record_segments")
            self._retain()

    def _retain(self) -> None:
        """Remove the oldest segments past the time and size limits (counted)."""
        s, now = self.settings, time.time()
        with self._lock:  # choose under the lock; delete outside it (the loop takes it too)
            self._kept, gone = self._drop_old(s, now)
        for path, n in gone:
            shutil.rmtree(path, ignore_errors=True)
            self.stats.count("record_removed")
            self.stats.count("record_removed_bytes", n)

    def _drop_old(
        self, s: RecordSettings, now: float
    ) -> tuple[deque[tuple[Path, str, int, float]], list[tuple[Path, int]]]:
        total = sum(n for _, _, n, _ in self._kept)
        per_stream: dict[str, int] = {}
        for _, stream, n, _ in self._kept:
            per_stream[stream] = per_stream.get(stream, 0) + n
        keep: deque[tuple[Path, str, int, float]] = deque()
        gone: list[tuple[Path, int]] = []
        for entry in self._kept:  # oldest first
            path, stream, n, written = entry
            expired = bool(s.ttl_s) and now - written > s.ttl_s
            over_stream = bool(s.max_stream_bytes) and per_stream[stream] > s.max_stream_bytes
            over_all = bool(s.max_bytes) and total > s.max_bytes
            if expired or over_stream or over_all:
                gone.append((path, n))
                total -= n
                per_stream[stream] -= n
            else:
                keep.append(entry)
        return keep, gone
