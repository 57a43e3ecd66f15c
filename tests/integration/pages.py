"""A page of `streamconv view` spoken to over its real WebSocket, for the integration tests."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np
from websockets.sync.client import connect


class PageClient:
    """Keeps the latest state and the latest image per (stream, layer), like the page does."""

    def __init__(self, url: str) -> None:
        # websockets 17.1+ wants connect() used as a context manager; it is held open here.
        self._opened = connect(url.replace("http://", "ws://") + "/ws", open_timeout=10,
                               max_size=None)  # fmt: skip
        self.ws = self._opened.__enter__()
        self.hello = json.loads(self.ws.recv(timeout=10))
        assert self.hello["type"] == "hello"
        self.state: dict[str, Any] = {}
        self.images: dict[tuple[str, str], tuple[int, bytes]] = {}

    def layer(self, stream: str, layer: str) -> dict[str, Any] | None:
        for s in self.state.get("streams", []):
            if s["stream"] == stream:
                return next((x for x in s["layers"] if x["layer"] == layer), None)
        return None

    def stream(self, stream: str) -> dict[str, Any] | None:
        return next((s for s in self.state.get("streams", []) if s["stream"] == stream), None)

    def until(self, done: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
        """Take messages until `done()`; fails naming `what` and the last state otherwise."""
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"page never saw {what or done}; last state: {self.state}"
            try:
                message = self.ws.recv(timeout=min(left, 1.0))
            except TimeoutError:
                continue
            if isinstance(message, bytes):
                (n,) = struct.unpack("<I", message[:4])
                meta = json.loads(message[4 : 4 + n])
                self.images[(meta["stream"], meta["layer"])] = (meta["image"], message[4 + n :])
            else:
                data = json.loads(message)
                if data["type"] == "state":
                    self.state = data

    def image(self, stream: str, layer: str) -> np.ndarray:
        data = self.images[(stream, layer)][1]
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def close(self) -> None:
        self._opened.__exit__(None, None, None)


def stalled_page(url: str) -> socket.socket:
    """A page that opens the WebSocket and then never reads: a tiny receive buffer fills."""
    where = urlparse(url)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    sock.sendall(request.encode() + b"\r\n")
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    msg = f"no VmRSS for pid {pid}"
    raise RuntimeError(msg)
