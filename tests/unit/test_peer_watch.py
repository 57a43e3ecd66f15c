"""A PeerWatch sees the handshakes that complete before its owner first looks.

On loopback a handshake can complete within a millisecond of the connect; a watch attached
after the connect never sees it, and the peer looks absent until it reconnects (the view
then says "disconnected" beside a running worker; CI caught it once in ~800 runs).
"""

from __future__ import annotations

import time

import pytest

from streamconv.wire import transport
from tests.conftest import HoldingContext

HANDSHAKES_S = 0.5  # long enough for every handshake on loopback to be over before we look


@pytest.mark.parametrize(("kind", "server"), [("sub", "xpub"), ("push", "pull")])
def test_a_handshake_before_the_first_look_is_counted(
    zmq_ctx: transport.Context, kind: transport.Kind, server: transport.Kind
) -> None:
    servers = [
        transport.open_socket(
            zmq_ctx, server, transport.socket_settings("tcp://127.0.0.1:*", True, 8, 0)
        )
        for _ in range(2)
    ]
    first, *more = [transport.endpoint(s) for s in servers]
    settings = transport.socket_settings(first, False, 8, 0)
    _sock, watch = transport.open_watched(zmq_ctx, kind, settings, more=more)
    try:
        time.sleep(HANDSHAKES_S)
        deadline = time.monotonic() + 10
        while watch.update(100) < 2 and time.monotonic() < deadline:
            pass
        assert watch.peers == 2  # both endpoints: the first and the `more` one
        assert watch.refused is None
    finally:
        watch.close()


def test_a_connect_that_cannot_start_closes_what_it_opened(zmq_ctx: transport.Context) -> None:
    settings = transport.socket_settings("tcp://127.0.0.1:1", False, 8, 0)
    with pytest.raises(transport.ZMQError):
        transport.open_watched(zmq_ctx, "sub", settings, more=["tcp://no-such-host-name:"])
    assert isinstance(zmq_ctx, HoldingContext)
    assert zmq_ctx.held  # the socket and its monitor
    assert all(s.closed for s in zmq_ctx.held)
