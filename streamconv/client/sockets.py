"""A client's socket toward the worker as settings: a CaptureSocket, or the endpoint alone, or
the loose keywords a library user gives (`queue=8`, `curve_secret=...`), each checked by the
one settings class, with a bad endpoint explained in the user's words."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from streamconv.config.roles import CaptureSocket
from streamconv.errors import ConfigError
from streamconv.wire import transport

SocketLike = str | Mapping[str, Any] | CaptureSocket


def endpoint_error(endpoint: str, e: Exception) -> ConfigError:
    why = e if isinstance(e, transport.ZMQError) else "not a tcp://, ipc:// or inproc:// endpoint"
    return ConfigError(f"cannot connect to {endpoint!r}: {why} (write e.g. tcp://HOST:PORT)")


def client_socket(socket: SocketLike, mode: str) -> CaptureSocket:
    """`socket` as settings with `mode`'s queue and linger where left to it: a plain string is
    the endpoint, a mapping the fields of CaptureSocket (which validates them)."""
    if isinstance(socket, CaptureSocket):
        return socket.for_mode(mode)
    try:
        settings = CaptureSocket.model_validate(socket)
    except ValidationError as e:
        endpoint = socket if isinstance(socket, str) else socket.get("endpoint", "")
        if any(err["loc"] == ("endpoint",) for err in e.errors()):
            raise endpoint_error(str(endpoint), e) from e
        why = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise ConfigError(f"socket {endpoint!r}: {why}") from e
    return settings.for_mode(mode)


LOOSE = {"queue": "hwm", "linger_ms": "linger_ms", "curve_secret": "curve_secret",
         "curve_server": "curve_server"}  # fmt: skip


def with_loose(socket: SocketLike, loose: dict[str, Any]) -> SocketLike:
    """The socket with the loose keywords a library user may give (`queue=8`,
    `curve_secret=...`, as before sockets were settings) folded in."""
    unknown = set(loose) - set(LOOSE)
    if unknown:
        msg = f"Sender got unexpected keyword(s) {sorted(unknown)}; allowed: {sorted(LOOSE)}"
        raise TypeError(msg)
    fields = {LOOSE[k]: v for k, v in loose.items() if v is not None}
    if not fields:
        return socket
    if isinstance(socket, CaptureSocket):
        return socket.model_copy(update=fields)
    base = {"endpoint": socket} if isinstance(socket, str) else dict(socket)
    return base | fields
