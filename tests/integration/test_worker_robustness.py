"""The worker process against bad input and signals, through real sockets on 127.0.0.1.

Bad input of every kind is dropped with one WARNING line and counted, and never stops the
worker; valid streams sent afterwards still equal the offline pipeline. SIGTERM and SIGINT
end the worker with code 0 after it has finished and published the chunks in hand.
"""

from __future__ import annotations

import ast
import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamconv.capture.sources import synthetic_frame
from streamconv.client.subscriber import Subscriber
from streamconv.config import load_settings
from streamconv.layers import Output
from streamconv.model import build_model, input_channels
from streamconv.wire import protocol, transport
from tests.conftest import REPO
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProc]
LAYERS = ("smooth", "change", "motion")
LIMIT = 100_000  # [worker] max_message_bytes for the bad-input worker; the socket allows 2x
DROP_RE = re.compile(r"WARNING dropped input: (.*) \((\d+) dropped so far\)$")
STATS_RE = re.compile(r"worker stats: (\{[^}]*\}); dropped: (.+)$")
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

# (what is wrong, message parts, text the log line must contain)
BAD_INPUT: list[tuple[str, list[bytes], str]] = [
    ("header not JSON", [b"not json {", PIXELS], "header is not UTF-8 JSON"),
    ("header not UTF-8", [b"\xc3\x28", PIXELS], "header is not UTF-8 JSON"),
    ("header a JSON list", [b"[1, 2]", PIXELS], "header must be a JSON object, got list"),
    # These two took the whole worker down: RecursionError and TypeError escaped decode_input.
    ("header nested too deep", [b"[" * 20_000, PIXELS], "header is not UTF-8 JSON"),
    ("dtype unhashable", [header(dtype=["uint8"]), PIXELS], "field 'dtype' must be one of"),
    *[
        (f"missing {key}", [header(**{key: ...}), PIXELS], f"field {key!r}")
        for key in ("stream", "session", "seq", "t_ns", "shape", "dtype")
    ],
    ("seq a string", [header(seq="3"), PIXELS], "field 'seq'"),
    ("seq negative", [header(seq=-1), PIXELS], "field 'seq'"),
    ("seq a bool", [header(seq=True), PIXELS], "field 'seq'"),
    ("seq a float", [header(seq=1.0), PIXELS], "field 'seq'"),
    ("shape a string", [header(shape="24x32"), PIXELS], "field 'shape'"),
    ("bad stream id", [header(stream="cam 0/x"), PIXELS], "field 'stream'"),
    ("unknown dtype", [header(dtype="int64"), PIXELS], "field 'dtype'"),
    ("version 2", [header(v=2), PIXELS], "unsupported protocol version 2"),
    ("no version", [header(v=...), PIXELS], "unsupported protocol version None"),
    ("payload too short", [header(), PIXELS[:-1]], f"payload is {H * W - 1} bytes"),
    ("one part", [header()], "must have 2 parts [header, payload], got 1"),
    ("three parts", [header(), PIXELS, b""], "must have 2 parts [header, payload], got 3"),
    (
        "oversized, below the socket backstop",
        [header(shape=[400, 400], stream="big"), bytes(400 * 400)],
        f"exceeds max_message_bytes {LIMIT}",
    ),
    (
        "3 channels for a 1-channel model",
        [header(shape=[H, W, 3], stream="rgb"), bytes(H * W * 3)],
        "frame has 3 channels, the model takes 1",
    ),
    (
        "frame smaller than the kernel",
        [header(shape=[2, 2], stream="tiny"), bytes(4)],
        "1 frames of stream 'tiny' failed in the model: reflect padding",
    ),
]


def drops(worker: WorkerProc) -> list[tuple[str, int]]:
    """(reason, running count) of every 'dropped input' line so far."""
    found = [DROP_RE.search(line) for line in list(worker.lines)]
    return [(m.group(1), int(m.group(2))) for m in found if m]


def expect_drop(worker: WorkerProc, n: int, reason: str, what: str) -> None:
    line = worker.wait_for_line(rf"dropped input: .* \({n} dropped so far\)$", 10)
    assert "WARNING" in line, line
    assert reason in line, f"{what}: {line}"


def final_stats(worker: WorkerProc) -> tuple[dict[str, int], dict[str, int]]:
    """The engine stats and the dropped counts from the worker's last 'worker stats' line."""
    match = STATS_RE.search(worker.wait_for_line("worker stats: ", 5))
    assert match is not None
    dropped = match.group(2)
    return ast.literal_eval(match.group(1)), {} if dropped == "none" else ast.literal_eval(dropped)


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


