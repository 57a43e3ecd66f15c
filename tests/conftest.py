"""Shared fixtures: ZeroMQ contexts that close every socket, free endpoints, bounded receives.

Receives always have a timeout: a hung test is a failed test, not a stuck run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from streamconv.wire import transport

REPO = Path(__file__).resolve().parents[1]
# The shipped presets, their one copy (the wheel maps it to the package streamconv.presets).
PRESETS = REPO / "config" / "presets"
RECV_TIMEOUT_S = 10.0


class HoldingContext(zmq.Context[Any]):
    """Keeps its sockets alive until destroy(): pyzmq warns when an open socket is collected,
    and a test's sockets would otherwise be collected when the test function returns."""

    held: list[transport.Socket]

    def socket(self, *args: Any, **kwargs: Any) -> transport.Socket:
        sock = super().socket(*args, **kwargs)
        self.held.append(sock)
        return sock


@pytest.fixture
def zmq_ctx() -> Iterator[transport.Context]:
    """A context whose sockets are all closed (linger 0) at teardown, even after a failure."""
    ctx = HoldingContext()
    ctx.held = []
    yield ctx
    ctx.destroy(linger=0)
    ctx.held.clear()


@pytest.fixture
def free_endpoint() -> Callable[[], str]:
    """Make 'tcp://127.0.0.1:PORT' with a port free right now, for a process that binds itself.

    Prefer binding 'tcp://127.0.0.1:*' in the test and reading transport.endpoint(sock): that
    has no race. This is for endpoints another process must bind.
    """

    given: set[int] = set()

    def make() -> str:
        # The OS may hand the port just closed out again: never the same one twice in a test
        # (a worker's input and output on one port fail to bind, as CI once saw).
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in given:
                given.add(port)
                return f"tcp://127.0.0.1:{port}"

    return make


def recv_parts(sock: transport.Socket, timeout_s: float = RECV_TIMEOUT_S) -> list[bytes]:
    """One multipart message as bytes; fails the test after `timeout_s`."""
    frames = transport.recv(sock, int(timeout_s * 1000))
    if frames is None:
        pytest.fail(f"no message within {timeout_s} s")
    return [f.bytes for f in frames]


@pytest.fixture
def recv() -> Callable[..., list[bytes]]:
    """recv(sock, timeout_s=10.0) -> list[bytes], failing the test on timeout."""
    return recv_parts


@pytest.fixture
def python_env() -> dict[str, str]:
    """Environment for child Python processes: this checkout importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def spawn(python_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """spawn(code, *args) starts `python -c code args`; every child is killed at teardown."""
    children: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=REPO,
            env=python_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(proc)
        return proc

    yield start
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


EXAMPLE = REPO / "examples" / "divisive"


@pytest.fixture
def divisive_example(tmp_path: Path) -> Path:
    """examples/divisive copied into a fresh folder and fitted there (fit.py, a few epochs):
    the folder a researcher would have, config.toml and fitted.safetensors side by side."""
    folder = tmp_path / "divisive"
    folder.mkdir()
    for name in ("model.py", "fit.py", "config.toml"):
        (folder / name).write_bytes((EXAMPLE / name).read_bytes())
    done = subprocess.run([sys.executable, str(folder / "fit.py"), "--epochs", "60"],
                          capture_output=True, text=True, timeout=300, cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (folder / "fitted.safetensors").is_file()
    return folder
