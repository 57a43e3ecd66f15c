"""Every long-running role serves /healthz, /readyz, /metrics and /status like the worker:
the capture (with --http; off by default) and the proxy (on by default, listen port + 1), as
real processes."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from streamconv import health
from streamconv.config import CaptureSettings, ProxySettings
from tests.helpers import two_ports
from tests.integration.conftest import WorkerProc, launch

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str) -> float:
    line = next((x for x in text.splitlines() if x.startswith(name + " ")), None)
    assert line is not None, f"no {name} in:\n{text}"
    return float(line.split()[1])


def url_of(role: WorkerProc, what: str) -> str:
    return role.wait_for_line(f"{what} http on ", 30).split("http on ")[1].split()[0]


def test_a_capture_serves_health_readiness_and_metrics(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    worker = start_worker()
    capture = launch([sys.executable, "-m", "streamconv", "capture", "synthetic:32x24",
                      "--stream", "cam0", "--connect", worker.input, "--output", worker.output,
                      "--realtime", "--http", "127.0.0.1:0"], python_env)  # fmt: skip
    try:
        url = url_of(capture, "capture")
        assert get(url + "/healthz") == (200, "ok\n")
        deadline = time.monotonic() + 30
        while get(url + "/readyz")[0] != 200:  # once the worker has answered
            assert time.monotonic() < deadline, capture.log()
            time.sleep(0.05)
        while metric(get(url + "/metrics")[1], "streamconv_capture_frames_sent_total") < 5:
            assert time.monotonic() < deadline, capture.log()
            time.sleep(0.05)
        status = json.loads(get(url + "/status")[1])
        assert (status["phase"], status["stream"], status["worker"]) == (
            "ready",
            "cam0",
            worker.input,
        )
        assert status["frames_sent"] >= 5
        assert "process_resident_memory_bytes" in get(url + "/metrics")[1]
        assert capture.stop(signal.SIGTERM) == 0
    finally:
        capture.reap()


def test_a_capture_serves_no_http_unless_asked(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    worker = start_worker()
    argv = ["capture", "synthetic:32x24:5", "--connect", worker.input, "--output", worker.output]
    capture = launch([sys.executable, "-m", "streamconv", *argv], python_env)
    try:
        assert capture.proc.wait(60) == 0, capture.log()
    finally:
        capture.reap()  # and every log line read
    assert "capture:" in capture.log()
    assert not [x for x in capture.lines if "http on" in x], capture.log()
    assert CaptureSettings().http == "off"


def test_the_proxy_serves_health_readiness_and_metrics_by_default(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    worker = start_worker()
    port = two_ports()[0]  # port + 1 is free too: the default HTTP port
    proxy = launch([sys.executable, "-m", "streamconv", "proxy", "--shards", worker.output,
                    "--listen", f"tcp://127.0.0.1:{port}"], python_env)  # fmt: skip
    try:
        url = url_of(proxy, "proxy")
        assert url == f"http://127.0.0.1:{port + 1}"
        proxy.wait_for_line("joined", 30)
        assert get(url + "/healthz") == (200, "ok\n")
        assert get(url + "/readyz") == (200, "ready\n")
        text = get(url + "/metrics")[1]
        assert metric(text, "streamconv_proxy_workers") == 1
        assert metric(text, "streamconv_proxy_messages_forwarded_total") == 0
        assert json.loads(get(url + "/status")[1])["workers"] == [worker.output]
        assert proxy.stop() == 0
    finally:
        proxy.reap()


def test_the_proxys_http_port_is_a_setting() -> None:
    listen = "tcp://127.0.0.1:5560"
    assert ProxySettings(listen=listen).http_address() == "127.0.0.1:5561"
    assert ProxySettings(listen=listen, http="off").http_address() == "off"
    assert ProxySettings(listen="ipc:///tmp/p", http=None).http_address() == "off"
    assert ProxySettings(http="0.0.0.0:9000").http_address() == "0.0.0.0:9000"
    with pytest.raises(ValueError, match="HOST:PORT"):
        ProxySettings(http="nine")


def test_a_health_without_a_watched_loop_never_reports_a_stall() -> None:
    stalled = time.monotonic() - health.STALL_S - 1
    assert not health.Health(phase="ready", beat=stalled).alive()
    assert health.Health(phase="ready", beat=stalled, watch_loop=False).alive()
