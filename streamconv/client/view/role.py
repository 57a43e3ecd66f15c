"""`streamconv view`: subscribe to every output and serve a live page of all streams' layers.

It is an ordinary subscriber (client/subscriber.py, taking previews), so it never slows the
worker: if it falls behind, the worker's XPUB drops outputs to it (shown as lost); a refused
handshake is shown on the page, not raised. It takes every waiting message at once and scans
only the newest per layer for display; the older ones still count (rate, seq, probe pixel).
The SUB socket reconnects by itself, so a worker that goes away and returns is picked up
again; the page shows the worker as disconnected meanwhile.
"""

from __future__ import annotations

import logging
import threading

from streamconv.client.subscriber import Message, Subscriber
from streamconv.client.view.hub import Hub
from streamconv.client.view.page import Encoder
from streamconv.client.view.server import Served, app
from streamconv.config import ViewSettings, parse_http
from streamconv.errors import StartupError
from streamconv.httpserver import HttpServer
from streamconv.signals import on_stop

log = logging.getLogger(__name__)

POLL_S = 0.1  # how soon a stop is noticed
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
        # Previews by default: full outputs at full rate cost the worker as much as a second
        # subscriber (BENCHMARKS.md, View); `full` takes every output, exact to the frame, and
        # the previews too, for the input's (the worker has no full-rate copy of its input).
        connect = self.settings.connect
        sub = Subscriber([connect.endpoint, *self.settings.more],  # every shard's outputs
                         hwm=connect.hwm, previews="input" if self.settings.full else "only",
                         strict=False, **connect.client_keys())  # fmt: skip
        try:
            http.start()
            self.url = http.url
            what = "every output" if self.settings.full else "previews"
            log.info("view on %s (%s from %s)", http.url, what, connect.endpoint)
            self.ready.set()
            refused: str | None = None
            while not self.stop_event.is_set():
                self.hub.connected = sub.connected
                if sub.refused != refused and sub.refused:  # once per change, not per retry
                    log.error("the worker did not let the view in: %s", sub.refused)
                refused = self.hub.refused = sub.refused  # the page says why too
                self._show(sub.take(POLL_S, BATCH))
        finally:
            log.info("view shutting down (%d pages open)", self.served.pages)
            http.stop()
            self.served.executor.shutdown(wait=False, cancel_futures=True)
            sub.close()

    def _show(self, batch: list[Message]) -> None:
        # The newest frame per layer is shown: an eos after it in the same batch (the last
        # frames and the end, read together by a busy view) must not hide it.
        newest = {(h["stream"], h["layer"]): i for i, (h, f) in enumerate(batch) if f is not None}
        for i, (header, frame) in enumerate(batch):
            display = newest.get((header["stream"], header["layer"])) == i
            self.hub.take(header, frame, display=display)
