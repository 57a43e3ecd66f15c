"""ZeroMQ sockets: the only module that creates them (options, bind or connect, close).

Every socket gets LINGER set, so closing it or terminating its context never hangs, and a
bounded high-water mark, so no queue grows without limit. Payload buffers travel zero-copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

log = logging.getLogger(__name__)

Socket = zmq.Socket[Any]
Context = zmq.Context[Any]

DEFAULT_HWM = 8
DEFAULT_LINGER_MS = 1000
DEFAULT_MAX_MSG_BYTES = 256 * 1024 * 1024


def _attach(sock: Socket, endpoint: str, bind: bool) -> Socket:
    try:
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


def push_socket(
    ctx: Context,
    endpoint: str,
    *,
    bind: bool = False,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = DEFAULT_LINGER_MS,
) -> Socket:
    """A PUSH socket for sending frames to a worker.

    Options: `bind` (default connect: the worker binds, captures come and go), `hwm` (SNDHWM,
    messages queued before a send blocks or fails: this is the back-pressure), `linger_ms`
    (how long close waits to flush queued messages).
    """
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    return _attach(sock, endpoint, bind)


def pull_socket(
    ctx: Context,
    endpoint: str,
    *,
    bind: bool = True,
    hwm: int = DEFAULT_HWM,
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
    linger_ms: int = 0,
) -> Socket:
    """A PULL socket for receiving frames.

    Options: `bind` (default bind: the worker is the stable end), `hwm` (RCVHWM),
    `max_msg_bytes` (MAXMSGSIZE, -1 for none: a peer sending a larger message part is
    disconnected before it costs memory), `linger_ms` (LINGER; 0 because nothing is sent).
    """
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
    sock.setsockopt(zmq.LINGER, linger_ms)
    return _attach(sock, endpoint, bind)


def pub_socket(
    ctx: Context,
    endpoint: str,
    *,
    bind: bool = True,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = 0,
) -> Socket:
    """A PUB socket for publishing outputs.

    Options: `bind` (default bind: subscribers connect), `hwm` (SNDHWM per subscriber; a slow
    subscriber loses messages beyond it instead of stalling the worker), `linger_ms` (LINGER;
    0 because PUB delivery is best effort anyway).
    """
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    return _attach(sock, endpoint, bind)


def sub_socket(
    ctx: Context,
    endpoint: str,
    topics: Iterable[bytes | str] = (b"",),
    *,
    bind: bool = False,
    hwm: int = DEFAULT_HWM,
    rcvtimeo_ms: int = -1,
) -> Socket:
    """A SUB socket subscribed to `topics` (prefixes; use protocol.topic / stream_topic).

    Options: `bind` (default connect), `hwm` (RCVHWM), `rcvtimeo_ms` (RCVTIMEO: a recv that
    waits longer raises zmq.Again; -1 waits forever). LINGER is 0: a SUB sends nothing.
    """
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.RCVTIMEO, rcvtimeo_ms)
    sock.setsockopt(zmq.LINGER, 0)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t.encode() if isinstance(t, str) else t)
    return _attach(sock, endpoint, bind)


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


def recv(sock: Socket, timeout_ms: int) -> list[zmq.Frame] | None:
    """One multipart message as zero-copy frames, or None after `timeout_ms`."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return None
    return sock.recv_multipart(copy=False)


def endpoint(sock: Socket) -> str:
    """The endpoint actually bound, e.g. the port chosen for 'tcp://127.0.0.1:*'."""
    return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))


def close(sock: Socket, linger_ms: int | None = None) -> None:
    """Close `sock`; `linger_ms` overrides its LINGER (bounded, so this never hangs)."""
    if not sock.closed:
        sock.close(linger=linger_ms)
