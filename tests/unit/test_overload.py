"""Thinning live streams: the newest frames of each live session win; nothing else is touched."""

from __future__ import annotations

import numpy as np

from streamconv.wire.protocol import InputMessage
from streamconv.worker.overload import thin_live

PIXELS = np.zeros((2, 2), np.uint8)


def frame(stream: str, seq: int, *, live: bool = True, session: str = "s") -> InputMessage:
    return InputMessage("frame", stream, session, seq, 0, PIXELS, live=live)


def test_only_the_newest_frames_of_a_live_stream_are_kept() -> None:
    messages = [frame("cam", i) for i in range(6)]
    kept, dropped = thin_live(messages, keep=2)
    assert [m.seq for m in kept] == [4, 5]
    assert dropped == {"cam": 4}


def test_lossless_streams_eos_and_other_sessions_are_untouched() -> None:
    messages = [frame("file", i, live=False) for i in range(5)]
    messages += [frame("cam", i) for i in range(3)]
    messages.append(InputMessage("eos", "cam", "s", 3, 0))
    messages += [frame("cam", i, session="t") for i in range(2)]  # a new session: its own count
    kept, dropped = thin_live(messages, keep=1)
    assert [(m.stream, m.session, m.seq, m.kind) for m in kept] == (
        [("file", "s", i, "frame") for i in range(5)]
        + [("cam", "s", 2, "frame"), ("cam", "s", 3, "eos"), ("cam", "t", 1, "frame")]
    )
    assert dropped == {"cam": 3}
    untouched, none = thin_live(messages[:5], keep=1)
    assert untouched == messages[:5]
    assert not none
