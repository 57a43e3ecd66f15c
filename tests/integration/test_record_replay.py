"""Issue 20 with real processes and real files: a recording worker keeps every input frame in
the archive; `streamconv replay` sends a recorded session (or an interval with its warm-up)
again as a new stream, and its outputs equal the live ones; a SIGKILL leaves a readable
archive whose cut segment is reported; retention removes the oldest; a write that fails is
counted and the worker goes on."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamconv.archive.format import partial, segments
from streamconv.capture.sources import synthetic_frame
from streamconv.client import Sender, Subscriber
from tests.conftest import REPO
from tests.helpers import DEFAULT, get, preset_layers, status, until
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

Start = Callable[..., WorkerProc]
LAYERS = preset_layers(DEFAULT)


def clip(n: int, w: int = 64, h: int = 48) -> list[np.ndarray]:
    return [synthetic_frame(i, w, h, channels=1) for i in range(n)]


def outputs(sub: Subscriber) -> dict[str, list[tuple[dict[str, Any], np.ndarray]]]:
    """Every output of the subscriber's stream until its eos, per layer."""
    got: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {name: [] for name in LAYERS}
    for header, frame in sub:
        if frame is not None:
            got[header["layer"]].append((header, frame))
    return got


def streamconv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamconv", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def replayed(worker: WorkerProc, env: dict[str, str], archive: Path, *args: str,
             name: str = "again") -> tuple[dict[str, list[Any]], str]:  # fmt: skip
    with Subscriber(worker.output, stream=name, timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        done = streamconv(env, "replay", str(archive), "--config", str(DEFAULT), "--as", name,
                          "--connect", worker.input, *args)  # fmt: skip
        assert done.returncode == 0, (done.stdout, done.stderr)
        return outputs(sub), done.stdout


def test_a_replay_of_a_recorded_session_equals_the_live_outputs_bit_for_bit(
    start_worker: Start, tmp_path: Path, python_env: dict[str, str]
) -> None:
    archive = tmp_path / "archive"
    worker = start_worker(DEFAULT, "--record", str(archive))
    frames = clip(150)
    with Subscriber(worker.output, stream="cam", timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        with Sender(worker.input, stream="cam", wait_s=20, fps=30.0) as sender:
            for f in frames:
                assert sender.send(f)
        live = outputs(sub)
    until(lambda: sum(s.frames for s in segments(archive, "cam")) == 150, "150 frames kept")
    listed = streamconv(python_env, "archive", "ls", str(archive))
    assert listed.returncode == 0, listed.stderr
    assert "0..149" in listed.stdout
    assert " 150 " in listed.stdout
    recorded = status(worker)["record"]
    assert recorded["segments"] >= 3  # 64 frames a segment at most
    # The whole session again, as stream "again": the same outputs, bit for bit.
    again, said = replayed(worker, python_env, archive, "--stream", "cam")
    assert "recorded seqs 0..149, as stream again" in said
    for name in LAYERS:
        assert len(again[name]) == len(live[name]) == 150
        for (h1, a), (h2, b) in zip(live[name], again[name], strict=True):
            assert h1["seq"] == h2["seq"]
            assert h1["t_ns"] == h2["t_ns"]  # the original capture times
            assert np.array_equal(a, b), (name, h1["seq"])


def test_a_replay_from_the_middle_with_warm_up_equals_the_live_outputs_from_there(
    start_worker: Start, tmp_path: Path, python_env: dict[str, str]
) -> None:
    archive = tmp_path / "archive"
    worker = start_worker(DEFAULT, "--record", str(archive))
    with Subscriber(worker.output, stream="cam", timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        with Sender(worker.input, stream="cam", wait_s=20) as sender:
            for f in clip(200):
                assert sender.send(f)
        live = outputs(sub)
    until(lambda: sum(s.frames for s in segments(archive, "cam")) == 200, "200 frames kept")
    again, said = replayed(worker, python_env, archive, "--stream", "cam", "--from-seq", "150",
                           "--warmup", "auto")  # fmt: skip
    assert "--warmup auto: the model remembers" in said
    warm = int(said.split("starts at its seq ")[1].split()[0])
    first = 150 - warm
    for name in LAYERS:
        got = np.stack([a for _, a in again[name]][warm:])
        want = np.stack([a for _, a in live[name]][150:])
        assert [h["seq"] + first for h, _ in again[name]][warm] == 150
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Without the warm-up the state starts fresh: the first outputs differ.
    cold, _ = replayed(worker, python_env, archive, "--stream", "cam", "--from-seq", "150",
                       name="cold")  # fmt: skip
    assert not np.allclose(cold["change"][0][1], live["change"][150][1], rtol=1e-3)


def test_a_killed_worker_leaves_a_readable_archive_and_reports_the_cut_segment(
    start_worker: Start, tmp_path: Path, python_env: dict[str, str]
) -> None:
    archive = tmp_path / "archive"
    env = {"STREAMCONV_RECORD__SEGMENT_FRAMES": "16", "STREAMCONV_RECORD__SEGMENT_S": "60"}
    worker = start_worker(DEFAULT, "--record", str(archive), env=env)
    with Sender(worker.input, stream="cam", wait_s=20) as sender:
        for f in clip(40):  # two closed segments of 16, eight frames open
            assert sender.send(f)
        until(lambda: sum(s.frames for s in segments(archive, "cam")) == 32, "32 frames kept")
        # An open segment cut half-written, as a SIGKILL during its write would leave it.
        session = segments(archive, "cam")[0].session
        cut = archive / "cam" / session / ".open-000000000032.zarr"
        cut.mkdir()
        (cut / "zarr.json").write_text('{"zarr_format": 3, "node_')
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
    kept = segments(archive, "cam")
    assert [(s.first_seq, s.last_seq) for s in kept] == [(0, 15), (16, 31)]
    frames, seqs, _ = kept[1].read()
    assert list(seqs) == list(range(16, 32))
    assert np.array_equal(frames[0], clip(40)[16])
    assert partial(archive) == [cut]
    listed = streamconv(python_env, "archive", "ls", str(archive))
    assert listed.returncode == 0, listed.stderr
    assert "1 partial segment(s), cut while open" in listed.stdout


def test_retention_removes_the_oldest_segments_and_counts_them(
    start_worker: Start, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    env = {"STREAMCONV_RECORD__SEGMENT_FRAMES": "10",
           "STREAMCONV_RECORD__MAX_STREAM_BYTES": "300000"}  # fmt: skip
    worker = start_worker(DEFAULT, "--record", str(archive), env=env)
    with Sender(worker.input, stream="cam", wait_s=20) as sender:
        for f in clip(200, 160, 120):
            assert sender.send(f)
    until(lambda: status(worker)["counts"].get("record_segments", 0) == 20, "20 segments")
    kept = segments(archive, "cam")
    counts = status(worker)["counts"]
    assert counts["record_removed"] == 20 - len(kept) > 0
    assert sum(s.nbytes for s in kept) <= 300000
    assert kept[-1].last_seq == 199  # the newest stay
    assert kept[0].first_seq > 0


def test_a_write_that_fails_is_counted_and_the_worker_goes_on(
    start_worker: Start, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "cam").write_text("a file where the stream's folder would go")
    worker = start_worker(DEFAULT, "--record", str(archive))
    with Subscriber(worker.output, stream="cam", layers=["motion"], timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        with Sender(worker.input, stream="cam", wait_s=20) as sender:
            for f in clip(70):
                assert sender.send(f)
        got = [h for h, f in sub if f is not None]
    assert len(got) == 70  # served all the same
    until(lambda: status(worker)["counts"].get("record_errors", 0) >= 1, "a counted error")
    assert status(worker)["counts"]["record_dropped"] >= 64
    metrics = get(worker, "/metrics")  # where an alert would look
    assert 'streamconv_events_total{event="record_errors"}' in metrics
    dropped = re.search(r'streamconv_events_total\{event="record_dropped"\} (\S+)', metrics)
    assert dropped is not None
    assert float(dropped.group(1)) >= 64
    worker.wait_for_line(r"recorder: \d+ frames of stream cam not written")
    time.sleep(0.1)


def test_subscribe_records_outputs_where_zarr_reads_them(
    start_worker: Start, tmp_path: Path, python_env: dict[str, str]
) -> None:
    """`subscribe --record out.zarr`: every output, one array per stream, session and layer,
    equal to a subscriber's frames, written out when it ends (at the stream's eos here)."""
    import zarr

    worker = start_worker(DEFAULT)
    store = tmp_path / "out.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "subscribe", "--connect", worker.output,
         "--stream", "cam", "--record", str(store)],
        cwd=REPO, env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with Subscriber(worker.output, stream="cam", timeout_s=30) as sub:
            sub.wait_ready(worker.input)
            # The recording subscriber is lossless: it holds the sender back once it joined.
            until(lambda: status(worker)["subscriptions"].get("cam/", 0) >= 2, "both subscribed")
            with Sender(worker.input, stream="cam", wait_s=20) as sender:
                for f in clip(45):
                    assert sender.send(f)
            mine = outputs(sub)
            session = mine["motion"][0][0]["session"]
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, (out, err)
    assert f"record: {store}" in out
    root = zarr.open_group(str(store), mode="r")
    for name in LAYERS:
        group: Any = root[f"cam/{session}/{name}"]
        frames = np.asarray(group["frames"][...])
        assert list(np.asarray(group["seq"][...])) == list(range(45))
        assert np.array_equal(frames, np.stack([a for _, a in mine[name]]))
        assert group["frames"].metadata.dimension_names == ("time", "channel", "y", "x")


def test_sigterm_writes_the_open_segments_before_the_worker_exits(
    start_worker: Start, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    env = {"STREAMCONV_RECORD__SEGMENT_FRAMES": "16", "STREAMCONV_RECORD__SEGMENT_S": "60"}
    worker = start_worker(DEFAULT, "--record", str(archive), env=env)
    with Subscriber(worker.output, stream="cam", layers=["motion"], timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        with Sender(worker.input, stream="cam", wait_s=20) as sender:
            for f in clip(40):  # two full segments, eight frames still open
                assert sender.send(f)
        assert len([h for h, f in sub if f is not None]) == 40
    assert worker.stop() == 0  # docker stop
    kept = segments(archive, "cam")
    assert [(s.first_seq, s.last_seq) for s in kept] == [(0, 15), (16, 31), (32, 39)]
    assert partial(archive) == []


def test_a_live_stream_is_recorded_as_the_worker_ran_it(
    start_worker: Start, tmp_path: Path
) -> None:
    """A live camera's stream: what the sender or the worker dropped is not in the archive;
    every frame the worker ran is, with its seq."""
    archive = tmp_path / "archive"
    worker = start_worker(DEFAULT, "--record", str(archive))
    frames = clip(120)
    with Subscriber(worker.output, stream="live", layers=["motion"], timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        queued: list[np.ndarray] = []  # a live sender's seq counts the frames it queued
        with Sender(worker.input, stream="live", mode="live", wait_s=20, fps=60.0) as sender:
            for f in frames:
                if sender.send(f):
                    queued.append(f)
                time.sleep(1 / 120)
        ran = [h["seq"] for h, f in sub if f is not None]
    until(lambda: sum(s.frames for s in segments(archive, "live")) >= len(ran), "all kept")
    kept: list[int] = []
    for seg in segments(archive, "live"):
        arrays, seqs, _ = seg.read()
        kept += [int(q) for q in seqs]
        for frame, q in zip(arrays, seqs, strict=True):
            assert np.array_equal(frame, queued[int(q)])
    assert kept == ran


def test_ids_from_the_network_never_leave_the_archive_folder(
    start_worker: Start, tmp_path: Path, zmq_ctx: Any
) -> None:
    """A stream may be called '..' and a session may be any 128 characters: the archive
    stores such ids under digests and keeps the ids themselves in the segments."""
    from streamconv.wire import protocol, transport

    archive = tmp_path / "inside" / "archive"
    worker = start_worker(DEFAULT, "--record", str(archive))
    push = transport.push_socket(zmq_ctx, worker.input)
    sessions = {"..": "../../escaped", "cam": "/tmp/absolute"}
    with Subscriber(worker.output, timeout_s=30) as sub:
        sub.wait_ready(worker.input)
        for stream, session in sessions.items():
            for seq, frame in enumerate(clip(5)):
                transport.send(push, protocol.encode_frame(stream, session, seq, frame))
            transport.send(push, protocol.encode_eos(stream, session, 5))
        until(lambda: sum(s.frames for s in segments(archive)) == 10, "10 frames kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inside"]  # nothing beside it
    assert not Path("/tmp/absolute").exists()
    kept = {(s.stream, s.session) for s in segments(archive)}
    assert kept == set(sessions.items())
    assert all(archive in p.parents for p in archive.rglob("zarr.json"))
    assert segments(archive, "..")[0].session == "../../escaped"
