"""The worker's stats object, its drop log, its metrics and its HTTP app, without sockets."""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from streamconv.errors import Drop
from streamconv.worker import http, metrics
from streamconv.worker.stats import BURST, DropLog, Histogram, Reset, Stats


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.sum == pytest.approx(3.65)


def test_stream_stats_and_subscriptions() -> None:
    s = Stats()
    s.open("a", "s1")
    for _ in range(3):
        s.received("a")
    s.processed("a", 3, 0.01)
    s.published("a", "conv", 3, [0.001, 0.002, 0.010])
    s.published("a", "relu", 3, [])
    s.drop(Drop.BAD_SHAPE, "a")
    s.drop(Drop.MALFORMED)
    s.reset("a", Reset.SEQ_GAP)
    s.subscription(True, b"a/conv/")
    s.subscription(True, b"a/conv/")
    s.subscription(False, b"a/conv/")
    snap = s.snapshot()
    a = snap["streams"]["a"]
    assert (a["frames_received"], a["frames_processed"]) == (3, 3)
    assert a["published"] == {"conv": 3, "relu": 3}
    assert a["drops"] == {"bad_shape": 1}
    assert a["resets"] == {"seq_gap": 1}
    assert a["latency_ms_p50"] == pytest.approx(2.0)
    assert a["latency_ms_p99"] == pytest.approx(10.0)
    assert snap["drops"] == {"bad_shape": 1, "malformed": 1}
    assert snap["subscriptions"] == {"a/conv/": 1}
    assert s.has_subscriber("a", ["conv", "relu"])
    assert not s.has_subscriber("ab", ["conv"])
    s.subscription(False, b"a/conv/")
    assert snap["active_streams"] == 1
    assert not s.has_subscriber("a", ["conv"])
    assert s.ended("a", "eos") is not None
    assert s.ended("a", "eos") is None  # once
    assert s.active() == 0


def test_counts_of_an_ended_stream_stay_and_never_decrease() -> None:
    """Asking about an ended stream (a preview does) never makes a blank one; a stream that
    starts again goes on counting from its old totals (a Prometheus counter never decreases)."""
    s = Stats()
    s.open("a", "s1")
    for _ in range(5):
        s.received("a")
    s.missing("a", 2)
    s.ended("a", "eos")
    assert s.lost("a") == 2
    assert s.lost("never-seen") == 0
    snap = s.snapshot()
    assert snap["active_streams"] == 0
    assert snap["streams"]["a"]["state"] == "eos"
    assert snap["streams"]["a"]["session"] == "s1"
    assert snap["streams"]["a"]["frames_received"] == 5
    assert "never-seen" not in snap["streams"]
    s.open("a", "s2")
    s.received("a")
    again = s.snapshot()["streams"]["a"]
    assert (again["state"], again["session"], again["frames_received"]) == ("active", "s2", 6)
    assert again["frames_missing"] == 2
    assert s.counts["frames_in"] == 6
    s.ended("a", "eos")
    assert s.active() == 0


def test_an_empty_subscription_matches_every_stream() -> None:
    s = Stats()
    s.subscription(True, b"")
    assert s.has_subscriber("anything", ["conv"])


def test_ended_streams_are_bounded() -> None:
    s = Stats()
    for i in range(200):
        s.open(f"s{i}", "x")
        s.ended(f"s{i}", "eos")
    assert len(s.streams) == 64


def test_drop_log_logs_a_burst_then_summarises(caplog: pytest.LogCaptureFixture) -> None:
    log = DropLog(every_s=0.05)
    with caplog.at_level(logging.WARNING):
        for i in range(1000):
            log.add(Drop.BAD_FIELD, f"field 'seq' must be ..., got {i}")
        log.add(Drop.VERSION, "unsupported protocol version 2")
        time.sleep(0.06)
        log.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == BURST + 1 + 1
    assert lines[-1].startswith(f"dropped {1000 - BURST} more inputs (bad_field)")
    assert "got 999" in lines[-1]


def test_metrics_render_in_prometheus_format() -> None:
    s = Stats()
    s.open("cam0", "x")
    s.received("cam0")
    s.received("cam0")
    s.drop(Drop.OVERSIZE)
    text = metrics.render(metrics.registry(s, lambda: 1234)).decode()
    samples = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for fam in text_string_to_metric_families(text)
        for x in fam.samples
    }
    assert samples[("streamconv_frames_received_total", (("stream", "cam0"),))] == 2
    assert samples[("streamconv_dropped_total", (("reason", "oversize"),))] == 1
    assert samples[("streamconv_device_memory_bytes", ())] == 1234
    assert samples[("streamconv_active_streams", ())] == 1


@pytest.mark.parametrize(("phase", "code"), [("starting", 503), ("ready", 200), ("stopping", 503)])
def test_readyz_follows_the_phase(phase: str, code: int) -> None:
    health = http.Health(phase=phase)
    s = Stats()
    client = TestClient(http.app(health, s, metrics.registry(s, lambda: None)))
    reply = client.get("/readyz")
    assert (reply.status_code, reply.text) == (code, f"{phase}\n")
    assert client.get("/healthz").status_code == 200
    assert client.get("/status").json()["phase"] == phase


def test_healthz_fails_when_the_loop_stalls() -> None:
    health = http.Health(phase="ready", beat=time.monotonic() - http.STALL_S - 1)
    s = Stats()
    client = TestClient(http.app(health, s, metrics.registry(s, lambda: None)))
    assert client.get("/healthz").status_code == 503
    health.beat = time.monotonic()
    assert client.get("/healthz").status_code == 200
