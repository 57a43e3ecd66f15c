"""The worker process against bad input and signals, through real sockets on 127.0.0.1.

Bad input of every kind is dropped with one WARNING line and counted, and never stops the
worker; valid streams sent afterwards still equal the offline pipeline. SIGTERM and SIGINT
end the worker with code 0 after it has finished and published the chunks in hand.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamconv.capture.sources import synthetic_frame
from streamconv.client.subscriber import Subscriber
from streamconv.errors import Drop
from streamconv.wire import protocol, transport
from streamconv.wire.curve import generate
from streamconv.worker.stats import BURST
from tests.conftest import PRESETS
from tests.helpers import offline, status
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProc]
LAYERS = ("smooth", "change", "motion")
LIMIT = 100_000  # [worker] max_message_bytes for the bad-input worker; the socket allows 2x
STATS_RE = re.compile(r"stats: .*frames in (\d+) out (\d+), .*; drops: (.+); resets: ")
H, W = 24, 32
REPEATS = 30

# color "as-is" with one channel, so a 3-channel frame does not fit the model; reflect
# padding, so a frame smaller than the kernel fails inside the model.
WORKER = {"device": "cpu", "chunk": 4, "max_wait_ms": 20, "color": "as-is", "in_channels": 1}
LAYERS_TOML = """
[[layers]]
name = "smooth"
type = "conv"
spatial = { kind = "gaussian", sigma = 1.0 }
temporal = { kind = "exponential", tau = 1.5, length = 5 }
padding_mode = "reflect"

[[layers]]
name = "change"
type = "highpass"
tau = 4.0

[[layers]]
name = "motion"
type = "nonlinearity"
kind = "abs"
gain = 4.0
"""


# -- helpers -----------------------------------------------------------------------------------
def write_config(folder: Path, **worker: Any) -> Path:
    """A worker config: WORKER updated by `worker`, then the LAYERS_TOML pipeline."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in (WORKER | worker).items()]
    path = folder / "worker.toml"
    path.write_text("\n".join(["[worker]", *lines, LAYERS_TOML]))
    return path


def header(**changes: Any) -> bytes:
    """A valid frame header for a (H, W) uint8 frame; a value of `...` removes the field."""
    head: dict[str, Any] = {
        "v": 1,
        "kind": "frame",
        "stream": "bad",
        "session": "s1",
        "seq": 0,
        "t_ns": 1,
        "shape": [H, W],
        "dtype": "uint8",
    }
    head.update(changes)
    return json.dumps({k: v for k, v in head.items() if v is not ...}).encode()


PIXELS = bytes(H * W)

# (what is wrong, message parts, the drop reason, text its log line must contain)
BAD_INPUT: list[tuple[str, list[bytes], Drop, str]] = [
    ("header not JSON", [b"not json {", PIXELS], Drop.MALFORMED, "header is not UTF-8 JSON"),
    ("header not UTF-8", [b"\xc3\x28", PIXELS], Drop.MALFORMED, "header is not UTF-8 JSON"),
    ("header a JSON list", [b"[1, 2]", PIXELS], Drop.MALFORMED, "must be a JSON object"),
    # These two took the whole worker down: RecursionError and TypeError escaped decode_input.
    ("header nested too deep", [b"[" * 20_000, PIXELS], Drop.MALFORMED, "not UTF-8 JSON"),
    ("dtype unhashable", [header(dtype=["uint8"]), PIXELS], Drop.BAD_FIELD, "field 'dtype'"),
    *[
        (f"missing {key}", [header(**{key: ...}), PIXELS], Drop.BAD_FIELD, f"field {key!r}")
        for key in ("stream", "session", "seq", "t_ns", "shape", "dtype")
    ],
    ("seq a string", [header(seq="3"), PIXELS], Drop.BAD_FIELD, "field 'seq'"),
    ("seq negative", [header(seq=-1), PIXELS], Drop.BAD_FIELD, "field 'seq'"),
    ("seq a bool", [header(seq=True), PIXELS], Drop.BAD_FIELD, "field 'seq'"),
    ("seq a float", [header(seq=1.0), PIXELS], Drop.BAD_FIELD, "field 'seq'"),
    ("seq past int64", [header(seq=2**63), PIXELS], Drop.BAD_FIELD, "field 'seq'"),
    ("t_ns past int64", [header(t_ns=2**70), PIXELS], Drop.BAD_FIELD, "field 't_ns'"),
    ("shape a string", [header(shape="24x32"), PIXELS], Drop.BAD_FIELD, "field 'shape'"),
    ("bad stream id", [header(stream="cam 0/x"), PIXELS], Drop.BAD_FIELD, "field 'stream'"),
    ("unknown dtype", [header(dtype="int64"), PIXELS], Drop.BAD_FIELD, "field 'dtype'"),
    ("version 2", [header(v=2), PIXELS], Drop.VERSION, "protocol version 2"),
    ("no version", [header(v=...), PIXELS], Drop.VERSION, "protocol version None"),
    ("version 1.0", [header(v=1.0), PIXELS], Drop.VERSION, "version"),
    ("version true", [header(v=True), PIXELS], Drop.VERSION, "version"),
    ("payload too short", [header(), PIXELS[:-1]], Drop.BAD_PAYLOAD, f"is {H * W - 1} bytes"),
    ("one part", [header()], Drop.MALFORMED, "must have 2 parts [header, payload], got 1"),
    ("three parts", [header(), PIXELS, b""], Drop.MALFORMED, "must have 2 parts"),
    (
        "oversized, below the socket backstop",
        [header(shape=[400, 400], stream="big"), bytes(400 * 400)],
        Drop.OVERSIZE,
        f"exceeds max_message_bytes {LIMIT}",
    ),
    (
        "3 channels for a 1-channel model",
        [header(shape=[H, W, 3], stream="rgb"), bytes(H * W * 3)],
        Drop.BAD_SHAPE,
        "frame has 3 channels, the model takes 1",
    ),
    (
        "frame smaller than the kernel",
        [header(shape=[2, 2], stream="tiny"), bytes(4)],
        Drop.MODEL_FAILED,
        "1 frames of stream 'tiny' failed in the model: reflect padding",
    ),
]


