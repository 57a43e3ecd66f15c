"""One HTTP server in a daemon thread (uvicorn), for the worker's health endpoints and the view.

The socket is bound in the constructor, so a taken port is a StartupError before anything
else starts; uvicorn then serves the given ASGI app from its own thread and event loop.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette

from streamconv.errors import StartupError

START_TIMEOUT_S = 10.0
HINT = "--http HOST:PORT or 'off'"  # how to pick another address, for the error


class HttpServer:
    """Binds at once (so a taken port is a StartupError), then serves from a thread."""

    def __init__(self, host: str, port: int, application: Starlette, *, hint: str = HINT) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            msg = f"cannot serve HTTP on {host}:{port}: {e} (use {hint})"
            raise StartupError(msg) from e
        self.host, self.port = host, self.sock.getsockname()[1]
        # No permessage-deflate: the view sends JPEGs, which it only slows down (BENCHMARKS.md).
        config = uvicorn.Config(application, log_level="warning", lifespan="off", access_log=False,
                                ws_per_message_deflate=False)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)

    def stop(self, timeout_s: float = 2.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        self.sock.close()
