"""`streamconv view`: subscribe to every output and serve a live page of all streams' layers.

It is an ordinary subscriber, so it never slows the worker: if it falls behind, the worker's
XPUB drops outputs to it (shown as lost). It takes every waiting message at once and scans
only the newest per layer for display; the older ones still count (rate, seq, probe pixel).
The SUB socket reconnects by itself, so a worker that goes away and returns is picked up
again; the page shows the worker as disconnected meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from streamconv.client.view.hub import Hub
from streamconv.client.view.page import Encoder
from streamconv.client.view.server import Served, app
from streamconv.config import ViewSettings, parse_http
from streamconv.errors import ProtocolError, StartupError
from streamconv.httpserver import HttpServer
from streamconv.signals import on_stop
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import PREVIEW_PREFIX, PROBE_STREAM
from streamconv.worker.previews import INPUT

log = logging.getLogger(__name__)

POLL_MS = 100  # how soon a stop is noticed
BATCH = 512  # messages taken in one go before the newest of each layer is scanned


class View:
    def __init__(self, settings: ViewSettings) -> None:
        self.settings = settings
        self.hub = Hub(max_side=settings.max_side, max_streams=settings.max_streams,
                       stale_s=settings.stale_s)  # fmt: skip
        self.served = Served(self.hub, Encoder(settings.quality), settings.connect.endpoint,
                             settings.fps, settings.history_s)  # fmt: skip
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.url = ""
        self.bad_messages = 0

    def run(self) -> None:
        """Serve until stop() or SIGINT/SIGTERM."""
        restore = on_stop(lambda signum: self.stop_event.set())
        try:
            self._serve()
        finally:
            restore()

    def stop(self) -> None:
        self.stop_event.set()

    def _serve(self) -> None:
        host_port = parse_http(self.settings.listen)
        if host_port is None:  # pragma: no cover - ViewSettings refuses 'off'
            msg = "view needs a listen address"
            raise StartupError(msg)
        http = HttpServer(*host_port, app(self.served), hint="--listen HOST:PORT")
        ctx = transport.context()
        # Previews by default: full outputs at full rate cost the worker as much as a second
        # subscriber (BENCHMARKS.md, View); `full` takes every output, exact to the frame, and
        # the previews too, for the input's (the worker has no full-rate copy of its input).
        topics = [PREVIEW_PREFIX.encode()]
        if self.settings.full:
            topics.insert(0, b"")
        # Watched from before the first connect (every shard's outputs on one socket).
        sock, watch = transport.open_watched(ctx, "sub", self.settings.connect, topics=topics,
                                             more=self.settings.more)  # fmt: skip
        try:
            http.start()
            self.url = http.url
            what = "every output" if self.settings.full else "previews"
            log.info("view on %s (%s from %s)", http.url, what, self.settings.connect.endpoint)
            self.ready.set()
            refused: str | None = None
            while not self.stop_event.is_set():
                self.hub.connected = watch.update() > 0
                if watch.refused != refused and watch.refused:  # once per change, not per retry
                    log.error("the worker did not let the view in: %s", watch.refused)
                refused = self.hub.refused = watch.refused  # the page says why too
                batch = _take(sock)
                if batch:
                    self._account(batch)
        finally:
            log.info("view shutting down (%d pages open)", self.served.pages)
            http.stop()
            self.served.executor.shutdown(wait=False, cancel_futures=True)
            watch.close()
            transport.close(sock, 0)
            ctx.term()

    def _account(self, batch: list[list[Any]]) -> None:
        decoded: list[tuple[dict[str, Any], np.ndarray | None]] = []
        for parts in batch:
            try:
                header, frame = protocol.decode_output([f.buffer for f in parts])
            except ProtocolError as e:
                self.bad_messages += 1
                level = logging.WARNING if self.bad_messages == 1 else logging.DEBUG
                log.log(level, "view: skipped a bad message (counted): %s", e)
                continue
            preview = bool(header.get("preview"))
            wanted = preview != self.settings.full or (preview and header["layer"] == INPUT)
            if header["stream"] != PROBE_STREAM and wanted:
                decoded.append((header, frame))
        # The newest frame per layer is shown: an eos after it in the same batch (the last
        # frames and the end, read together by a busy view) must not hide it.
        newest = {(h["stream"], h["layer"]): i for i, (h, f) in enumerate(decoded) if f is not None}
        for i, (header, frame) in enumerate(decoded):
            display = newest.get((header["stream"], header["layer"])) == i
            self.hub.take(header, frame, display=display)


def _take(sock: transport.Socket) -> list[list[Any]]:
    """Every message waiting (up to BATCH), after waiting up to POLL_MS for the first."""
    first = transport.recv(sock, POLL_MS)
    if first is None:
        return []
    batch = [first]
    while len(batch) < BATCH:
        more = transport.recv_nowait(sock)
        if more is None:
            break
        batch.append(more)
    return batch