def wait_drops(worker: WorkerProc, n: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """/status once it counts `n` drops in all; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = status(worker)
        if sum(st["drops"].values()) >= n or time.monotonic() > deadline:
            assert sum(st["drops"].values()) == n, st["drops"]
            return st
        time.sleep(0.02)


def expect_drop(worker: WorkerProc, seen: Counter[Drop], reason: Drop, text: str) -> None:
    """One more drop for `reason`, counted in /status and (while under the burst) logged."""
    seen[reason] += 1
    st = wait_drops(worker, sum(seen.values()))
    assert st["drops"] == {str(k): v for k, v in seen.items()}
    if seen[reason] <= BURST:
        line = worker.wait_for_line(rf"dropped input \({reason}\): .*{re.escape(text)}", 5)
        assert "WARNING" in line, line


def final_stats(worker: WorkerProc) -> tuple[dict[str, int], dict[str, int]]:
    """(frames in/out, drops by reason) from the worker's last stats line."""
    line = worker.wait_for_line("stats: .* drops: ", 5)
    lines = [x for x in worker.lines if STATS_RE.search(x)]
    match = STATS_RE.search(lines[-1] if lines else line)
    assert match is not None, line
    frames = {"frames_in": int(match.group(1)), "frames_out": int(match.group(2))}
    dropped = (
        {}
        if match.group(3) == "none"
        else dict((k, int(v)) for k, v in (item.split("=") for item in match.group(3).split(", ")))
    )
    return frames, dropped


def stop_cleanly(worker: WorkerProc, sig: int = signal.SIGTERM, within_s: float = 5.0) -> None:
    start = time.monotonic()
    code = worker.stop(sig, timeout_s=15)
    took = time.monotonic() - start
    worker.wait_for_line("worker stopped", 5)  # the log reader may trail the exit
    time.sleep(0.1)
    log = worker.log()
    assert code == 0, log
    assert took < within_s, f"exit took {took:.1f} s"
    assert "Traceback" not in log, log
    assert "shutting down" in log


def collect(
    sub: Subscriber, streams: list[str], timeout_s: float = 15.0
) -> dict[tuple[str, str], list[tuple[dict[str, Any], np.ndarray]]]:
    """Outputs per (stream, layer) until eos has arrived on every layer of every stream."""
    out: dict[tuple[str, str], list[tuple[dict[str, Any], np.ndarray]]] = {
        (s, name): [] for s in streams for name in LAYERS
    }
    ended: dict[tuple[str, str], dict[str, Any]] = {}
    while len(ended) < len(out):
        head, array = sub.recv(timeout_s)
        key = (head["stream"], head["layer"])
        assert key in out, f"unexpected output {key}"
        if array is None:
            ended[key] = head
        else:
            out[key].append((head, array))
    return out


def assert_matches_offline(
    outputs: dict[tuple[str, str], list[tuple[dict[str, Any], np.ndarray]]],
    stream: str,
    session: str,
    expected: dict[str, np.ndarray],
) -> None:
    for name in LAYERS:
        got = outputs[stream, name]
        heads = [h for h, _ in got]
        n = len(expected[name])
        assert [h["seq"] for h in heads] == list(range(n)), (stream, name)
        assert {h["session"] for h in heads} == {session}
        assert [bool(h.get("discontinuity")) for h in heads] == [True] + [False] * (n - 1)
        np.testing.assert_allclose(
            np.stack([a for _, a in got]), expected[name], rtol=1e-5, atol=1e-6
        )


def curve_flags(folder: Path) -> tuple[list[str], dict[str, Any]]:
    """Worker flags and client keys for CURVE with one allowed client."""
    generate(folder / "keys", "worker")
    generate(folder / "keys" / "clients", "client")
    flags = ["--curve-secret", str(folder / "keys/worker.key_secret"),
             "--curve-clients", str(folder / "keys/clients")]  # fmt: skip
    keys = {"curve_secret": folder / "keys/clients/client.key_secret",
            "curve_server": folder / "keys/worker.key"}  # fmt: skip
    return flags, keys


def send_marker(push: transport.Socket, sub: Subscriber) -> None:
    """An eos on stream 'marker' behind what `push` sent before; returns once it is published.

    One PUSH connection delivers in order, so the worker has taken every earlier message.
    """
    transport.send(push, protocol.encode_eos("marker", protocol.new_session(), 0))
    ended: set[str] = set()
    while ended != set(LAYERS):
        head, array = sub.recv(10)
        assert head["stream"] == "marker", f"published before the marker: {head}"
        assert array is None
        ended.add(head["layer"])


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "curve"])
def test_bad_input_is_dropped_counted_and_valid_streams_still_match_offline(
    start_worker: StartWorker, zmq_ctx: transport.Context, tmp_path: Path, secure: bool
) -> None:
    config = write_config(tmp_path)
    flags, keys = curve_flags(tmp_path) if secure else ([], {})
    # max_message_bytes from the environment: the limit the oversized case must meet
    worker = start_worker(config, *flags,
                          env={"STREAMCONV_WORKER__MAX_MESSAGE_BYTES": str(LIMIT)})  # fmt: skip
    bad = transport.push_socket(zmq_ctx, worker.input, **keys)
    with Subscriber(worker.output, timeout_s=15, **keys) as sub:
        sub.wait_ready(worker.input)

        seen: Counter[Drop] = Counter()
        for what, parts, reason, text in BAD_INPUT:
            transport.send(bad, parts)
            expect_drop(worker, seen, reason, text)
            assert worker.proc.poll() is None, f"worker died on {what}:\n{worker.log()}"

        # One fault repeated, as by a client that sends seq as a string: counted by reason,
        # and the log stays quiet after the first few lines (then a summary).
        for seq in range(REPEATS):
            transport.send(bad, [header(seq=str(seq)), PIXELS])
        seen[Drop.BAD_FIELD] += REPEATS
        wait_drops(worker, sum(seen.values()))

        # Two valid streams at once, each from its own sender, with a bad message of each
        # stream's own id in the middle: dropping it must not disturb that stream's state.
        rng = np.random.default_rng(7)
        good = [rng.integers(0, 256, (H, W), dtype=np.uint8) for _ in range(11)]
        other = [rng.integers(0, 256, (20, 28, 1), dtype=np.uint8) for _ in range(9)]
        s_good, s_other = protocol.new_session(), protocol.new_session()
        push_good = transport.push_socket(zmq_ctx, worker.input, **keys)
        push_other = transport.push_socket(zmq_ctx, worker.input, **keys)
        for i in range(max(len(good), len(other))):
            if i < len(good):
                transport.send(push_good, protocol.encode_frame("good", s_good, i, good[i]))
            if i < len(other):
                transport.send(push_other, protocol.encode_frame("other", s_other, i, other[i]))
            if i == 5:
                rgb = np.zeros((H, W, 3), np.uint8)
                transport.send(push_good, protocol.encode_frame("good", s_good, 6, rgb))
                head = protocol.encode_frame("other", s_other, 6, other[6])[0]
                transport.send(push_other, [head, b"xx"])
        transport.send(push_good, protocol.encode_eos("good", s_good, len(good)))
        transport.send(push_other, protocol.encode_eos("other", s_other, len(other)))
        outputs = collect(sub, ["good", "other"])

    assert_matches_offline(outputs, "good", s_good, offline(good, config, color="as-is"))
    assert_matches_offline(outputs, "other", s_other, offline(other, config, color="as-is"))
    seen[Drop.BAD_SHAPE] += 1
    seen[Drop.BAD_PAYLOAD] += 1
    st = wait_drops(worker, sum(seen.values()))
    assert st["drops"] == {str(k): v for k, v in seen.items()}
    assert st["streams"]["good"]["drops"] == {"bad_shape": 1}
    assert st["streams"]["other"]["drops"] == {}  # its bad payload never named a stream
    assert st["streams"]["good"]["frames_processed"] == len(good)
    assert st["streams"]["good"]["state"] == "eos"
    warnings = [line for line in list(worker.lines) if " WARNING " in line]
    # At most BURST lines per reason before summaries, not one per bad message.
    assert len(warnings) <= BURST * len(seen), "\n".join(warnings)
    assert worker.proc.poll() is None, "the worker must still be running"

    stop_cleanly(worker)
    frames, dropped = final_stats(worker)
    assert dropped == {str(k): v for k, v in sorted(seen.items())}
    assert frames["frames_out"] == len(good) + len(other)
    summaries = [line for line in worker.lines if "more inputs (bad_field)" in line]
    assert summaries, "the quiet drops must be summarised at shutdown"