def offline(config: Path, frames: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The whole clip through the pipeline in one pass: layer -> (T, C, H, W)."""
    settings = load_settings(config, environ={})
    assert (settings.worker.color, input_channels(settings.worker)) == ("as-is", 1)
    model = build_model(settings, torch.device("cpu"))
    chw = [protocol.to_float(f).reshape(1, *f.shape[:2]) for f in frames]  # as-is, 1 channel
    with torch.inference_mode():
        out = model.run(np.stack(chw, axis=1)[None])
    assert isinstance(out, Output)
    return {name: out[name][0].transpose(0, 1).numpy() for name in LAYERS}


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
def test_bad_input_is_dropped_counted_and_valid_streams_still_match_offline(
    start_worker: StartWorker, zmq_ctx: transport.Context, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    # max_message_bytes from the environment: the limit the oversized case must meet
    worker = start_worker(config, env={"STREAMCONV_WORKER__MAX_MESSAGE_BYTES": str(LIMIT)})
    bad = transport.push_socket(zmq_ctx, worker.input)
    with Subscriber(worker.output, timeout_s=15) as sub:
        sub.wait_ready(worker.input)

        for n, (what, parts, reason) in enumerate(BAD_INPUT, start=1):
            transport.send(bad, parts)
            expect_drop(worker, n, reason, what)
            assert worker.proc.poll() is None, f"worker died on {what}:\n{worker.log()}"
        time.sleep(0.2)  # a second line for the last case would show up by now
        assert [count for _, count in drops(worker)] == list(range(1, len(BAD_INPUT) + 1))

        # One fault repeated, as by a client that sends seq as a string: the counter must
        # group it by reason, not grow by one key per message (it was keyed by the text,
        # which quotes the offending value).
        for seq in range(REPEATS):
            transport.send(bad, [header(seq=str(seq)), PIXELS])
        worker.wait_for_line(rf"\({len(BAD_INPUT) + REPEATS} dropped so far\)", 10)

        # Two valid streams at once, each from its own sender, with a bad message of each
        # stream's own id in the middle: dropping it must not disturb that stream's state.
        rng = np.random.default_rng(7)
        good = [rng.integers(0, 256, (H, W), dtype=np.uint8) for _ in range(11)]
        other = [rng.integers(0, 256, (20, 28, 1), dtype=np.uint8) for _ in range(9)]
        s_good, s_other = protocol.new_session(), protocol.new_session()
        push_good = transport.push_socket(zmq_ctx, worker.input)
        push_other = transport.push_socket(zmq_ctx, worker.input)
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

    assert_matches_offline(outputs, "good", s_good, offline(config, good))
    assert_matches_offline(outputs, "other", s_other, offline(config, other))
    total = len(BAD_INPUT) + REPEATS + 2
    reasons = [reason for reason, _ in drops(worker)]
    assert [count for _, count in drops(worker)] == list(range(1, total + 1))
    assert any("frame has 3 channels" in r for r in reasons[-2:]), reasons[-2:]
    assert any("payload is 2 bytes" in r for r in reasons[-2:]), reasons[-2:]
    warnings = [line for line in list(worker.lines) if " WARNING " in line]
    assert len(warnings) == total, "\n".join(warnings)  # one line per bad message, no more
    assert worker.proc.poll() is None, "the worker must still be running"

    stop_cleanly(worker)
    stats, dropped = final_stats(worker)
    assert sum(dropped.values()) == total, dropped
    assert len(dropped) <= len(BAD_INPUT), f"counted by value, not by reason: {dropped}"
    assert max(dropped.values()) >= REPEATS, dropped
    assert stats["frames_out"] == len(good) + len(other)
    assert stats["frames_failed"] == 1  # the frame smaller than the kernel


# -- shutdown -----------------------------------------------------------------------------------
def test_sigint_stops_the_worker_cleanly(start_worker: StartWorker) -> None:
    # SIGTERM gets the same checks (stop_cleanly) at the end of the other tests here.
    worker = start_worker()
    with Subscriber(worker.output) as sub:
        sub.wait_ready(worker.input)  # serving, so the signal handlers are in place
    stop_cleanly(worker, signal.SIGINT)
    assert final_stats(worker)[1] == {}


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
    worker = start_worker(
        REPO / "streamconv/presets/default.toml", "--chunk", "64", "--max-wait-ms", "60000"
    )
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
    worker.wait_for_line("dropped input: 1 frames of stream 'tiny' failed in the model", 5)
    for name in LAYERS:
        got = [h for h in heads if h["layer"] == name and h["stream"] == "good"]
        assert [h["seq"] for h in got] == list(range(len(good))), name
