"""Does the worker have a subscriber for a stream yet? Asked through the worker itself.

An eos on stream `_probe` that `watch`es the stream, sent every 100 ms on the sender's own
socket, is answered on the worker's output with `subscribed` (docs/PROTOCOL.md, "Knowing that
a subscriber is connected"). `streamconv capture --wait-subscriber` holds frame 0 until then.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from streamconv.errors import ProtocolError, StartupError
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import PROBE_STREAM

log = logging.getLogger(__name__)

POLL_MS = 100  # one probe per this long; a stop request is seen within it
HINT_S = 3.0  # no answer at all this long: say that the endpoint may be the wrong one


def wait_subscriber(
    push: transport.Socket, sub: transport.Socket, stream: str, where: tuple[str, str],
    limit_s: float, stop: threading.Event,
) -> bool:  # fmt: skip
    """True once the worker says `stream` has a subscriber; False if stopped first.

    `push` reaches the worker's input, `sub` (subscribed to the probe topics) its output;
    `where` is (input, output) for the messages. StartupError after `limit_s` (0: never), or
    at once if the worker's answers cannot say (a worker without `watch`)."""
    endpoint, output = where
    log.info("waiting for a subscriber of stream %s on %s", stream, output)
    prefix, start, answered, hinted, n = protocol.new_session()[:16] + ".", time.monotonic(), \
        False, False, 0  # fmt: skip
    while not stop.is_set():
        n += 1
        transport.send(push, protocol.encode_eos(PROBE_STREAM, f"{prefix}{n}", 0, watch=stream),
                       block=False)  # fmt: skip
        end = time.monotonic() + POLL_MS / 1000
        while (left_ms := int((end - time.monotonic()) * 1000)) > 0:
            subscribed = _answer(sub, prefix, left_ms, stream)
            if subscribed is None:
                continue
            if subscribed:
                log.info("subscriber present for stream %s", stream)
                return True
            answered = True
        waited = time.monotonic() - start
        if not answered and not hinted and waited >= HINT_S:
            hinted = True
            log.warning("no answer on %s yet: is it the output endpoint of the worker at %s? "
                        "(--output)", output, endpoint)  # fmt: skip
        if limit_s and waited >= limit_s:
            raise StartupError(_no_subscriber(stream, where, limit_s, answered))
    return False


def _answer(sub: transport.Socket, prefix: str, timeout_ms: int, stream: str) -> bool | None:
    """`subscribed` of one answer to these probes, or None (no answer, or another's)."""
    frames = transport.recv(sub, timeout_ms)
    if frames is None:
        return None
    try:
        header: dict[str, Any] = protocol.decode_output([f.buffer for f in frames])[0]
    except ProtocolError:
        return None
    if header["stream"] != PROBE_STREAM or not header["session"].startswith(prefix):
        return None  # another client's probe: its answer is about another stream
    if "subscribed" not in header:
        msg = (
            "the worker answers probes without 'subscribed': it is too old to tell whether "
            f"stream {stream} has a subscriber (run without --wait-subscriber)"
        )
        raise StartupError(msg)
    return bool(header["subscribed"])


def _no_subscriber(stream: str, where: tuple[str, str], limit_s: float, answered: bool) -> str:
    endpoint, output = where
    if answered:
        return (
            f"no subscriber of stream {stream} on {output} within {limit_s:g} s; "
            "start one, or --wait to wait longer"
        )
    return (
        f"no answer on {output} within {limit_s:g} s: is it the output endpoint of the worker "
        f"at {endpoint}? (--output)"
    )
