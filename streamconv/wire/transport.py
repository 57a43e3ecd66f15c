"""ZeroMQ sockets: the only module that makes contexts and sockets or sets socket options.

A socket is described as data (config.SocketSettings) and opened by `open_socket`. Every
socket gets LINGER set, so closing it or terminating its context never hangs, and a bounded
high-water mark, so no queue grows without limit. Payload buffers travel zero-copy.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import zmq
from pydantic import ValidationError
from zmq.utils.monitor import recv_monitor_message

from streamconv.config.roles import SocketSettings
from streamconv.errors import ConfigError
from streamconv.wire import curve

log = logging.getLogger(__name__)

Socket = zmq.Socket[Any]
Context = zmq.Context[Any]
Frame = zmq.Frame
Kind = Literal["push", "pull", "pub", "xpub", "sub", "xsub"]
_TYPES = {"push": zmq.PUSH, "pull": zmq.PULL, "pub": zmq.PUB, "xpub": zmq.XPUB, "sub": zmq.SUB,
          "xsub": zmq.XSUB}  # fmt: skip
_SENDS = {"push", "pub", "xpub"}

DEFAULT_HWM = 8
DEFAULT_LINGER_MS = 1000


def context() -> Context:
    """A new ZeroMQ context for one process or role (each process makes its own)."""
    return zmq.Context()


def open_socket(
    ctx: Context,
    kind: Kind,
    s: SocketSettings,
    *,
    topics: Iterable[bytes | str] = (),
    guard: curve.Guard | None = None,
    more: Iterable[str] = (),
) -> Socket:
    """The socket `s` describes: options set, CURVE keys loaded, then bound or connected
    (to `more` endpoints too, with the same options: every shard's outputs on one SUB).

    Sending kinds get SNDHWM, receiving kinds RCVHWM and MAXMSGSIZE (a peer sending a larger
    part is disconnected before it costs memory). An XPUB passes every subscribe and
    unsubscribe up (XPUB_VERBOSER), so its owner can count subscriptions. A SUB subscribes to
    `topics` (prefixes). A CURVE server socket (bound, with `curve_secret`) lets in only the
    keys in `curve_clients`, checked by `guard` (the context's ZAP authenticator). Raises
    zmq.ZMQError when the endpoint cannot be bound or parsed, ConfigError for bad key files.
    """
    sock = _prepared(ctx, kind, s, topics, guard)
    try:
        _attach(sock, s, more)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def open_watched(
    ctx: Context,
    kind: Kind,
    s: SocketSettings,
    *,
    topics: Iterable[bytes | str] = (),
    more: Iterable[str] = (),
) -> tuple[Socket, PeerWatch]:
    """A connecting socket as open_socket makes it, and a PeerWatch that was listening
    before the first connect: on loopback the handshake can complete before a watch
    attached afterwards starts, and that handshake would never be seen (the peer would
    look absent until it reconnects). Raises like open_socket."""
    sock = _prepared(ctx, kind, s, topics, None)
    watch = PeerWatch(sock)
    try:
        _attach(sock, s, more)
    except BaseException:
        watch.close()
        sock.close(linger=0)
        raise
    return sock, watch


def _prepared(
    ctx: Context, kind: Kind, s: SocketSettings, topics: Iterable[bytes | str],
    guard: curve.Guard | None,
) -> Socket:  # fmt: skip
    """A new socket with every option of `s` set, not yet bound or connected."""
    keys = _curve_keys(s, guard)
    sock = ctx.socket(_TYPES[kind])
    if keys is not None:
        keys(sock)
    sock.setsockopt(zmq.LINGER, s.linger_ms)
    if kind in _SENDS:
        sock.setsockopt(zmq.SNDHWM, s.hwm)
    else:
        sock.setsockopt(zmq.RCVHWM, s.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, s.max_message_bytes)
    if kind == "xpub":
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
    for t in topics:
        subscribe(sock, t)
    return sock


def _attach(sock: Socket, s: SocketSettings, more: Iterable[str]) -> None:
    if s.bind:
        sock.bind(s.endpoint)
    else:
        sock.connect(s.endpoint)
    connect_also(sock, more, bind=s.bind)


def _curve_keys(s: SocketSettings, guard: curve.Guard | None) -> Callable[[Socket], None] | None:
    """Load the key files first (a bad file is a ConfigError before any socket exists)."""
    if s.curve_secret is None:
        return None
    pair = curve.load_secret(s.curve_secret)
    if s.bind:
        if guard is None or s.curve_clients is None:
            msg = f"{s.endpoint}: a CURVE server socket needs an authenticator and curve_clients"
            raise ConfigError(msg)
        domain = guard.allow(curve.load_allowed(s.curve_clients))
        return lambda sock: curve.serve(sock, pair, domain)
    if s.curve_server is None:
        msg = f"{s.endpoint}: a CURVE client socket needs curve_server"
        raise ConfigError(msg)
    server = curve.load_public(s.curve_server)
    return lambda sock: curve.client(sock, pair, server)


def socket_settings(
    endpoint: str, bind: bool, hwm: int, linger_ms: int, **kw: Any
) -> SocketSettings:
    """SocketSettings from loose values; a bad value other than the endpoint is a ConfigError."""
    try:
        return SocketSettings(endpoint=endpoint, bind=bind, hwm=hwm, linger_ms=linger_ms, **kw)
    except ValidationError as e:
        if any(err["loc"] and err["loc"][0] == "endpoint" for err in e.errors()):
            raise  # callers explain a bad endpoint themselves
        why = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise ConfigError(f"socket {endpoint!r}: {why}") from e


def push_socket(
    ctx: Context,
    endpoint: str,
    *,
    bind: bool = False,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = DEFAULT_LINGER_MS,
    **keys: Any,
) -> Socket:
    """A PUSH socket for sending frames (shorthand for open_socket); `keys` as for sub_socket."""
    return open_socket(ctx, "push", socket_settings(endpoint, bind, hwm, linger_ms, **keys))


def pull_socket(
    ctx: Context,
    endpoint: str,
    *,
    bind: bool = True,
    hwm: int = DEFAULT_HWM,
    max_msg_bytes: int = -1,
    linger_ms: int = 0,
) -> Socket:
    """A PULL socket for receiving frames (shorthand for open_socket)."""
    settings = socket_settings(endpoint, bind, hwm, linger_ms, max_message_bytes=max_msg_bytes)
    return open_socket(ctx, "pull", settings)


def pub_socket(
    ctx: Context, endpoint: str, *, bind: bool = True, hwm: int = DEFAULT_HWM, linger_ms: int = 0
) -> Socket:
    """A PUB socket for publishing outputs (shorthand for open_socket)."""
    return open_socket(ctx, "pub", socket_settings(endpoint, bind, hwm, linger_ms))


def sub_socket(
    ctx: Context,
    endpoint: str | Sequence[str],
    topics: Iterable[bytes | str] = (b"",),
    *,
    bind: bool = False,
    hwm: int = DEFAULT_HWM,
    **keys: Any,
) -> Socket:
    """A SUB socket subscribed to `topics` (shorthand for open_socket), connected to one
    endpoint or to several (every shard's output: one socket fans them in); `keys`:
    curve_secret and curve_server for a CURVE client (the same server key on every one)."""
    endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    if not endpoints:
        msg = "a subscriber needs at least one endpoint to connect to"
        raise ConfigError(msg)
    first = socket_settings(endpoints[0], bind, hwm, 0, **keys)
    return open_socket(ctx, "sub", first, topics=topics, more=endpoints[1:])


def connect_also(sock: Socket, endpoints: Iterable[str], *, bind: bool = False) -> None:
    """Connect (or bind) an open socket to more endpoints, with its options as they are."""
    for endpoint in endpoints:
        socket_settings(endpoint, bind, 1, 0)  # the same endpoint checks as open_socket's
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)


def retarget(sock: Socket, old: str, new: str) -> None:
    """Move a connecting socket from endpoint `old` to `new` (its options, CURVE keys and
    monitor stay). Messages still queued for `old` are dropped with its pipe."""
    socket_settings(new, False, 1, 0)  # the same endpoint checks as open_socket's
    with contextlib.suppress(zmq.ZMQError):  # already gone is fine
        sock.disconnect(old)
    sock.connect(new)


def subscribe(sock: Socket, topic: bytes | str) -> None:
    sock.setsockopt(zmq.SUBSCRIBE, topic.encode() if isinstance(topic, str) else topic)


def unsubscribe(sock: Socket, topic: bytes | str) -> None:
    sock.setsockopt(zmq.UNSUBSCRIBE, topic.encode() if isinstance(topic, str) else topic)


def send(sock: Socket, parts: Sequence[Any], *, block: bool = True) -> bool:
    """Send a multipart message, payloads zero-copy; False if `block` is off and it would block.

    Small parts are copied by pyzmq anyway (below zmq.COPY_THRESHOLD), so headers cost nothing.
    """
    try:
        sock.send_multipart(parts, flags=0 if block else zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def wait_writable(sock: Socket, timeout_ms: int) -> bool:
    """True once `sock` can take a message without blocking, False after `timeout_ms`."""
    return bool(sock.poll(timeout_ms, zmq.POLLOUT))


def recv(sock: Socket, timeout_ms: int) -> list[Frame] | None:
    """One multipart message as zero-copy frames, or None after `timeout_ms`."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return None
    return sock.recv_multipart(copy=False)


def recv_nowait(sock: Socket) -> list[Frame] | None:
    """One multipart message if one is waiting, else None."""
    try:
        return sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None


def wait_readable(socks: Sequence[Socket], timeout_ms: int) -> list[Socket]:
    """The sockets of `socks` with a message waiting, after at most `timeout_ms`."""
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    ready = dict(poller.poll(timeout_ms))
    return [s for s in socks if s in ready]


def subscription_event(parts: Sequence[Frame]) -> tuple[bool, bytes] | None:
    """An XPUB's incoming message as (subscribed, topic), or None if it is something else."""
    raw = parts[0].bytes if parts else b""
    if not raw or raw[0] not in (0, 1):
        return None
    return raw[0] == 1, raw[1:]


_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_REFUSED: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the worker refused this client's key: its public "
    "certificate is not in the worker's curve_clients folder",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the security handshake failed: a wrong "
    "--curve-server (it must be the worker's public certificate), or CURVE on one end only",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the security handshake failed (protocol error): "
    "CURVE on one end only, or a wrong --curve-server",
}
_NO_KEYS = (
    "the worker requires CURVE and this client has no keys: pass --curve-secret (this "
    "client's NAME.key_secret; its NAME.key must be in the worker's curve_clients folder) and "
    "--curve-server (the worker's public certificate)"
)
_NOT_CURVE = (
    "this client uses CURVE and the worker does not: leave out --curve-secret and "
    "--curve-server, or give the worker its keys"
)


REFUSED_AFTER = 3  # handshakes failed in a row (ZeroMQ reconnects every 100 ms) = refused


def _refusal(sock: Socket, event: int, value: int) -> str:
    """Why handshakes of the connecting `sock` fail, in the user's words. Without keys, only
    a CURVE server fails them: it hangs up on the greeting, which this end sees either as a
    mechanism mismatch or, when its own write comes first, as a failure with no detail."""
    if sock.getsockopt(zmq.MECHANISM) != zmq.CURVE:
        return _NO_KEYS
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return _NOT_CURVE
    return _REFUSED.get(event, _REFUSED[zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL])


class PeerWatch:
    """Watches a connecting socket's peers: has a handshake with the other end completed?

    ZeroMQ connects in the background, so a PUSH accepts messages whether or not a worker is
    there; this tells the two apart (events from the socket monitor).
    """

    def __init__(self, sock: Socket) -> None:
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _FAILED
        self._mon = sock.get_monitor_socket(events)
        self._sock = sock
        self.peers = 0  # handshakes completed minus disconnects
        self.disconnects = 0
        self.refused: str | None = None  # why the handshakes fail, once they keep failing
        self._failures = 0  # handshakes failed in a row

    def update(self, timeout_ms: int = 0) -> int:
        """Take pending events (waiting up to `timeout_ms` for the first); the peer count."""
        while self._mon.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            message = recv_monitor_message(self._mon)
            event = message["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.peers += 1
                self.refused, self._failures = None, 0
            elif event & _FAILED:
                # A peer killed mid-handshake fails it once too (no detail; ZeroMQ retries):
                # only failures that repeat on every reconnect are a refusal, or a final
                # verdict: a denial by the worker's authenticator, or a protocol error (CURVE
                # on one end only), after which ZeroMQ never reconnects.
                self._failures += 1
                final = event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                if final or self._failures >= REFUSED_AFTER:
                    self.refused = _refusal(self._sock, int(event), int(message["value"]))
            elif event == zmq.EVENT_DISCONNECTED:
                self.peers = max(0, self.peers - 1)
                self.disconnects += 1
        return self.peers

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.disable_monitor()
        self._mon.close(linger=0)


_REFUSALS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH


class RefusalWatch:
    """Counts the client handshakes bound sockets refuse: a key not allowed (the ZAP
    authenticator's denial), no keys at a CURVE socket or keys at a plaintext one, a wrong
    server key. A client that merely drops mid-handshake (a port probe) is not counted.
    Events wait in the monitor's queue (its high-water mark bounds it) until `take()`."""

    def __init__(self, socks: dict[str, Socket]) -> None:
        self._socks = socks
        self._mons = {name: sock.get_monitor_socket(_REFUSALS) for name, sock in socks.items()}

    def take(self) -> dict[str, int]:
        """The handshakes refused since the last call, per socket name (never blocks)."""
        out: dict[str, int] = {}
        for name, mon in self._mons.items():
            while mon.poll(0, zmq.POLLIN):
                recv_monitor_message(mon)
                out[name] = out.get(name, 0) + 1
        return out

    def close(self) -> None:
        for name, mon in self._mons.items():
            sock = self._socks[name]
            if not sock.closed:
                sock.disable_monitor()
            mon.close(linger=0)


def endpoint(sock: Socket) -> str:
    """The endpoint actually bound, e.g. the port chosen for 'tcp://127.0.0.1:*'."""
    return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))


def close(sock: Socket, linger_ms: int | None = None) -> None:
    """Close `sock`; `linger_ms` overrides its LINGER (bounded, so this never hangs)."""
    if not sock.closed:
        sock.close(linger=linger_ms)


ZMQError = zmq.ZMQError  # what open_socket raises, for callers that import no zmq
Guard = curve.Guard  # the ZAP authenticator a CURVE server socket needs
peer_key = curve.peer_key  # the CURVE key a message came from
