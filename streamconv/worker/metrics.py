"""The worker's Prometheus metrics, read from its Stats at scrape time (prometheus-client).

Names follow Prometheus conventions (base units, `_total` for counters). Per-stream labels are
bounded: at most max_streams active plus the last ENDED_KEPT ended streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streamconv import health
from streamconv.health import CONTENT_TYPE, render
from streamconv.worker.stats import Histogram, Stats

__all__ = ["CONTENT_TYPE", "StatsCollector", "registry", "render"]


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.buckets(), sum_value=h.sum)


class StatsCollector(Collector):
    def __init__(self, stats: Stats, device_memory: Callable[[], int | None]) -> None:
        self.stats = stats
        self.device_memory = device_memory

    # Over 50 lines on purpose: every metric family, declared in one list and filled under one
    # lock, so a scrape is one consistent picture; splitting it would split the lock.
    def collect(self) -> Iterator[Metric]:
        s = self.stats
        received = CounterMetricFamily(
            "streamconv_frames_received", "Frames taken into a stream", labels=["stream"]
        )
        processed = CounterMetricFamily(
            "streamconv_frames_processed", "Frames run through the layers", labels=["stream"]
        )
        published = CounterMetricFamily(
            "streamconv_outputs_published",
            "Output frames published, per layer",
            labels=["stream", "layer"],
        )
        missing = CounterMetricFamily(
            "streamconv_frames_missing", "Frames a sender numbered but never delivered",
            labels=["stream"],
        )  # fmt: skip
        drops = CounterMetricFamily(
            "streamconv_dropped", "Inputs dropped, by reason", labels=["reason"]
        )
        resets = CounterMetricFamily(
            "streamconv_resets", "Stream states started afresh, by cause", labels=["cause"]
        )
        subs = GaugeMetricFamily(
            "streamconv_subscriptions", "Subscriptions per topic prefix", labels=["topic"]
        )
        events = CounterMetricFamily(
            "streamconv_events", "Everything the worker counts, by name, as /status's counts "
            "(checkpoints, record_frames, record_dropped, record_errors, shm_published, ...)",
            labels=["event"],
        )  # fmt: skip
        with s.lock:
            for name, st in s.streams.items():
                received.add_metric([name], st.received)
                processed.add_metric([name], st.processed)
                missing.add_metric([name], st.missing)
                for layer, n in st.published.items():
                    published.add_metric([name, layer], n)
            for reason, n in s.drops.items():
                drops.add_metric([str(reason)], n)
            for cause, n in s.resets.items():
                resets.add_metric([str(cause)], n)
            for topic, n in s.subscriptions.items():
                subs.add_metric([topic.decode("utf-8", "replace")], n)
            for event, n in sorted(s.counts.items()):
                events.add_metric([event], n)
            active = sum(st.ended is None for st in s.streams.values())
            refused = CounterMetricFamily(
                "streamconv_curve_refused", "Client handshakes the worker's sockets refused "
                "(a key not allowed, no CURVE keys where required, a wrong worker key)",
                s.counts["curve_refused"],
            )  # fmt: skip
            latency = _histogram(
                "streamconv_latency_seconds",
                "Capture (t_ns) to publish time per output frame",
                s.latency,
            )
            chunk = _histogram(
                "streamconv_chunk_seconds", "Model time per chunk, copies included",
                s.chunk_seconds,
            )  # fmt: skip
        yield from (received, processed, published, missing, drops, resets, subs, refused, events)
        yield GaugeMetricFamily("streamconv_active_streams", "Streams holding state", active)
        yield latency
        yield chunk
        used = self.device_memory()
        if used is not None:
            yield GaugeMetricFamily(
                "streamconv_device_memory_bytes", "CUDA memory allocated by tensors", used
            )


def registry(stats: Stats, device_memory: Callable[[], int | None]) -> CollectorRegistry:
    """A registry of its own (not the global one): the worker's stats plus process metrics
    (process_resident_memory_bytes, process_cpu_seconds_total, ...)."""
    return health.registry(StatsCollector(stats, device_memory))
