"""Defaults one role takes from another's settings, so that roles started from one file agree.

A capture connects to the worker's input of the same file and finds its outputs at the
worker's output; `subscribe` and `view` connect to that output. Anything set explicitly (in
the file, the environment or a flag) wins; a wildcard bind address is reached on loopback.
"""

from __future__ import annotations

import re

from streamconv.config.roles import Settings

# A worker binds these to listen on every interface; on its own machine it is reached at these.
_WILDCARDS = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}
_TCP = re.compile(r"tcp://(?P<host>.+):(?P<port>\d{1,5})")


def reachable(endpoint: str) -> str:
    """A bound endpoint as a client on the same machine connects to it."""
    match = _TCP.fullmatch(endpoint)
    if match is None or match["host"] not in _WILDCARDS:
        return endpoint
    return f"tcp://{_WILDCARDS[match['host']]}:{match['port']}"


def follow_worker(settings: Settings) -> Settings:
    """`settings` with the clients' unset endpoints taken from its [worker]."""
    w, c, v = settings.worker, settings.capture, settings.view
    capture = c
    if "endpoint" not in c.connect.model_fields_set and not c.shards:
        connect = c.connect.model_copy(update={"endpoint": reachable(w.input.endpoint)})
        update: dict[str, object] = {"connect": connect}
        if c.output is None:
            update["output"] = reachable(w.output.endpoint)
        capture = c.model_copy(update=update)
    view = v
    if "endpoint" not in v.connect.model_fields_set:
        sub = v.connect.model_copy(update={"endpoint": reachable(w.output.endpoint)})
        view = v.model_copy(update={"connect": sub})
    return settings.model_copy(update={"capture": capture, "view": view})
