"""`streamconv proxy`: one output endpoint for every shard's, an XSUB/XPUB forwarder.

Subscribers connect to the proxy instead of to each worker; their subscriptions go up to
every shard, the shards' outputs come down to them. It holds no state and decodes nothing:
restart it at will (subscribers reconnect by themselves). With CURVE it is a client of the
workers (`curve_secret` + `curve_server`: its key must be among the workers' clients) and a
server to its subscribers (`curve_clients`); without, it binds loopback unless
`allow_insecure`.

The workers are a shard list like the capture's: endpoints, or `dns://NAME:PORT` for every
address NAME resolves to (a Kubernetes headless Service lists its pods). A thread resolves the
list every REFRESH_S; the loop connects to workers that appear and disconnects from those that
are gone. A new connection gets every subscription the proxy holds (the XSUB replays them), so
its outputs reach the subscribers at once. It serves /healthz, /readyz, /metrics and /status
(streamconv.health) on `http`.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry

from streamconv import health
from streamconv.config import ProxySettings, SocketSettings
from streamconv.errors import ConfigError, StartupError
from streamconv.httpserver import HttpServer
from streamconv.signals import on_stop
from streamconv.wire import transport
from streamconv.wire.shards import parse_shards, resolve

log = logging.getLogger(__name__)

POLL_MS = 100  # how soon a stop request (or a change of workers) is noticed
BATCH = 256  # messages forwarded per side before looking at the other side again
REFRESH_S = 10.0  # dns:// shards: how often the names are resolved again


class Workers:
    """The workers' output endpoints as the shard list resolves now. With `dns://` entries a
    thread resolves it every REFRESH_S (a slow lookup never holds up forwarding); the proxy's
    loop takes each new answer and is the only one to touch its sockets."""

    def __init__(self, shards: list[str], stop: threading.Event) -> None:
        self.shards, self.stop = shards, stop
        self.dynamic = any(s.startswith("dns://") for s in shards)
        self._lock = threading.Lock()
        self._latest: list[str] | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="proxy-dns", daemon=True)

    def start(self) -> None:
        if not self.dynamic:
            self._latest = resolve(self.shards)
            return
        self._thread.start()

    def join(self, timeout_s: float = 5.0) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                found = resolve(self.shards)
            except ConfigError as e:  # no pod yet, or DNS away: the last answer stands
                if not self._failing:
                    log.warning("proxy: %s; trying again every %.0f s", e, REFRESH_S)
                self._failing = True
            else:
                self._failing = False
                with self._lock:
                    self._latest = found
            self.stop.wait(REFRESH_S)

    def take(self) -> list[str] | None:
        """The newest answer not taken yet, or None."""
        with self._lock:
            found, self._latest = self._latest, None
        return found


class Proxy:
    def __init__(self, settings: ProxySettings) -> None:
        s = self.settings = settings
        self.shards = parse_shards(s.shards)
        if not self.shards:
            msg = (
                "the proxy needs the workers' output endpoints: --shards EP,EP,... or "
                "dns://SERVICE:PORT"
            )
            raise ConfigError(msg)
        if s.curve_secret is not None and s.curve_server is None:
            msg = "a CURVE proxy is a client of the workers: give --curve-server (their NAME.key)"
            raise ConfigError(msg)
        try:
            listen = s.listen_socket()
            for e in self.shards:  # a static entry's mistakes show now, not at run time
                if not e.startswith("dns://"):
                    s.upstream(e)
        except ValueError as e:
            msg = f"proxy: {e}"
            raise ConfigError(msg) from e  # fmt: skip
        if listen.exposed() and not s.allow_insecure:
            msg = (
                f"proxy listen {s.listen} is reachable from other machines without CURVE: "
                "set --curve-secret and --curve-clients, bind loopback, or pass "
                "--allow-insecure"
            )
            raise ConfigError(msg)
        self.listen = listen
        self.http_address = s.http_address()
        self.stop_event = threading.Event()
        self.forwarded = 0
        self.subscriptions = 0
        self.connected: list[str] = []  # written by the loop only
        self.health = health.Health(info={"listen": s.listen, "shards": self.shards})
        self.health.live = lambda: {"workers": list(self.connected),
                                    "forwarded": self.forwarded,
                                    "subscription_changes": self.subscriptions}  # fmt: skip

    def upstream(self, endpoint: str) -> SocketSettings:
        """The proxy's socket settings toward one worker's output (a CURVE client of it)."""
        return self.settings.upstream(endpoint)

    def stop(self) -> None:
        self.stop_event.set()

    def _values(self) -> list[health.Value]:
        return [
            health.Value("streamconv_proxy_messages_forwarded", "Worker outputs sent on to "
                         "subscribers", "counter", lambda: self.forwarded),
            health.Value("streamconv_proxy_subscription_changes", "Subscribes and "
                         "unsubscribes passed up to the workers", "counter",
                         lambda: self.subscriptions),
            health.Value("streamconv_proxy_workers", "Worker outputs connected now", "gauge",
                         lambda: len(self.connected)),
        ]  # fmt: skip

    def run(self) -> None:
        restore = on_stop(lambda signum: self.stop_event.set())
        ctx = transport.context()
        up = down = None
        guard = transport.Guard(ctx) if self.listen.curve else None
        workers = Workers(self.shards, self.stop_event)
        reg = health.registry(health.ValuesCollector(self._values()))
        http = None
        try:
            down = transport.open_socket(ctx, "xpub", self.listen, guard=guard)
            log.info("proxy on %s for %s", self.settings.listen, ", ".join(self.shards))
            http = self._serve_http(reg)
            workers.start()
            self.health.phase = "ready"
            up = self._serve(ctx, down, workers)
        finally:
            self.health.phase = "stopping"
            self.stop_event.set()  # ends the resolving thread too
            restore()
            for sock in (down, up):
                if sock is not None:
                    transport.close(sock, 0)
            if guard is not None:  # before the context: its thread holds a socket
                guard.stop()
            ctx.term()
            workers.join()
            if http is not None:
                http.stop()
            log.info("proxy stopped: %d messages forwarded, %d subscription changes",
                     self.forwarded, self.subscriptions)  # fmt: skip

    def _serve_http(self, reg: CollectorRegistry) -> HttpServer | None:
        try:
            return health.serve(self.http_address, "proxy", self.health, reg)
        except StartupError as e:
            if self.settings.http is not None:  # asked for: a taken port is an error
                raise
            # The default port (listen + 1) is a convenience: taken, the proxy still forwards.
            log.warning("proxy: %s; no /healthz, /metrics: set --http", e)
            return None

    def _serve(
        self, ctx: transport.Context, down: transport.Socket, workers: Workers
    ) -> transport.Socket | None:
        """Forward until stopped; the upstream socket (None if no worker was ever found)."""
        up: transport.Socket | None = None
        while not self.stop_event.is_set():
            self.health.beat = time.monotonic()
            found = workers.take()
            if found is not None:
                up = self._follow(ctx, up, found)
            if up is None:  # no worker yet: subscriptions wait in the XPUB's queue
                self.stop_event.wait(POLL_MS / 1000)
                continue
            ready = transport.wait_readable([up, down], POLL_MS)
            if down in ready:  # subscriptions (and unsubscriptions) go up to every shard
                self.subscriptions += _forward(down, up)
            if up in ready:
                self.forwarded += _forward(up, down)
        return up

    def _follow(
        self, ctx: transport.Context, up: transport.Socket | None, found: list[str]
    ) -> transport.Socket | None:
        """Connect to the workers in `found` that are new, disconnect from the gone ones."""
        joined = [e for e in found if e not in self.connected]
        left = [e for e in self.connected if e not in found]
        for endpoint in left:
            if up is not None:
                up.disconnect(endpoint)  # its queued outputs go with its pipe
            log.info("proxy: worker %s left", endpoint)
        for endpoint in joined:
            if up is None:
                up = transport.open_socket(ctx, "xsub", self.upstream(endpoint))
            else:
                transport.connect_also(up, [endpoint])  # the same keys apply
            log.info("proxy: worker %s joined", endpoint)
        self.connected = [e for e in self.connected if e in found] + joined
        return up


def _forward(src: transport.Socket, dst: transport.Socket) -> int:
    n = 0
    while n < BATCH and (parts := transport.recv_nowait(src)) is not None:
        transport.send(dst, parts)
        n += 1
    return n
