"""Issue 16, case 6 (second half), with real processes: a client that CURVE refuses fails
within its wait with a clear error and exit code 3, and the worker counts every refused
handshake (keyless clients at its CURVE sockets included) on /status and /metrics."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from streamconv.client import Subscriber
from streamconv.errors import AuthError
from tests.conftest import REPO
from tests.helpers import DEFAULT, status
from tests.integration.conftest import WorkerProc
from tests.integration.test_security import Keys

pytestmark = pytest.mark.integration

WAIT_S = 5  # the subscriber's --timeout


def refused(worker: WorkerProc) -> int:
    return int(status(worker)["curve_refused"])


def metric(worker: WorkerProc, name: str) -> float:
    with urllib.request.urlopen(worker.http + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def wait_refused(worker: WorkerProc, n: int, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while (got := refused(worker)) < n:
        assert time.monotonic() < deadline, f"curve_refused {got}, expected >= {n}"
        time.sleep(0.05)
    return got


def streamconv(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streamconv", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done, time.monotonic() - start


def test_a_keyless_subscribe_to_a_curve_worker_fails_fast_and_is_counted(
    start_worker: Callable[..., WorkerProc], tmp_path: Path, python_env: dict[str, str]
) -> None:
    keys = Keys(tmp_path / "keys")
    worker = start_worker(DEFAULT, env=keys.worker_env())
    # A bare TCP connection (a port probe) that drops before any handshake is no refusal.
    host, port = urllib.parse.urlsplit(worker.output).netloc.split(":")
    socket.create_connection((host, int(port)), timeout=5).close()
    time.sleep(0.5)
    assert refused(worker) == 0

    done, took = streamconv(python_env, "subscribe", "--connect", worker.output,
                            "--stream", "cam", "--timeout", str(WAIT_S))  # fmt: skip
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert took < WAIT_S + 10, took  # the interpreter's start included; not the whole wait
    assert f"the worker at {worker.output} did not let this subscriber in" in done.stderr
    assert "requires CURVE and this client has no keys" in done.stderr
    assert "--curve-secret" in done.stderr
    assert "--curve-server" in done.stderr
    assert "no output received" not in done.stdout

    # Without --stream, and with a key the worker does not know: refused too.
    mallory = keys.client("mallory")
    done, _ = streamconv(python_env, "subscribe", "--connect", worker.output,
                         "--timeout", str(WAIT_S), "--curve-secret", str(mallory["curve_secret"]),
                         "--curve-server", str(mallory["curve_server"]))  # fmt: skip
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "not in the worker's curve_clients" in done.stderr

    # A keyless capture at the CURVE input: refused, said and counted likewise.
    done, took = streamconv(python_env, "capture", "synthetic:32x24:5", "--connect",
                            worker.input)  # fmt: skip
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "requires CURVE and this client has no keys" in done.stderr
    assert took < 20, took
    # The worker counts the refusals it sees as refusals: a client that finds the mismatch
    # first and hangs up at once can reach it as a dropped connection (ZeroMQ reports no
    # failed handshake then, as for a port probe), so not every one of the three is certain.
    n = wait_refused(worker, 1)
    assert metric(worker, "streamconv_curve_refused_total") >= n
    assert "refused a client's handshake" in worker.log()


def test_a_keyless_subscriber_object_raises_instead_of_timing_out(
    start_worker: Callable[..., WorkerProc], tmp_path: Path
) -> None:
    keys = Keys(tmp_path / "keys")
    worker = start_worker(DEFAULT, env=keys.worker_env())
    start = time.monotonic()
    with (
        Subscriber(worker.output, stream="cam", timeout_s=WAIT_S) as sub,
        pytest.raises(AuthError, match="requires CURVE and this client has no keys"),
    ):
        sub.poll(WAIT_S)
    assert time.monotonic() - start < 2.5  # (the worker's count: the test above)
