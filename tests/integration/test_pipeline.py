"""The defining property, end to end: a file streamed capture -> worker -> subscriber gives
the offline whole-video pipeline's output for every layer, whatever the chunking."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from streamconv.capture.sources import write_sample_video
from streamconv.client.subscriber import Subscriber, collect
from streamconv.wire import protocol, transport
from tests.conftest import REPO
from tests.helpers import RETINA, offline, preset_layers
from tests.unit.reference import rel_err

pytestmark = pytest.mark.integration

LAYERS = preset_layers(RETINA)


def decode(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def capture(env: dict[str, str], source: Path | str, endpoint: str, stream: str, *extra: str):
    cmd = [sys.executable, "-m", "streamconv", "capture", str(source), "--connect", endpoint,
           "--stream", stream, *extra]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


Received = dict[str, list[tuple[dict[str, Any], np.ndarray]]]


def finish(proc: subprocess.Popen[str]) -> str:
    """Wait for a capture process; its stderr, after checking it exited 0."""
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def assert_matches(got: Received, expected: dict[str, np.ndarray]) -> None:
    for name, frames in expected.items():
        headers = [h for h, _ in got[name]]
        assert [h["seq"] for h in headers] == list(range(len(frames))), name
        assert [bool(h.get("discontinuity")) for h in headers] == [True] + [False] * (
            len(frames) - 1
        )
        streamed = np.stack([a for _, a in got[name]])
        assert streamed.shape == frames.shape
        assert rel_err(streamed, frames) < 1e-5, name


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = write_sample_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=45)
    return path, offline(decode(path))


@pytest.mark.parametrize(
    ("chunk", "wait_ms", "pipeline"),
    [(1, 0, "off"), (7, 5, "off"), (16, 200, "off"), (1, 0, "on"), (7, 5, "on"), (16, 200, "on")],
)
def test_file_stream_equals_offline_for_any_chunking(
    start_worker: Any, python_env: dict[str, str], clip: tuple[Path, dict], chunk: int,
    wait_ms: int, pipeline: str,
) -> None:  # fmt: skip
    """Every output of every layer, in order, equal to the offline pipeline, with the worker
    on one thread and as a pipeline of three (`--pipeline on`, worker/stages.py)."""
    path, expected = clip
    worker = start_worker(RETINA, "--chunk", str(chunk), "--max-wait-ms", str(wait_ms),
                          "--pipeline", pipeline)  # fmt: skip
    with Subscriber(worker.output, stream="clip", timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        proc = capture(python_env, path, worker.input, "clip")
        got = collect(sub, LAYERS, timeout_s=30)
        finish(proc)
        assert sum(sub.gaps.values()) == 0
    assert_matches(got, expected)
    assert worker.stop() == 0
    assert "Traceback" not in worker.log()


def test_ipc_endpoints_on_one_host(
    start_worker: Any, python_env: dict[str, str], clip: tuple[Path, dict], tmp_path: Path
) -> None:
    """Unix-domain sockets instead of TCP loopback (README, Transports): same outputs; the
    capture names the output endpoint (nothing to derive it from) and waits for the
    subscriber through it."""
    path, expected = clip
    inp, out = f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out"
    worker = start_worker(RETINA, "--input", inp, "--output", out)
    with Subscriber(out, stream="clip", timeout_s=30) as sub:
        sub.wait_ready(inp)
        proc = capture(python_env, path, inp, "clip", "--output", out, "--wait-subscriber")
        got = collect(sub, LAYERS, timeout_s=30)
        err = finish(proc)
    assert_matches(got, expected)
    assert "subscriber present for stream clip" in err
    assert worker.stop() == 0


def test_two_concurrent_streams_equal_each_alone(
    start_worker: Any, python_env: dict[str, str], clip: tuple[Path, dict], tmp_path: Path
) -> None:
    path_a, expected_a = clip
    path_b = tmp_path / "b.avi"
    frames_b = [np.ascontiguousarray(f[::-1]) for f in decode(path_a)]  # different content
    writer = cv2.VideoWriter(str(path_b), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (160, 120))
    for f in frames_b:
        writer.write(f)
    writer.release()
    expected_b = offline(decode(path_b))
    worker = start_worker(RETINA, "--chunk", "4", "--max-wait-ms", "2")
    with Subscriber(worker.output, timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        procs = [capture(python_env, p, worker.input, s) for p, s in ((path_a, "a"), (path_b, "b"))]
        got: dict[str, dict[str, list]] = {
            "a": {n: [] for n in LAYERS},
            "b": {n: [] for n in LAYERS},
        }
        ended: set[tuple[str, str]] = set()
        while len(ended) < 2 * len(LAYERS):
            header, array = sub.recv(30)
            if array is None:
                ended.add((header["stream"], header["layer"]))
            else:
                got[header["stream"]][header["layer"]].append((header, array))
        for proc in procs:
            finish(proc)
    assert_matches(got["a"], expected_a)
    assert_matches(got["b"], expected_b)
    assert worker.stop() == 0


def test_seq_gap_and_new_session_reset_state_and_mark_discontinuity(
    start_worker: Any, zmq_ctx: transport.Context, clip: tuple[Path, dict]
) -> None:
    path, _ = clip
    frames = decode(path)[:30]
    worker = start_worker(RETINA, "--chunk", "4", "--max-wait-ms", "1")
    push = transport.push_socket(zmq_ctx, worker.input)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    # seq 0..9, then 12..19 (frames 10, 11 lost), then a new session from frame 20 with seq 0.
    plan = [(first, s, s) for s in range(10)] + [(first, s, s) for s in range(12, 20)]
    plan += [(second, s, 20 + s) for s in range(10)]
    with Subscriber(worker.output, stream="gap", layers=LAYERS, timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        for session, seq, index in plan:
            transport.send(push, protocol.encode_frame("gap", session, seq, frames[index]))
        transport.send(push, protocol.encode_eos("gap", second, 10))
        got = collect(sub, LAYERS, timeout_s=30)
    segments = [(0, 10, first), (12, 20, first), (20, 30, second)]
    for name in LAYERS:
        headers = [h for h, _ in got[name]]
        arrays = np.stack([a for _, a in got[name]])
        assert len(headers) == 28
        starts = [i for i, h in enumerate(headers) if h.get("discontinuity")]
        assert starts == [0, 10, 18], name
        done = 0
        for lo, hi, session in segments:
            expected = offline(frames[lo:hi])[name]  # a fresh stream from `lo`
            part = arrays[done : done + hi - lo]
            assert rel_err(part, expected) < 1e-5, (name, lo)
            assert {h["session"] for h in headers[done : done + hi - lo]} == {session}
            done += hi - lo
    assert worker.stop() == 0
    assert "seq_gap at seq 12" in worker.log()
    assert "new_session at seq 0" in worker.log()


def test_live_capture_counts_drops_and_every_sent_frame_is_accounted_for(
    start_worker: Any, python_env: dict[str, str]
) -> None:
    """Dropped at the capture (its queue full) or, oldest first, at a worker that fell behind:
    every frame is either processed or counted, and the newest is always processed."""
    worker = start_worker(RETINA, "--chunk", "1", "--max-wait-ms", "0")
    with Subscriber(worker.output, stream="live", layers=["ganglion"], timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        proc = capture(python_env, "synthetic:320x240:150", worker.input, "live", "--mode",
                       "live", "--queue", "1")  # fmt: skip
        got = collect(sub, ["ganglion"], timeout_s=60)
        err = finish(proc)
    match = re.search(r"capture: queued (\d+) frames to \S+, dropped (\d+)", err)
    assert match is not None, err
    sent, dropped = int(match.group(1)), int(match.group(2))
    assert sent + dropped == 150
    seqs = [h["seq"] for h, _ in got["ganglion"]]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == sent - 1
    with urllib.request.urlopen(worker.http + "/status", timeout=5) as reply:
        counts = json.load(reply)["counts"]
    assert len(seqs) + counts.get("live_dropped", 0) == sent
    assert worker.stop() == 0
