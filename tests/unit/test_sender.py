"""client.Sender's checks that need no worker: settings and frames it refuses, and why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamconv.client import Sender
from streamconv.errors import ConfigError, ProtocolError, StreamconvError


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"mode": "auto"}, "mode must be one of"),
        ({"socket": {"hwm": -1}}, "queue size must be >= 1"),
        ({"wait_s": -1}, "wait_s must be >= 0"),
        ({"fps": 0.0}, "fps > 0"),
        ({"stream": "a/b"}, "pick another stream id"),
        ({"socket": "nonsense"}, "cannot connect to 'nonsense'.*tcp://HOST:PORT"),
        ({"socket": "tcp://no-port"}, "cannot connect to 'tcp://no-port'"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], fault: str) -> None:
    with pytest.raises(ConfigError, match=fault):
        Sender(**kwargs)


@pytest.mark.parametrize(
    ("frame", "fault"),
    [
        ([[1, 2], [3, 4]], "must be a numpy array"),
        (np.zeros((0, 4), np.uint8), "is empty"),
        (np.zeros((2, 2), np.int64), "dtype int64"),
        (np.zeros((2, 2, 2, 2), np.uint8), "must be"),
        (np.array([[0.0, np.nan]], np.float32), "NaN"),
    ],
)
def test_frames_the_protocol_cannot_carry_are_refused_before_waiting(
    free_endpoint: Callable[[], str], frame: Any, fault: str
) -> None:
    # wait_s=0 waits forever for a worker: a refusal that came after the wait would hang here.
    with Sender(free_endpoint(), wait_s=0) as sender:
        with pytest.raises(ProtocolError, match=fault):
            sender.send(frame)
        assert (sender.sent, sender.dropped) == (0, 0)


def test_defaults_follow_the_mode(free_endpoint: Callable[[], str]) -> None:
    endpoint = free_endpoint()
    with Sender(endpoint) as lossless, Sender(endpoint, mode="live") as live:
        assert (lossless.queue, lossless.linger_ms) == (8, 5000)
        assert (live.queue, live.linger_ms) == (2, 1000)
        assert lossless.session != live.session
        assert not lossless.connected


def test_a_closed_sender_refuses_to_send(free_endpoint: Callable[[], str]) -> None:
    sender = Sender(free_endpoint())
    sender.close()
    sender.close()  # idempotent
    with pytest.raises(StreamconvError, match="closed"):
        sender.send(np.zeros((2, 2), np.uint8))
    assert not sender.eos_sent  # no worker ever answered: nothing, not even eos, was queued
