"""When to checkpoint which stream: every `every` frames run (and every `interval_s`), at
shutdown, and removal when a stream ends. The writing itself is the Writer thread's.

The serve loop calls `after(results)` with what it delivered and `tick(now)` each turn; the
results of the writer (bytes, errors: a full disk is logged, counted, and the worker goes on)
come back through `tick`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

from streamconv.wire.protocol import PROBE_STREAM
from streamconv.worker.checkpoints import Writer
from streamconv.worker.engine import Engine
from streamconv.worker.results import ChunkResult, EndResult, Result
from streamconv.worker.stats import Stats

log = logging.getLogger(__name__)

ERROR_LINES = 5  # write errors logged in full; later ones are only counted


class Keeper:
    def __init__(
        self, engine: Engine, writer: Writer, stats: Stats, every: int, interval_s: float
    ) -> None:
        self.engine, self.writer, self.stats = engine, writer, stats
        self.every, self.interval_s = every, interval_s
        self._since: Counter[str] = Counter()  # frames run since the last checkpoint
        self._when: dict[str, float] = {}  # when a stream was last checkpointed
        # Hands the writer a snapshot (or a removal) once every output delivered before it
        # is published (the pipelined worker's outbox); at once by default.
        self.defer: Callable[[Callable[[], None]], None] = lambda action: action()

    def after(self, results: list[Result]) -> None:
        for r in results:
            if isinstance(r, ChunkResult):
                self._since[r.stream] += len(r.seqs)
                if self._since[r.stream] >= self.every:
                    self._take(r.stream)
            elif isinstance(r, EndResult) and self._ended(r.stream):
                self._since.pop(r.stream, None)  # ended (eos or idle): its file goes too
                self._when.pop(r.stream, None)
                self.engine.continuity.forget(r.stream)
                self.defer(partial(self.writer.remove, r.stream))

    def _ended(self, stream: str) -> bool:
        """The stream's state is gone (not a probe's answer, not a stale eos)."""
        return stream != PROBE_STREAM and stream not in self.engine.streams

    def tick(self, now: float) -> None:
        if self.interval_s > 0:
            for name in list(self.engine.streams):
                if self._since[name] and now - self._when.get(name, 0.0) >= self.interval_s:
                    self._take(name)
        for w in self.writer.done():
            if w.error is None:
                self.engine.continuity.written(w.stream, w.session, w.next_seq)
                self.stats.count("checkpoints")
                self.stats.count("checkpoint_bytes", w.nbytes)
                continue
            self.stats.count("checkpoint_errors")
            n = self.stats.counts["checkpoint_errors"]
            if n <= ERROR_LINES:
                log.warning("checkpoint of stream %s not written (counted; the stream goes "
                            "on without it): %s", w.stream, w.error)  # fmt: skip

    def _take(self, name: str) -> None:
        snap = self.engine.continuity.snapshot(name)
        if snap is not None:
            self.defer(partial(self.writer.put, snap))
            self._since[name] = 0
            self._when[name] = time.monotonic()

    def close(self, timeout_s: float, final: bool = True) -> None:
        """Checkpoint every open stream (a restart goes on from here; not `final`: outputs
        were left unpublished, so the last checkpoints, which they follow, stand), then stop
        writing."""
        for name in list(self.engine.streams) if final else ():
            self._take(name)
        if not self.writer.close(timeout_s):
            log.warning("checkpoints: not all written within %.1f s", timeout_s)
        self.tick(time.monotonic())
