"""Credits: a lossless sender may run WINDOW frames ahead of its slowest lossless subscriber."""

from __future__ import annotations

import logging

import pytest

from streamconv.worker.credits import Credits


def test_the_slowest_subscriber_of_the_session_sets_the_credit() -> None:
    c = Credits(window=4, expire_s=10.0)
    assert c.credit("cam", "s1", 0.0) is None  # nobody to wait for
    c.ack("cam", "fast", "s1", 50, 0.0)
    c.ack("cam", "slow", "s1", 20, 0.0)
    c.ack("other", "x", "s9", 0, 0.0)
    assert c.credit("cam", "s1", 1.0) == 24
    # A subscriber that has seen nothing of this session (it joined mid-stream, or acks an
    # earlier one) needs it from where the stream is now (`at`), never from 0: it would
    # hold the sender back for good, as no output it could ack would come.
    c.ack("cam", "slow", None, 0, 1.0)
    assert c.credit("cam", "s1", 1.0, at=25) == 29
    c.ack("cam", "slow", "s0", 99, 1.0)
    assert c.credit("cam", "s1", 1.0, at=25) == 29
    c.ack("cam", "slow", "s1", 27, 1.0)  # now it has outputs of s1
    assert c.credit("cam", "s1", 1.0, at=40) == 31


def test_a_silent_subscriber_is_no_longer_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    c = Credits(window=4, expire_s=10.0)
    c.ack("cam", "gone", "s1", 5, 0.0)
    c.ack("cam", "here", "s1", 40, 8.0)
    assert c.credit("cam", "s1", 9.0) == 9
    with caplog.at_level(logging.WARNING):
        assert c.credit("cam", "s1", 10.5) == 44
    assert c.expired == 1
    assert "no longer waited for" in caplog.text
    assert c.credit("cam", "s1", 30.0) is None
    assert c.subscribers() == 0
