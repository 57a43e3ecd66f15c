"""`streamconv proxy`: one output endpoint for every shard's, an XSUB/XPUB forwarder.

Subscribers connect to the proxy instead of to each worker; their subscriptions go up to
every shard, the shards' outputs come down to them. It holds no state and decodes nothing:
restart it at will (subscribers reconnect by themselves). With CURVE it is a client of the
workers (`curve_secret` + `curve_server`: its key must be among the workers' clients) and a
server to its subscribers (`curve_clients`); without, it binds loopback unless
`allow_insecure`.
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
        s = settings
        try:
            listen = SocketSettings(
                endpoint=s.listen,
                bind=True,
                hwm=s.hwm,
                curve_secret=s.curve_secret,
                curve_clients=s.curve_clients,
            )
            self.upstream = [
                SocketSettings(
                    endpoint=e, hwm=s.hwm, curve_secret=s.curve_secret, curve_server=s.curve_server
                )
                for e in s.shards
            ]
        except ValueError as e:
            msg = f"proxy: {e}"
            raise ConfigError(msg) from e  # fmt: skip
        if not listen.local() and not listen.curve and not s.allow_insecure:
            msg = (
                f"proxy listen {s.listen} is reachable from other machines without CURVE: "
                "set --curve-secret and --curve-clients, bind loopback, or pass "
                "--allow-insecure"
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
        guard = transport.Guard(ctx) if self.listen.curve else None
        try:
            up = transport.open_socket(ctx, "xsub", self.upstream[0])
            transport.connect_also(up, self.settings.shards[1:])  # the same keys apply
            down = transport.open_socket(ctx, "xpub", self.listen, guard=guard)
            log.info("proxy on %s for %d shards: %s", self.settings.listen,
                     len(self.settings.shards), ", ".join(self.settings.shards))  # fmt: skip
            self._serve(up, down)
        finally:
            restore()
            for sock in (down, up):
                if sock is not None:
                    transport.close(sock, 0)
            if guard is not None:  # before the context: its thread holds a socket
                guard.stop()
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
