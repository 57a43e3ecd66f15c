"""The capture role over real sockets: a child process (or thread) pushes, the test pulls."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamconv.capture.role import Capture, CaptureStats, derive_stream
from streamconv.capture.sources import ArraySource, open_source, synthetic_frame, write_sample_video
from streamconv.client import Subscriber
from streamconv.errors import ConfigError
from streamconv.wire import protocol, transport
from streamconv.wire.protocol import PROBE_STREAM
from tests.conftest import REPO, recv_parts

pytestmark = pytest.mark.integration

CHILD = """
import dataclasses, json, logging, sys
from streamconv.capture.role import Capture
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
args = json.loads(sys.argv[1])
stats = Capture(args.pop("source"), **args).run()
print(json.dumps(dataclasses.asdict(stats)), flush=True)
"""

Spawn = Callable[..., Any]


def pull(ctx: transport.Context, hwm: int = 1) -> tuple[transport.Socket, str]:
    sock = transport.pull_socket(ctx, "tcp://127.0.0.1:*", hwm=hwm)
    return sock, transport.endpoint(sock)


def take(sock: transport.Socket) -> protocol.InputMessage:
    """The next message the capture sent, past its probes (a worker answers those; this
    stand-in has no output socket to answer on)."""
    while True:
        msg = protocol.decode_input(recv_parts(sock))
        if msg.stream != PROBE_STREAM:
            return msg


def drain(
    sock: transport.Socket, delay_s: float = 0.0
) -> tuple[list[protocol.InputMessage], protocol.InputMessage]:
    """Every frame up to the eos (bounded: each receive times out), and the eos."""
    frames: list[protocol.InputMessage] = []
    while True:
        if delay_s:
            time.sleep(delay_s)
        msg = take(sock)
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
    assert (stats.disconnects, stats.drained) == (0, True)
    assert f"capture: queued 20 frames to {endpoint}, dropped 0 (lossless mode) in " in err
    assert "the worker's connection held throughout" in err


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
    assert stats.dropped_no_worker == 0
    assert f"queued {stats.sent} frames to {endpoint}, dropped {stats.dropped} (live mode)" in err


def test_stop_from_another_thread_and_realtime_pacing(zmq_ctx: Any) -> None:
    sock, endpoint = pull(zmq_ctx, hwm=4)
    source = ArraySource([np.full((4, 5), i, np.uint8) for i in range(4)], fps=50.0, loop=True)
    capture = Capture(source, endpoint=endpoint, realtime=True, stream="s1")
    result: list[CaptureStats] = []
    thread = threading.Thread(target=lambda: result.append(capture.run()))
    thread.start()
    try:
        first = [take(sock) for _ in range(11)]
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
    assert derive_stream("frames/*.png") == "frames"


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"mode": "fast"}, "mode"),
        ({"stream": "a/b"}, "stream id"),
        ({"queue_size": -1}, "queue size"),
        ({"endpoint": "nonsense"}, "cannot connect"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], fault: str) -> None:
    with pytest.raises(ConfigError, match=fault):
        Capture("synthetic:8x8:1", **kwargs).run()


def test_spec_options_with_a_source_object_are_rejected() -> None:
    with pytest.raises(ConfigError, match="resize"):
        Capture(ArraySource([]), gray=True)


# -- the `streamconv capture` command, as a user runs it -------------------------------------


@dataclass
class CaptureCli:
    """A running `python -m streamconv capture ...`; its stderr is read as it comes."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def err(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in list(self.lines)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                time.sleep(0.2)  # the last lines of an exited process
                if any(text in line for line in self.lines):
                    return
                pytest.fail(f"capture logged no {text!r} (exit {self.proc.poll()}):\n{self.err()}")
            time.sleep(0.02)

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """A receive that fails inside says what the capture logged (and whether it exited)."""
        try:
            yield
        except pytest.fail.Exception as e:
            pytest.fail(f"{e}; capture exit {self.proc.poll()}, its log:\n{self.err()}")

    def finish(self, timeout_s: float = 20.0) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"capture did not exit within {timeout_s} s:\n{self.err()}")
        if self.reader is not None:
            self.reader.join(5)
        return code, self.err()


@pytest.fixture
def capture_cli(python_env: dict[str, str]) -> Iterator[Callable[..., CaptureCli]]:
    """capture_cli(*args) starts `python -m streamconv capture *args`; killed at teardown."""
    started: list[CaptureCli] = []

    def start(*args: str) -> CaptureCli:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamconv", "capture", *args],
            cwd=REPO, env=python_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        cli = CaptureCli(proc)
        cli.reader = threading.Thread(target=cli._drain, daemon=True)
        cli.reader.start()
        started.append(cli)
        return cli

    yield start
    for cli in started:
        if cli.proc.poll() is None:
            cli.proc.kill()
        cli.proc.wait(10)
        if cli.reader is not None:
            cli.reader.join(5)
        if cli.proc.stderr is not None:
            cli.proc.stderr.close()


