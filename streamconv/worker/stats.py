"""One stats object for the worker: the engine and publisher write it; the log lines,
`/metrics` and `/status` read it. Drop reasons and reset causes are enums, not message text.

Thread-safe: the HTTP thread reads while the worker loop writes (one lock, held briefly).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from streamconv.errors import Drop

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CHUNK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_SAMPLES = 1024  # recent capture-to-publish latencies kept per stream for p50/p99
VERDICTS_KEPT = 1024  # sessions whose dropped frames their senders may still ask about
ENDED_KEPT = 64  # ended streams kept for /status and /metrics (bounds label cardinality)
BURST = 5  # drop log lines per reason before they are summarised


class Reset(StrEnum):
    """Why a stream's state was started afresh: streamconv_resets_total{cause=...}."""

    NEW_SESSION = "new_session"
    SEQ_GAP = "seq_gap"
    SIZE_CHANGE = "size_change"
    MODEL_FAILED = "model_failed"
    # Met at seq > 0 without its state: the worker restarted without a checkpoint of it (or
    # freed it when idle); the session's frames before that seq were never run here.
    LOST_STATE = "lost_state"


class Histogram:
    """Cumulative-bucket histogram in Prometheus' sense (counts per upper bound, sum)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        i = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[i] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass
class StreamStats:
    name: str
    session: str
    started: float = field(default_factory=time.monotonic)
    received: int = 0
    processed: int = 0
    processed_session: int = 0  # of `processed`, in this session (for its frame rate)
    missing: int = 0
    published: Counter[str] = field(default_factory=Counter)
    resets: Counter[Reset] = field(default_factory=Counter)
    drops: Counter[Drop] = field(default_factory=Counter)
    latency_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    first_out: float = 0.0
    last_out: float = 0.0
    ended: str | None = None

    def fps(self) -> float:
        span = self.last_out - self.first_out
        n = self.processed_session
        return (n - 1) / span if span > 0 and n > 1 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latency_s:
            return None
        ordered = sorted(self.latency_s)
        return 1000 * ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # frames_in, frames_out, eos, probes, ...
        self.drops: Counter[Drop] = Counter()
        self.resets: Counter[Reset] = Counter()
        self.streams: dict[str, StreamStats] = {}
        self.subscriptions: Counter[bytes] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.chunk_seconds = Histogram(CHUNK_BUCKETS)
        self.started = time.time()
        # This worker process, told apart from the one before a restart (probe answers carry it).
        self.boot = uuid.uuid4().hex[:16]
        self._ended: deque[str] = deque()
        # (stream, session) -> frames dropped by reason, told to that session's sender.
        self.verdicts: OrderedDict[tuple[str, str], Counter[str]] = OrderedDict()

    # -- writers (the worker loop) ----------------------------------------------------------
    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def open(self, name: str, session: str) -> StreamStats:
        """A stream starts (or starts again after it ended): its counters go on from where
        they were, so a per-stream counter on /metrics never decreases."""
        with self.lock:
            st = self.streams.get(name)
            if st is not None and st.ended is not None:
                self._ended.remove(name)
                st = replace(st, session=session, started=time.monotonic(), ended=None,
                             latency_s=deque(maxlen=LATENCY_SAMPLES), first_out=0.0,
                             last_out=0.0, processed_session=0)  # fmt: skip
                self.streams[name] = st
            elif st is None:
                st = self.streams[name] = StreamStats(name, session)
            st.session = session
            return st

    def received(self, name: str) -> None:
        with self.lock:
            self.counts["frames_in"] += 1
            st = self.streams.get(name)
            if st is not None:
                st.received += 1

    def missing(self, name: str, frames: int) -> None:
        """`frames` frames of the stream never reached the model (a gap in seq)."""
        if frames <= 0:
            return
        with self.lock:
            self.counts["frames_missing"] += frames
            st = self.streams.get(name)
            if st is not None:
                st.missing += frames

    def lost(self, name: str) -> int:
        """The stream's frames the worker never ran (missing or dropped), 0 if unknown."""
        with self.lock:
            st = self.streams.get(name)
            return 0 if st is None else st.missing + sum(st.drops.values())

    def drop(
        self, reason: Drop, stream: str | None = None, frames: int = 1, session: str | None = None
    ) -> None:
        with self.lock:
            self.drops[reason] += 1
            self.counts["frames_dropped"] += frames
            st = self.streams.get(stream) if stream else None
            if st is not None:
                st.drops[reason] += 1
            if stream is not None and session is not None:
                key = (stream, session)
                self.verdicts.setdefault(key, Counter())[str(reason)] += max(frames, 1)
                self.verdicts.move_to_end(key)
                while len(self.verdicts) > VERDICTS_KEPT:
                    self.verdicts.popitem(last=False)

    def verdict(self, stream: str, session: str) -> dict[str, int]:
        """The frames of this session of `stream` dropped here, by reason (its sender asks)."""
        with self.lock:
            return dict(self.verdicts.get((stream, session), {}))

    def reset(self, stream: str, cause: Reset) -> None:
        with self.lock:
            self.resets[cause] += 1
            st = self.streams.get(stream)
            if st is not None:
                st.resets[cause] += 1

    def processed(self, stream: str, frames: int, compute_s: float) -> None:
        now = time.monotonic()
        with self.lock:
            self.chunk_seconds.observe(compute_s)
            st = self.streams.get(stream)
            if st is not None:
                st.processed += frames
                st.processed_session += frames
                st.first_out = st.first_out or now
                st.last_out = now

    def published(self, stream: str, layer: str, frames: int, latencies_s: list[float]) -> None:
        """`frames` outputs of `layer` went out; `latencies_s` (capture to publish) are given
        once per frame, with the first layer."""
        with self.lock:
            st = self.streams.get(stream)
            if st is not None:
                st.published[layer] += frames
            for value in latencies_s:
                self.latency.observe(value)
                if st is not None:
                    st.latency_s.append(value)

    def ended(self, stream: str, why: str) -> StreamStats | None:
        with self.lock:
            st = self.streams.get(stream)
            if st is None or st.ended is not None:
                return None
            st.ended = why
            self._ended.append(stream)
            while len(self._ended) > ENDED_KEPT:
                self.streams.pop(self._ended.popleft(), None)
            return st

    def subscription(self, subscribed: bool, topic: bytes) -> None:
        with self.lock:
            self.subscriptions[topic] += 1 if subscribed else -1
            if self.subscriptions[topic] <= 0:
                del self.subscriptions[topic]

    def has_subscriber(self, stream: str, layers: list[str]) -> bool:
        """Whether some subscription matches a topic of `stream` (SUB topics are prefixes)."""
        topics = [f"{stream}/{layer}/".encode() for layer in layers]
        with self.lock:
            return any(t.startswith(sub) for sub in self.subscriptions for t in topics)

    def watched(self, stream: str, prefixes: tuple[str, ...] = ("",)) -> bool:
        """Whether some subscription takes outputs of `stream` (a layer of it, all of it, or
        everything), on its topics under each of `prefixes`."""
        topics = [f"{p}{stream}/".encode() for p in prefixes]
        with self.lock:
            return any(t.startswith(sub) or sub.startswith(t)
                       for sub in self.subscriptions for t in topics)  # fmt: skip

    def subscribed_layers(self, stream: str, layers: list[str], prefixes: list[str]) -> set[str]:
        """The layers of `stream` some subscription matches, on topics "{stream}/{layer}/"
        and each of `prefixes` before it (e.g. previews)."""
        with self.lock:
            subs = list(self.subscriptions)
        wanted = set()
        for layer in layers:
            topics = [f"{p}{stream}/{layer}/".encode() for p in ("", *prefixes)]
            if any(t.startswith(sub) for sub in subs for t in topics):
                wanted.add(layer)
        return wanted

    # -- readers (log lines, /status, /metrics) ----------------------------------------------
    def active(self) -> int:
        with self.lock:
            return sum(st.ended is None for st in self.streams.values())

    def snapshot(self) -> dict[str, Any]:
        """Everything /status shows, as plain JSON-ready values."""
        with self.lock:
            streams = {
                name: {
                    "session": st.session,
                    "state": st.ended or "active",
                    "frames_received": st.received,
                    "frames_processed": st.processed,
                    "frames_missing": st.missing,
                    "fps": round(st.fps(), 2),
                    "latency_ms_p50": st.percentile_ms(50),
                    "latency_ms_p99": st.percentile_ms(99),
                    "published": dict(st.published),
                    "resets": {str(k): v for k, v in st.resets.items()},
                    "drops": {str(k): v for k, v in st.drops.items()},
                }
                for name, st in self.streams.items()
            }
            return {
                "uptime_s": round(time.time() - self.started, 1),
                "boot": self.boot,
                "active_streams": sum(s["state"] == "active" for s in streams.values()),
                "counts": dict(self.counts),
                "drops": {str(k): v for k, v in self.drops.items()},
                "resets": {str(k): v for k, v in self.resets.items()},
                "subscriptions": {
                    t.decode("utf-8", "replace"): n for t, n in self.subscriptions.items()
                },
                "streams": streams,
            }

    def summary(self) -> str:
        """The periodic stats line."""
        with self.lock:
            active = sum(st.ended is None for st in self.streams.values())
            drops = ", ".join(f"{k}={v}" for k, v in sorted(self.drops.items())) or "none"
            resets = ", ".join(f"{k}={v}" for k, v in sorted(self.resets.items())) or "none"
            c = self.counts
            return (
                f"stats: {active} streams, frames in {c['frames_in']} out {c['frames_out']}, "
                f"messages published {c['published']}, subscriptions "
                f"{sum(self.subscriptions.values())}; drops: {drops}; resets: {resets}"
            )


class DropLog:
    """Logs drops without flooding: the first few per reason in full, then a summary line
    per reason every `every_s` seconds (counts always go to Stats, never lost)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.logged: Counter[Drop] = Counter()
        self.quiet: Counter[Drop] = Counter()
        self.example: dict[Drop, str] = {}
        self.since = time.monotonic()

    def add(self, reason: Drop, detail: str) -> None:
        if self.logged[reason] < BURST:
            self.logged[reason] += 1
            more = " (further ones are summarised)" if self.logged[reason] == BURST else ""
            log.warning("dropped input (%s): %s%s", reason, detail, more)
        else:
            self.quiet[reason] += 1
            self.example[reason] = detail

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.quiet or (not force and now - self.since < self.every_s):
            return
        for reason, n in sorted(self.quiet.items()):
            log.warning(
                "dropped %d more inputs (%s) in the last %.0f s, e.g.: %s",
                n,
                reason,
                now - self.since,
                self.example[reason],
            )
        self.quiet.clear()
        self.since = now
