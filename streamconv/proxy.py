"""`streamconv proxy`: one output endpoint for every shard's, an XSUB/XPUB forwarder.

Subscribers connect to the proxy instead of to each worker; their subscriptions go up to
every shard, the shards' outputs come down to them. It holds no state and decodes nothing:
restart it at will (subscribers reconnect by themselves). Plaintext only: put it on the same
host or network namespace as its subscribers (loopback by default; `allow_insecure` to bind
another address).
"""

from __future__ import annotations

import logging
import threading

from streamconv.config import ProxySettings, SocketSettings
from streamconv.errors import ConfigError
from streamconv.signals import on_stop
from streamconv.wire import transport

log = logging.getLogger(__name__)

POLL_MS = 100  # how soon a stop request is noticed
BATCH = 256  # messages forwarded per side before looking at the other side again


class Proxy:
    def __init__(self, settings: ProxySettings) -> None:
        if not settings.shards:
            msg = "the proxy needs the workers' output endpoints: --shards EP,EP,..."
            raise ConfigError(msg)
        listen = SocketSettings(endpoint=settings.listen, bind=True, hwm=settings.hwm)
        if not listen.local() and not settings.allow_insecure:
            msg = (
                f"proxy listen {settings.listen} is reachable from other machines and the "
                "proxy has no CURVE; bind loopback or pass --allow-insecure"
            )
            raise ConfigError(msg)
        self.settings, self.listen = settings, listen
        self.stop_event = threading.Event()
        self.forwarded = 0
        self.subscriptions = 0

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        restore = on_stop(lambda signum: self.stop_event.set())
        ctx = transport.context()
        up = down = None
        try:
            first = SocketSettings(endpoint=self.settings.shards[0], hwm=self.settings.hwm)
            up = transport.open_socket(ctx, "xsub", first)
            transport.connect_also(up, self.settings.shards[1:])
            down = transport.open_socket(ctx, "xpub", self.listen)
            log.info("proxy on %s for %d shards: %s", self.settings.listen,
                     len(self.settings.shards), ", ".join(self.settings.shards))  # fmt: skip
            self._serve(up, down)
        finally:
            restore()
            for sock in (down, up):
                if sock is not None:
                    transport.close(sock, 0)
            ctx.term()
            log.info("proxy stopped: %d messages forwarded, %d subscription changes",
                     self.forwarded, self.subscriptions)  # fmt: skip

    def _serve(self, up: transport.Socket, down: transport.Socket) -> None:
        while not self.stop_event.is_set():
            ready = transport.wait_readable([up, down], POLL_MS)
            if down in ready:  # subscriptions (and unsubscriptions) go up to every shard
                self.subscriptions += _forward(down, up)
            if up in ready:
                self.forwarded += _forward(up, down)


def _forward(src: transport.Socket, dst: transport.Socket) -> int:
    n = 0
    while n < BATCH and (parts := transport.recv_nowait(src)) is not None:
        transport.send(dst, parts)
        n += 1
    return n