def rebind(ctx: transport.Context, endpoint: str) -> transport.Socket:
    """A PULL on the endpoint a closed one held (the port may take a moment to free)."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return transport.pull_socket(ctx, endpoint, hwm=4)
        except transport.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("mode", ["lossless", "live"])
def test_no_worker_exits_3_within_wait(
    capture_cli: Callable[..., CaptureCli], free_endpoint: Callable[[], str], mode: str
) -> None:
    # Before: lossless blocked forever, and live dropped nearly every frame, then exited 0.
    endpoint = free_endpoint()
    start = time.monotonic()
    cli = capture_cli("synthetic:64x48:10", "--connect", endpoint, "--wait", "1", "--mode", mode)
    code, err = cli.finish()
    assert code == 3, err
    assert time.monotonic() - start < 10
    assert (
        f"streamconv: no worker answered at {endpoint} within 1 s; is `streamconv worker` "
        "running? (--wait to wait longer)"
    ) in err
    assert "queued" not in err  # no claim about frames that went nowhere


def test_sigterm_while_waiting_for_a_worker_exits_0(
    capture_cli: Callable[..., CaptureCli], free_endpoint: Callable[[], str]
) -> None:
    endpoint = free_endpoint()
    cli = capture_cli("synthetic:64x48:10", "--connect", endpoint, "--wait", "0")
    cli.wait_for_line(f"waiting for a worker at {endpoint} (no time limit)")
    signalled = time.monotonic()
    cli.proc.send_signal(signal.SIGTERM)
    code, err = cli.finish()
    assert code == 0, err
    assert time.monotonic() - signalled < 3
    assert "capture: queued nothing in " in err
    assert f"stopped: no worker had answered at {endpoint}" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_capture_cleanly(
    zmq_ctx: Any, capture_cli: Callable[..., CaptureCli], sig: int
) -> None:
    sock, endpoint = pull(zmq_ctx, hwm=4)
    cli = capture_cli("synthetic:64x48:100000", "--connect", endpoint, "--realtime")
    with cli.explained():
        first = [take(sock) for _ in range(3)]
        signalled = time.monotonic()
        cli.proc.send_signal(sig)
        rest, eos = drain(sock)
    code, err = cli.finish()
    assert code == 0, err
    assert time.monotonic() - signalled < 5
    frames = first + rest
    assert_contiguous(frames, eos)  # eos.seq == every frame the PULL side received
    assert "stop requested" in err
    pattern = (
        rf"capture: queued {len(frames)} frames to {re.escape(endpoint)}, dropped 0 "
        r"\(lossless mode\) in [\d.]+ s, stopped; the worker's connection held throughout"
    )
    assert re.search(pattern, err), err


def test_worker_disconnect_mid_stream_is_reported(
    zmq_ctx: Any, capture_cli: Callable[..., CaptureCli]
) -> None:
    first, endpoint = pull(zmq_ctx, hwm=4)
    cli = capture_cli("synthetic:64x48:100000", "--connect", endpoint, "--realtime")
    with cli.explained():
        for _ in range(3):
            recv_parts(first)
        transport.close(first, 0)  # the worker goes away...
        cli.wait_for_line("disconnected after")
        second = rebind(zmq_ctx, endpoint)  # ...and comes back within --wait (30 s)
        cli.wait_for_line("is back after")
        seqs = [take(second).seq for _ in range(3)]
        assert seqs == sorted(seqs)
        cli.proc.send_signal(signal.SIGTERM)
        _, eos = drain(second)
    code, err = cli.finish()
    assert code == 0, err
    assert f"capture: queued {eos.seq} frames to {endpoint}" in err
    assert "the worker disconnected 1 time(s): frames queued after that may be lost" in err
    assert "connection held throughout" not in err


def test_lossless_worker_gone_for_good_fails_naming_the_count(
    zmq_ctx: Any, capture_cli: Callable[..., CaptureCli]
) -> None:
    sock, endpoint = pull(zmq_ctx, hwm=4)
    cli = capture_cli("synthetic:64x48:100000", "--connect", endpoint, "--realtime", "--wait", "1")
    with cli.explained():
        for _ in range(3):
            recv_parts(sock)
    transport.close(sock, 0)
    code, err = cli.finish()
    assert code == 1, err
    assert re.search(
        rf"streamconv: the worker at {re.escape(endpoint)} went away after \d+ frames were "
        r"queued and did not come back within 1 s",
        err,
    ), err


def test_wait_subscriber_delivers_every_frame_from_seq_0(
    start_worker: Any, capture_cli: Callable[..., CaptureCli]
) -> None:
    # Before: a subscriber started with the capture (as compose does) missed the first frames.
    worker = start_worker()
    cli = capture_cli(
        "synthetic:64x48:20", "--connect", worker.input, "--output", worker.output,
        "--stream", "ws", "--wait-subscriber",
    )  # fmt: skip
    cli.wait_for_line(f"waiting for a subscriber of stream ws on {worker.output}")
    with Subscriber(worker.output, stream="ws", timeout_s=30) as sub:
        messages = list(sub)
        gaps = sum(sub.gaps.values())
    code, err = cli.finish()
    assert code == 0, err
    assert "subscriber present" in err
    outputs = [h for h, _ in messages if h["kind"] == "output"]
    layers = {h["layer"] for h, _ in messages}
    assert len(layers) == 3  # the default preset publishes smooth, change, motion
    for layer in layers:
        assert [h["seq"] for h in outputs if h["layer"] == layer] == list(range(20)), layer
    assert gaps == 0


def test_wait_subscriber_without_one_exits_3(
    start_worker: Any, capture_cli: Callable[..., CaptureCli]
) -> None:
    worker = start_worker()
    cli = capture_cli(
        "synthetic:64x48:20", "--connect", worker.input, "--output", worker.output,
        "--stream", "ws", "--wait-subscriber", "--wait", "1",
    )  # fmt: skip
    code, err = cli.finish()
    assert code == 3, err
    assert f"no subscriber of stream ws on {worker.output} within 1 s" in err
