"""A stand-in for the worker's output side: an XPUB on a free 127.0.0.1 port that sees its
subscribers' subscriptions, so a test publishes only once they are in place (no slow joiner)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from streamconv.wire import protocol, transport

SESSION = "s" * 32


class FakeWorker:
    def __init__(self, ctx: transport.Context) -> None:
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = transport.endpoint(self.sock)
        self.topics: set[bytes] = set()

    def wait_subscribed(
        self, *topics: bytes, timeout_s: float = 30.0, proc: subprocess.Popen[str] | None = None
    ) -> None:
        """Return once every one of `topics` is subscribed; fails the test after `timeout_s`,
        or as soon as the subscriber's process `proc` has exited."""
        deadline = time.monotonic() + timeout_s
        while not set(topics) <= self.topics:
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"the subscriber exited ({proc.returncode}) before subscribing")
            if time.monotonic() > deadline:
                pytest.fail(f"no subscription to {topics} within {timeout_s} s: {self.topics}")
            frames = transport.recv(self.sock, 100)
            if frames is None:
                continue
            event = transport.subscription_event(frames)
            if event is not None and event[0]:
                self.topics.add(event[1])

    def output(
        self,
        stream: str,
        layer: str,
        seq: int,
        *,
        session: str = SESSION,
        array: np.ndarray | None = None,
        **kw: Any,
    ) -> None:
        if array is None:  # a frame that differs from seq to seq, for previews
            array = np.full((1, 8, 8), float(seq), np.float32)
            array[0, 0, : seq % 8 + 1] = -1.0
        now = time.time_ns()
        transport.send(
            self.sock, protocol.encode_output(stream, layer, session, seq, now, array, **kw)
        )

    def eos(self, stream: str, layer: str, seq: int, *, session: str = SESSION) -> None:
        transport.send(self.sock, protocol.encode_output_eos(stream, layer, session, seq))

    def raw(self, *parts: bytes) -> None:
        transport.send(self.sock, list(parts))


def wait_tcp_connected(proc: subprocess.Popen[str], port: int, timeout_s: float = 30.0) -> None:
    """Return once `proc` holds an established TCP connection to `port` (Linux /proc); fails
    the test after `timeout_s` or as soon as `proc` has exited."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        pytest.skip("needs Linux /proc to see the child's connection")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) before connecting to port {port}")
        inodes = set()
        for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        for table in tables:
            for row in table.read_text().splitlines()[1:] if table.exists() else []:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                    return
        time.sleep(0.05)
    pytest.fail(f"process {proc.pid} did not connect to port {port} within {timeout_s} s")
