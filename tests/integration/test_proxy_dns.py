"""`streamconv proxy --shards dns://NAME:PORT`: the proxy finds the workers by name and follows
them as they come and go (a worker that appears is connected and gets the subscriptions at
once; one that is gone is disconnected), with real worker processes."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

from streamconv import proxy as proxy_module
from streamconv.capture.role import Capture
from streamconv.client import Subscriber
from streamconv.config import ProxySettings
from streamconv.proxy import Proxy
from tests.helpers import DEFAULT, preset_layers, two_ports
from tests.integration.conftest import WorkerProc, launch

pytestmark = pytest.mark.integration

FRAMES = 6
LAYERS = len(preset_layers(DEFAULT))  # every layer of the default preset is published


def send(worker: WorkerProc, stream: str, wait_subscriber: bool = True) -> None:
    capture = Capture(f"synthetic:32x24:{FRAMES}", stream=stream, endpoint=worker.input,
                      output=worker.output, wait_s=30, resume=False,
                      wait_subscriber=wait_subscriber)  # fmt: skip
    stats = capture.run()
    assert (stats.sent, stats.dropped) == (FRAMES, 0)


def outputs(sub: Subscriber, streams: set[str], quiet_s: float) -> dict[str, int]:
    """Frames received per stream until each of `streams` has ended on every layer, then
    `quiet_s` more (whatever else comes is counted too); fails after 60 s."""
    got: dict[str, int] = {}
    ended: dict[str, int] = {}
    deadline = time.monotonic() + 60
    quiet_until = None
    while quiet_until is None or time.monotonic() < quiet_until:
        if quiet_until is None and all(ended.get(s, 0) == LAYERS for s in streams):
            quiet_until = time.monotonic() + quiet_s
            continue
        left = (quiet_until or deadline) - time.monotonic()
        assert quiet_until is not None or left > 0, (got, ended)
        message = sub.poll(max(0.0, min(left, 5)))
        if message is None:
            continue
        head, array = message
        table = ended if array is None else got
        table[head["stream"]] = table.get(head["stream"], 0) + 1
    return got


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_proxy_command_resolves_dns_shards(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    """`localhost` resolves offline: dns://localhost:PORT is the worker's output."""
    worker = start_worker()
    port = worker.output.rsplit(":", 1)[1]
    listen = f"tcp://127.0.0.1:{two_ports()[0]}"
    proxy = launch([sys.executable, "-m", "streamconv", "proxy", "--listen", listen,
                    "--shards", f"dns://localhost:{port}", "--http", "127.0.0.1:0"],
                   python_env)  # fmt: skip
    try:
        proxy.wait_for_line(f"worker tcp://localhost:{port} joined", 30)
        url = proxy.wait_for_line("proxy http on ").split("http on ")[1].split()[0]
        sub = Subscriber(listen, hwm=10_000, timeout_s=30)
        try:
            send(worker, "cam0")
            assert outputs(sub, {"cam0"}, 0)["cam0"] == FRAMES * LAYERS
        finally:
            sub.close()
        assert http_get(url + "/readyz") == (200, "ready\n")
        status, metrics = http_get(url + "/metrics")
        assert status == 200
        assert "streamconv_proxy_workers 1.0" in metrics
        forwarded = next(x for x in metrics.splitlines()
                         if x.startswith("streamconv_proxy_messages_forwarded_total "))  # fmt: skip
        assert float(forwarded.split()[1]) >= FRAMES * LAYERS
        assert json.loads(http_get(url + "/status")[1])["workers"] == [f"tcp://localhost:{port}"]
        assert proxy.stop() == 0
    finally:
        proxy.reap()


def test_the_proxy_follows_workers_as_they_come_and_go(
    start_worker: Callable[..., WorkerProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name gains a worker: its outputs reach the proxy's subscriber with no restart; the
    name loses one: the proxy disconnects from it, and its outputs no longer come through."""
    a, b = start_worker(), start_worker()
    answers = [[a.output]]  # what the service name resolves to, now
    monkeypatch.setattr(proxy_module, "resolve", lambda shards: list(answers[-1]))
    monkeypatch.setattr(proxy_module, "REFRESH_S", 0.1)
    listen = f"tcp://127.0.0.1:{two_ports()[0]}"
    settings = ProxySettings(shards=["dns://streamconv-worker:5556"], listen=listen, http="off")
    proxy = Proxy(settings)
    runner = threading.Thread(target=proxy.run, daemon=True)
    runner.start()
    sub = Subscriber(listen, hwm=10_000, timeout_s=30)

    def connected(expected: list[str]) -> None:
        deadline = time.monotonic() + 10
        while proxy.connected != expected:
            assert time.monotonic() < deadline, proxy.connected
            time.sleep(0.02)

    try:
        connected([a.output])
        send(a, "on-a")
        assert outputs(sub, {"on-a"}, 0)["on-a"] == FRAMES * LAYERS
        answers.append([a.output, b.output])  # scaled up
        connected([a.output, b.output])
        send(b, "on-b")  # waits for b to see the subscription the proxy passed on
        assert outputs(sub, {"on-b"}, 0)["on-b"] == FRAMES * LAYERS
        answers.append([b.output])  # a is gone from the name
        connected([b.output])
        send(a, "late-a", wait_subscriber=False)
        send(b, "late-b")
        got = outputs(sub, {"late-b"}, 1.0)
        assert got == {"late-b": FRAMES * LAYERS}, got
    finally:
        sub.close()
        proxy.stop()
        runner.join(10)
    assert not runner.is_alive()
