"""The capture role over real sockets: a child process (or thread) pushes, the test pulls."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamconv.capture.role import Capture, CaptureStats, derive_stream
from streamconv.capture.sources import ArraySource, open_source, synthetic_frame, write_sample_video
from streamconv.errors import ConfigError
from streamconv.wire import protocol, transport
from tests.conftest import recv_parts

pytestmark = pytest.mark.integration

CHILD = """
import dataclasses, json, logging, sys
from streamconv.capture.role import Capture
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
stats = Capture(**json.loads(sys.argv[1])).run()
print(json.dumps(dataclasses.asdict(stats)), flush=True)
"""

Spawn = Callable[..., Any]


def pull(ctx: transport.Context, hwm: int = 1) -> tuple[transport.Socket, str]:
    sock = transport.pull_socket(ctx, "tcp://127.0.0.1:*", hwm=hwm)
    return sock, transport.endpoint(sock)


def drain(
    sock: transport.Socket, delay_s: float = 0.0
) -> tuple[list[protocol.InputMessage], protocol.InputMessage]:
    """Every frame up to the eos (bounded: each receive times out), and the eos."""
    frames: list[protocol.InputMessage] = []
    while True:
        if delay_s:
            time.sleep(delay_s)
        msg = protocol.decode_input(recv_parts(sock))
        if msg.kind == "eos":
            return frames, msg
        frames.append(msg)


def finish(proc: Any) -> tuple[CaptureStats, str]:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return CaptureStats(**json.loads(out.strip().splitlines()[-1])), err


def assert_contiguous(frames: list[protocol.InputMessage], eos: protocol.InputMessage) -> None:
    assert [m.seq for m in frames] == list(range(len(frames)))
    assert eos.seq == len(frames)
    assert {m.session for m in frames} <= {eos.session}
    assert all(m.stream == eos.stream for m in frames)


def test_file_arrives_whole_in_order(zmq_ctx: Any, spawn: Spawn, tmp_path: Path) -> None:
    clip = write_sample_video(tmp_path / "clip.mp4", frames=20, size=(64, 48), fps=25.0)
    expected = list(open_source(str(clip)))
    sock, endpoint = pull(zmq_ctx, hwm=4)
    proc = spawn(CHILD, json.dumps({"source": str(clip), "endpoint": endpoint}))
    frames, eos = drain(sock)
    stats, err = finish(proc)
    assert_contiguous(frames, eos)
    assert len(frames) == len(expected) == 20
    for msg, frame in zip(frames, expected, strict=True):
        assert (msg.stream, msg.fps) == ("clip", 25.0)
        np.testing.assert_array_equal(msg.frame, frame)
    assert (stats.sent, stats.dropped, stats.stopped, stats.eos_sent) == (20, 0, False, True)
    assert "capture: sent 20, dropped 0 (lossless mode)" in err


def test_lossless_waits_for_a_slow_reader(zmq_ctx: Any, spawn: Spawn) -> None:
    # 40 frames of 900 kB: far more than the socket buffers hold, so the sender must wait.
    sock, endpoint = pull(zmq_ctx)
    args = {"source": "synthetic:640x480:40", "endpoint": endpoint, "queue_size": 1}
    proc = spawn(CHILD, json.dumps(args))
    time.sleep(1.0)
    frames, eos = drain(sock, delay_s=0.02)
    stats, _ = finish(proc)
    assert_contiguous(frames, eos)
    assert len(frames) == 40
    for i, msg in enumerate(frames):
        np.testing.assert_array_equal(msg.frame, synthetic_frame(i, 640, 480))
    assert (stats.sent, stats.dropped) == (40, 0)
    assert stats.seconds > 0.5, "the capture never waited: no back-pressure"


def test_live_mode_drops_and_counts_without_seq_gaps(zmq_ctx: Any, spawn: Spawn) -> None:
    sock, endpoint = pull(zmq_ctx)
    total = 200
    args = {"source": f"synthetic:320x240:{total}", "endpoint": endpoint, "mode": "live"}
    proc = spawn(CHILD, json.dumps(args))
    time.sleep(1.0)  # not reading: the queue fills and live mode must drop
    frames, eos = drain(sock, delay_s=0.002)
    stats, err = finish(proc)
    assert_contiguous(frames, eos)
    assert stats.dropped > 0
    assert stats.sent + stats.dropped == total
    assert len(frames) == stats.sent
    assert f"capture: sent {stats.sent}, dropped {stats.dropped} (live mode)" in err


def test_sigterm_stops_and_sends_eos(zmq_ctx: Any, spawn: Spawn) -> None:
    sock, endpoint = pull(zmq_ctx, hwm=4)
    args = {"source": "synthetic:32x24:10", "endpoint": endpoint, "loop": True, "realtime": True}
    proc = spawn(CHILD, json.dumps(args))
    for _ in range(3):
        recv_parts(sock)
    proc.send_signal(signal.SIGTERM)
    frames, eos = drain(sock)
    stats, err = finish(proc)
    assert stats.stopped
    assert stats.eos_sent
    assert eos.seq == stats.sent == len(frames) + 3
    assert "stop requested" in err


def test_stop_from_another_thread_and_realtime_pacing(zmq_ctx: Any) -> None:
    sock, endpoint = pull(zmq_ctx, hwm=4)
    source = ArraySource([np.full((4, 5), i, np.uint8) for i in range(4)], fps=50.0, loop=True)
    capture = Capture(source, endpoint=endpoint, realtime=True, stream="s1")
    result: list[CaptureStats] = []
    thread = threading.Thread(target=lambda: result.append(capture.run()))
    thread.start()
    try:
        first = [protocol.decode_input(recv_parts(sock)) for _ in range(11)]
    finally:
        capture.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    rest, eos = drain(sock)
    frames = first + rest
    assert_contiguous(frames, eos)
    values = [-1 if m.frame is None else int(m.frame[0, 0]) for m in frames]
    assert values == [i % 4 for i in range(len(frames))]
    # 50 fps: frame 10 leaves no earlier than 200 ms after frame 0
    assert first[10].t_ns - first[0].t_ns >= 0.19e9
    (stats,) = result
    assert stats.stopped
    assert stats.sent == len(frames)


def test_mode_and_stream_defaults() -> None:
    assert Capture("synthetic:8x8:1").mode == "lossless"
    assert Capture(ArraySource([], live=True)).mode == "live"
    assert Capture(ArraySource([], live=True), mode="lossless").mode == "lossless"
    assert Capture(ArraySource([]), mode="live").queue_size == 2
    assert derive_stream("0") == "cam0"
    assert derive_stream("clips/my clip.mp4") == "my_clip"
    assert derive_stream("rtsp://host:554/live/front") == "front"
    assert derive_stream("frames/") == "frames"


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"mode": "fast"}, "mode"),
        ({"stream": "a/b"}, "stream id"),
        ({"queue_size": 0}, "queue size"),
        ({"endpoint": "nonsense"}, "cannot connect"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], fault: str) -> None:
    with pytest.raises(ConfigError, match=fault):
        Capture("synthetic:8x8:1", **kwargs).run()


def test_spec_options_with_a_source_object_are_rejected() -> None:
    with pytest.raises(ConfigError, match="resize"):
        Capture(ArraySource([]), gray=True)
