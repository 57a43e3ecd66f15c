"""The worker as a service: health, readiness, metrics and status scraped from its real HTTP
endpoint and checked against what was sent; logs; shutdown under load; a second signal."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamconv.capture.sources import synthetic_frame
from streamconv.client.subscriber import Subscriber
from streamconv.wire import protocol, transport
from tests.conftest import REPO
from tests.helpers import DEFAULT, preset_layers
from tests.integration.conftest import WorkerProc, launch

pytestmark = pytest.mark.integration

LAYERS = preset_layers(DEFAULT)

StartWorker = Callable[..., WorkerProc]


def get(worker: WorkerProc, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(worker.http + path, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(worker: WorkerProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    status, text = get(worker, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def send_stream(push: transport.Socket, stream: str, frames: list[np.ndarray]) -> str:
    session = protocol.new_session()
    for seq, frame in enumerate(frames):
        transport.send(push, protocol.encode_frame(stream, session, seq, frame, fps=12.5))
    transport.send(push, protocol.encode_eos(stream, session, len(frames)))
    return session


def receive_until_eos(sub: Subscriber, streams: set[str]) -> list[dict[str, Any]]:
    heads, ended = [], set()
    while ended != {(s, layer) for s in streams for layer in LAYERS}:
        head, _ = sub.recv(15)
        if head["kind"] == "eos":
            ended.add((head["stream"], head["layer"]))
        else:
            heads.append(head)
    return heads


def test_endpoints_report_what_was_sent(
    start_worker: StartWorker, zmq_ctx: transport.Context
) -> None:
    worker = start_worker()
    assert get(worker, "/healthz")[0] == 200
    assert get(worker, "/readyz") == (200, "ready\n")
    frames = {"a": [synthetic_frame(i, 40, 30) for i in range(7)],
              "b": [synthetic_frame(i, 24, 16) for i in range(5)]}  # fmt: skip
    push = transport.push_socket(zmq_ctx, worker.input)
    with (
        Subscriber(worker.output, stream="a", timeout_s=15) as sub_a,
        Subscriber(worker.output, stream="b", layers=["motion"], timeout_s=15) as sub_b,
    ):
        sub_a.wait_ready(worker.input)
        sub_b.wait_ready(worker.input)
        # wait_ready's probe unsubscription reaches the worker a moment after it returns
        deadline = time.monotonic() + 10
        while (subs := json.loads(get(worker, "/status")[1])["subscriptions"]) != {
            "a/": 1,
            "b/motion/": 1,
        }:
            assert time.monotonic() < deadline, subs
            time.sleep(0.05)
        for stream, clip in frames.items():
            send_stream(push, stream, clip)
        transport.send(push, [b"not json", b""])
        transport.send(push, [b'{"v": 1.0, "kind": "eos"}', b""])
        heads = receive_until_eos(sub_a, {"a"})
        assert [h["seq"] for h in heads if h["layer"] == "motion"] == list(range(7))
        assert {h["fps"] for h in heads} == {12.5}
        assert len([h for h in iter_b(sub_b)]) == 5
        deadline = time.monotonic() + 10
        while json.loads(get(worker, "/status")[1])["counts"].get("eos", 0) < 2:
            assert time.monotonic() < deadline, "the worker never counted both eos"
            time.sleep(0.05)
        m = metrics(worker)
        status = json.loads(get(worker, "/status")[1])

    for stream, clip in frames.items():
        n = len(clip)
        assert m[("streamconv_frames_received_total", (("stream", stream),))] == n
        assert m[("streamconv_frames_processed_total", (("stream", stream),))] == n
        for layer in LAYERS:
            key = ("streamconv_outputs_published_total", (("layer", layer), ("stream", stream)))
            # Only what someone subscribes to is copied back and sent: b is read on motion.
            assert m.get(key, 0) == (n if stream == "a" or layer == "motion" else 0)
        st = status["streams"][stream]
        assert (st["frames_received"], st["frames_processed"], st["state"]) == (n, n, "eos")
        assert st["latency_ms_p50"] is not None
        assert st["latency_ms_p99"] >= st["latency_ms_p50"] > 0
        assert st["resets"] == {}  # the first output's discontinuity is not a reset
    assert m[("streamconv_dropped_total", (("reason", "malformed"),))] == 1
    assert m[("streamconv_dropped_total", (("reason", "version"),))] == 1
    assert m[("streamconv_active_streams", ())] == 0
    assert m[("streamconv_latency_seconds_count", ())] == 12  # one per frame
    assert m[("streamconv_chunk_seconds_count", ())] >= 2
    assert m[("process_resident_memory_bytes", ())] > 10e6
    assert ("streamconv_subscriptions", (("topic", "a/"),)) in m
    assert status["phase"] == "ready"
    assert status["drops"] == {"malformed": 1, "version": 1}
    code = worker.stop(signal.SIGTERM)
    assert code == 0, worker.log()
    worker.wait_for_line("worker stopped", 5)
    assert "stream a: started" in worker.log()
    assert "stream a: ended (eos): 7 frames in, 7 processed" in worker.log()


def iter_b(sub: Subscriber) -> list[dict[str, Any]]:
    heads = []
    while True:
        head, frame = sub.recv(15)
        if frame is None:
            return heads
        heads.append(head)


def test_probe_answers_whether_a_stream_has_a_subscriber(
    start_worker: StartWorker, zmq_ctx: transport.Context
) -> None:
    worker = start_worker("default", "--http", "off")
    push = transport.push_socket(zmq_ctx, worker.input)
    probe = transport.sub_socket(zmq_ctx, worker.output, [b"_probe/"])

    def ask(stream: str) -> bool:
        session = uuid.uuid4().hex  # answers to earlier probes are skipped by their session
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            parts = protocol.encode_eos(protocol.PROBE_STREAM, session, 0, watch=stream)
            transport.send(push, parts)
            while (frames := transport.recv(probe, 200)) is not None:
                head, _ = protocol.decode_output([f.buffer for f in frames])
                if head["session"] == session:
                    return bool(head["subscribed"])
        pytest.fail("no answer to the probe")

    assert ask("cam7") is False
    with Subscriber(worker.output, stream="cam7", layers=["change"]):
        deadline = time.monotonic() + 10
        while not ask("cam7"):  # the subscription reaches the worker a moment later
            assert time.monotonic() < deadline
        assert ask("cam70") is False  # prefixes do not leak across stream ids


def test_drop_log_is_rate_limited_and_summarised(
    start_worker: StartWorker, zmq_ctx: transport.Context
) -> None:
    worker = start_worker(env={"STREAMCONV_LOG__STATS_EVERY_S": "1"})
    push = transport.push_socket(zmq_ctx, worker.input, hwm=10_000)
    n = 3000
    for i in range(n):
        transport.send(push, [f'{{"v": 1, "kind": "frame", "seq": "{i}"}}'.encode(), b""])
    deadline = time.monotonic() + 20
    while json.loads(get(worker, "/status")[1])["drops"].get("bad_field", 0) < n:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    line = worker.wait_for_line(r"dropped \d+ more inputs \(bad_field\)", 5)
    assert "e.g.: field" in line
    worker.wait_for_line(r"stats: 0 streams, .*drops: bad_field=3000", 5)
    warnings = [x for x in worker.lines if " WARNING " in x]
    assert len(warnings) < 10, "\n".join(warnings)


def test_sigterm_under_load_stops_reading_and_exits_within_5_s(
    start_worker: StartWorker, zmq_ctx: transport.Context
) -> None:
    # The heaviest shipped preset at 1280x720 on the CPU, frames of 6 streams in hand and a
    # sender still pushing: the worker must stop taking input and exit 0 within 5 s.
    worker = start_worker("retina", "--chunk", "8", "--max-wait-ms", "60000")
    frames = [synthetic_frame(i, 1280, 720) for i in range(7)]
    pushes = [transport.push_socket(zmq_ctx, worker.input, hwm=100) for _ in range(6)]
    for k, push in enumerate(pushes):
        session = protocol.new_session()
        for seq, frame in enumerate(frames):
            transport.send(push, protocol.encode_frame(f"s{k}", session, seq, frame))
    flood = transport.push_socket(zmq_ctx, worker.input, hwm=1000)
    session = protocol.new_session()
    for seq in range(40):  # keeps arriving while the worker shuts down
        transport.send(flood, protocol.encode_frame("flood", session, seq, frames[0]))
    deadline = time.monotonic() + 30
    while json.loads(get(worker, "/status")[1])["counts"].get("frames_in", 0) < 42:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    start = time.monotonic()
    code = worker.stop(signal.SIGTERM, timeout_s=15)
    took = time.monotonic() - start
    worker.wait_for_line("worker stopped", 5)
    assert code == 0, worker.log()
    assert took < 5.0, f"exit took {took:.1f} s:\n{worker.log()}"
    line = worker.wait_for_line(r"shutting down: \d+ frames in hand", 1)
    assert re.search(r"taken after the signal: [01]\)", line), line


def test_a_second_signal_cuts_the_shutdown_short(
    start_worker: StartWorker, zmq_ctx: transport.Context
) -> None:
    worker = start_worker(
        "retina", "--chunk", "64", "--max-wait-ms", "60000",
        env={"STREAMCONV_WORKER__SHUTDOWN_TIMEOUT_S": "30"},
    )  # fmt: skip
    frames = [synthetic_frame(i, 1280, 720) for i in range(8)]
    push = transport.push_socket(zmq_ctx, worker.input, hwm=1000)
    for k in range(8):
        session = protocol.new_session()
        for seq, frame in enumerate(frames):
            transport.send(push, protocol.encode_frame(f"s{k}", session, seq, frame))
    deadline = time.monotonic() + 30
    while json.loads(get(worker, "/status")[1])["counts"].get("frames_in", 0) < 64:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_line("shutting down", 5)
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(10)
    assert code == 130, worker.log()
    worker.wait_for_line("second stop signal", 5)
    worker.wait_for_line(r"frames were not run \(counted as not_flushed\)", 5)


def test_json_logs_are_one_object_per_line(start_worker: StartWorker) -> None:
    worker = start_worker("default", "--log-format", "json")
    assert worker.stop(signal.SIGTERM) == 0
    worker.wait_for_line("worker stopped", 5)
    records = [json.loads(line) for line in worker.lines if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"].startswith("worker ready on input") for r in records)


def test_a_taken_port_is_a_startup_error_with_the_reason_first(
    zmq_ctx: transport.Context, python_env: dict[str, str]
) -> None:
    taken = transport.pull_socket(zmq_ctx, "tcp://127.0.0.1:*")
    cmd = [sys.executable, "-m", "streamconv", "worker", "--input", transport.endpoint(taken),
           "--http", "off", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(
        cmd, cwd=REPO, env=python_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stderr
    assert "cannot bind worker sockets" in done.stderr
    assert "shutting down" not in done.stderr
    assert "worker stopped" not in done.stderr


def test_a_port_held_a_moment_after_a_crash_is_waited_for(
    python_env: dict[str, str], free_endpoint: Callable[[], str]
) -> None:
    """A supervisor restarts a crashed worker at once, on the same port, which the dead one
    may hold a moment longer: the new worker tries again for a few seconds instead of
    exiting; a port that stays taken is still exit 3 (above)."""
    import socket as sockets

    inp, out = free_endpoint(), free_endpoint()
    host, port = inp.removeprefix("tcp://").split(":")
    holder = sockets.socket()
    holder.setsockopt(sockets.SOL_SOCKET, sockets.SO_REUSEADDR, 1)
    holder.bind((host, int(port)))
    holder.listen()
    cmd = [sys.executable, "-m", "streamconv", "worker", "--input", inp, "--output", out,
           "--http", "off", "--device", "cpu"]  # fmt: skip
    worker = launch(cmd, python_env, inp, out)
    try:
        worker.wait_for_line(r"is in use; trying again for up to", 60)
        holder.close()
        worker.wait_for_line("worker ready", 20)
        assert worker.stop() == 0
    finally:
        holder.close()
        worker.reap()


def test_a_same_host_subscriber_reads_the_outputs_from_shared_memory(
    start_worker: Callable[..., WorkerProc],
) -> None:
    """worker --shm: a shared-memory subscriber gets the same outputs, bit for bit, as one
    over the socket (only headers crossed its socket); one that falls a whole ring behind
    loses outputs, counted as torn and seen as gaps, never a torn frame."""
    import threading

    from streamconv.client import Sender, collect

    # 16 MB: 256 slots of 64 KB, for 120 frames x 3 layers (each 12 KB) = 360 outputs.
    worker = start_worker(DEFAULT, "--shm", env={"STREAMCONV_WORKER__SHM_MB": "16"})
    frames = [synthetic_frame(i, 64, 48, channels=1) for i in range(120)]
    layers = preset_layers(DEFAULT)
    got: dict[str, Any] = {}
    with Subscriber(worker.output, stream="cam", timeout_s=20, shm=False) as plain, \
            Subscriber(worker.output, stream="cam", timeout_s=20, shm=True) as fast, \
            Subscriber(worker.output, stream="cam", timeout_s=20, shm=True) as late:  # fmt: skip
        for sub in (plain, fast, late):
            sub.wait_ready(worker.input)
        reader = threading.Thread(target=lambda: got.update(fast=collect(fast, layers)))
        reader.start()  # reads while the worker writes, never a ring (256) behind
        with Sender(worker.input, stream="cam", wait_s=20) as sender:
            for i, f in enumerate(frames):
                assert sender.send(f)
                if i % 16 == 15:
                    time.sleep(0.05)
        got_plain = collect(plain, layers)
        reader.join(30)
        got_late = collect(late, layers)  # only now: the ring has come round many times
    assert fast.torn == 0
    for name in layers:
        assert [h["seq"] for h, _ in got["fast"][name]] == list(range(120))
        for (_, a), (h, b) in zip(got_plain[name], got["fast"][name], strict=True):
            assert "shm" in h
            assert np.array_equal(a, b)
    assert late.torn > 0
    assert late.losses.missed() == late.torn  # every refused read is a counted loss
    for name in layers:  # what it did get is whole and right
        plain_by_seq = {h["seq"]: a for h, a in got_plain[name]}
        for h, b in got_late[name]:
            assert np.array_equal(b, plain_by_seq[h["seq"]])


@pytest.mark.parametrize("offered", [True, False], ids=["worker-shm", "worker-socket-only"])
def test_a_same_host_subscriber_takes_shared_memory_by_itself_when_the_worker_offers_it(
    offered: bool, start_worker: Callable[..., WorkerProc]
) -> None:
    """Subscriber's default (shm="auto") on a loopback endpoint: wait_ready learns from the
    worker's probe answer whether it publishes outputs in shared memory, and reads them from
    there if so (headers say so); with a worker that does not, it stays on the socket. Either
    way every output arrives, equal to a socket subscriber's; a lossless subscriber never
    switches (the ring does not wait)."""
    from streamconv.client import Sender, collect

    worker = start_worker(DEFAULT, *(["--shm"] if offered else []))
    frames = [synthetic_frame(i, 64, 48, channels=1) for i in range(40)]
    layers = preset_layers(DEFAULT)
    with Subscriber(worker.output, stream="cam", timeout_s=20) as auto, \
            Subscriber(worker.output, stream="cam", timeout_s=20, shm=False) as plain, \
            Subscriber(worker.output, stream="cam", timeout_s=20, lossless=True,
                       inputs=[worker.input]) as held:  # fmt: skip
        for sub in (auto, plain, held):
            sub.wait_ready(worker.input)
        assert auto.shm.on is offered
        assert not held.shm.on
        with Sender(worker.input, stream="cam", wait_s=20) as sender:
            for f in frames:
                assert sender.send(f)
        got_auto, got_plain = collect(auto, layers), collect(plain, layers)
        collect(held, layers)
    assert auto.torn == 0
    for name in layers:
        assert [h["seq"] for h, _ in got_auto[name]] == list(range(40))
        for (h, a), (_, b) in zip(got_auto[name], got_plain[name], strict=True):
            assert ("shm" in h) is offered
            assert np.array_equal(a, b)