# -- shutdown -----------------------------------------------------------------------------------
def test_sigint_stops_the_worker_cleanly(start_worker: StartWorker) -> None:
    # SIGTERM gets the same checks (stop_cleanly) at the end of the other tests here.
    worker = start_worker()
    with Subscriber(worker.output) as sub:
        sub.wait_ready(worker.input)  # serving, so the signal handlers are in place
    stop_cleanly(worker, signal.SIGINT)
    assert final_stats(worker) == ({"frames_in": 0, "frames_out": 0}, {})


def _send_and_stop_mid_chunk(
    worker: WorkerProc,
    zmq_ctx: transport.Context,
    streams: dict[str, list[np.ndarray]],
    expect: int,
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Send `streams` (far less than a chunk), SIGTERM, and return the headers published
    after it: up to `expect` of them, or fewer if the next one takes over 1 s (the worker
    has exited by then, so whatever is still to come is already on its way)."""
    sessions = {name: protocol.new_session() for name in streams}
    with Subscriber(worker.output, timeout_s=10) as sub:
        sub.wait_ready(worker.input)
        push = transport.push_socket(zmq_ctx, worker.input)
        for name, frames in streams.items():
            for seq, frame in enumerate(frames):
                transport.send(push, protocol.encode_frame(name, sessions[name], seq, frame))
        send_marker(push, sub)  # every frame is in the worker's hands, none published yet
        stop_cleanly(worker)
        heads: list[dict[str, Any]] = []
        while len(heads) < expect:
            try:
                heads.append(sub.recv(1)[0])
            except TimeoutError:
                break
    return sessions, heads


def test_sigterm_mid_chunk_publishes_the_chunk_in_hand(
    start_worker: StartWorker, zmq_ctx: transport.Context
) -> None:
    worker = start_worker(PRESETS / "default.toml", "--chunk", "64", "--max-wait-ms", "60000")
    # About 11 MB of outputs: more than the loopback socket buffers take at once.
    frames = [synthetic_frame(i, 320, 240) for i in range(12)]
    sessions, heads = _send_and_stop_mid_chunk(worker, zmq_ctx, {"mid": frames}, 3 * len(frames))
    for name in LAYERS:
        got = [h for h in heads if h["layer"] == name]
        assert [h["seq"] for h in got] == list(range(len(frames))), name
        assert {(h["kind"], h["session"]) for h in got} == {("output", sessions["mid"])}
    assert final_stats(worker)[0]["frames_out"] == len(frames)


def test_a_failing_stream_does_not_lose_other_streams_at_shutdown(
    start_worker: StartWorker, zmq_ctx: transport.Context, tmp_path: Path
) -> None:
    config = write_config(tmp_path, chunk=64, max_wait_ms=60000)
    worker = start_worker(config)
    good = [np.full((H, W), 10 * i, np.uint8) for i in range(5)]
    tiny = [np.zeros((2, 2), np.uint8)]  # smaller than the reflect-padded kernel
    sessions, heads = _send_and_stop_mid_chunk(
        worker, zmq_ctx, {"good": good, "tiny": tiny}, 3 * len(good)
    )
    assert {h["session"] for h in heads} == {sessions["good"]}
    worker.wait_for_line(r"dropped input \(model_failed\): 1 frames of stream 'tiny' failed", 5)
    for name in LAYERS:
        got = [h for h in heads if h["layer"] == name and h["stream"] == "good"]
        assert [h["seq"] for h in got] == list(range(len(good))), name
