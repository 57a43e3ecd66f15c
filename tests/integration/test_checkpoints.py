"""Checkpoints with real worker processes: a stop and start (or a crash) resumes a stream's state
exactly; bad checkpoints are refused with a clear line; a full disk is logged and counted."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamconv.capture.sources import synthetic_frame
from streamconv.client import Subscriber
from streamconv.wire import protocol, transport
from tests.conftest import PRESETS
from tests.helpers import RETINA, offline, preset_layers, status
from tests.integration.conftest import WorkerProc, launch

pytestmark = pytest.mark.integration

Start = Callable[..., WorkerProc]
LAYERS = preset_layers(RETINA)
W, H = 48, 36


def clip(n: int) -> list[np.ndarray]:
    return [synthetic_frame(i, W, H, channels=1) for i in range(n)]


def take(sub: Subscriber, n: int) -> dict[str, list[tuple[dict[str, Any], np.ndarray]]]:
    """n outputs of every layer (of the subscriber's stream)."""
    got: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {name: [] for name in LAYERS}
    while any(len(v) < n for v in got.values()):
        head, array = sub.recv(20)
        if array is not None:
            got[head["layer"]].append((head, array))
    return got


def test_a_stopped_and_restarted_worker_goes_on_exactly(
    start_worker: Start, zmq_ctx: transport.Context, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    flags = ("--checkpoint-dir", str(folder), "--checkpoint-every", "8")
    frames = clip(40)
    session = protocol.new_session()
    worker = start_worker(RETINA, *flags)
    with Subscriber(worker.output, stream="cam", timeout_s=20) as sub:
        sub.wait_ready(worker.input)
        push = transport.push_socket(zmq_ctx, worker.input)
        for seq in range(21):  # 2 full chunks and a partial one in hand
            transport.send(push, protocol.encode_frame("cam", session, seq, frames[seq]))
        first = take(sub, 21)
        assert worker.stop() == 0
    assert (folder / "cam.ckpt").is_file()
    worker = start_worker(RETINA, *flags)  # new ports: a plain client that knows nothing more
    worker.wait_for_line(r"stream cam: restored from its checkpoint \(session \w+, next seq 21\)")
    with Subscriber(worker.output, stream="cam", timeout_s=20) as sub:
        sub.wait_ready(worker.input)
        push = transport.push_socket(zmq_ctx, worker.input)
        for seq in range(21, 40):
            transport.send(push, protocol.encode_frame("cam", session, seq, frames[seq]))
        transport.send(push, protocol.encode_eos("cam", session, 40))
        second = {name: [] for name in LAYERS}
        for head, array in sub:
            if array is not None:
                second[head["layer"]].append((head, array))
    expected = offline(frames)
    for name in LAYERS:
        heads = [h for h, _ in first[name] + second[name]]
        assert [h["seq"] for h in heads] == list(range(40))
        assert [bool(h.get("discontinuity")) for h in heads] == [True] + [False] * 39
        got = np.stack([a for _, a in first[name] + second[name]])
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6)
    deadline = time.monotonic() + 10
    while (folder / "cam.ckpt").exists():  # eos: the stream's checkpoint is removed
        assert time.monotonic() < deadline, "the checkpoint of an ended stream stayed"
        time.sleep(0.05)


def test_bad_checkpoints_are_refused_and_the_stream_starts_fresh(
    start_worker: Start, zmq_ctx: transport.Context, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    flags = ("--checkpoint-dir", str(folder), "--checkpoint-every", "4")
    worker = start_worker(RETINA, *flags)
    push = transport.push_socket(zmq_ctx, worker.input)
    sessions = {name: protocol.new_session() for name in ("a", "b", "c")}
    for name, session in sessions.items():
        for seq, frame in enumerate(clip(8)):
            transport.send(push, protocol.encode_frame(name, session, seq, frame))
    deadline = time.monotonic() + 20
    while status(worker)["counts"].get("checkpoints", 0) < 3:
        assert time.monotonic() < deadline, status(worker)["counts"]
        time.sleep(0.05)
    assert worker.stop() == 0
    data = (folder / "a.ckpt").read_bytes()
    (folder / "a.ckpt").write_bytes(data[: len(data) // 2])  # truncated
    raw = bytearray((folder / "b.ckpt").read_bytes())
    raw[-10] ^= 0xFF  # eight flipped bits near the end
    (folder / "b.ckpt").write_bytes(bytes(raw))
    # c.ckpt is fine, but the next worker runs another config: refused too.
    worker = start_worker(PRESETS / "default.toml", *flags)
    worker.wait_for_line(r"checkpoint a\.ckpt refused: corrupt or truncated")
    worker.wait_for_line(r"checkpoint b\.ckpt refused: corrupt or truncated")
    worker.wait_for_line(r"checkpoint c\.ckpt refused: from a different model or config")
    assert not list(folder.glob("*.ckpt"))
    with Subscriber(worker.output, stream="a", timeout_s=20) as sub:
        sub.wait_ready(worker.input)
        push = transport.push_socket(zmq_ctx, worker.input)
        transport.send(push, protocol.encode_frame("a", sessions["a"], 8, clip(9)[8]))
        head, _ = sub.recv()
        assert head["discontinuity"] is True  # a fresh state, said so


def test_a_full_disk_is_logged_counted_and_the_worker_goes_on(
    python_env: dict[str, str], free_endpoint: Callable[[], str], zmq_ctx: transport.Context,
    tmp_path: Path,
) -> None:  # fmt: skip
    inp, out = free_endpoint(), free_endpoint()
    cmd = [sys.executable, "-m", "streamconv", "worker", "--config", str(RETINA), "--device",
           "cpu", "--input", inp, "--output", out, "--http", "off",
           "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "4"]  # fmt: skip

    def small_files() -> None:  # files over 4 KB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    worker = launch(cmd, python_env, inp, out, preexec_fn=small_files)
    try:
        worker.wait_for_line("worker ready", 60)
        with Subscriber(out, stream="cam", timeout_s=30) as sub:
            sub.wait_ready(inp, timeout_s=60)
            push = transport.push_socket(zmq_ctx, inp)
            session = protocol.new_session()
            frames = clip(24)
            for seq in range(16):
                transport.send(push, protocol.encode_frame("cam", session, seq, frames[seq]))
            # Before the eos (which would cancel a pending write): the failure is reported.
            line = worker.wait_for_line("checkpoint of stream cam not written", 30)
            assert "File too large" in line
            for seq in range(16, 24):  # and the stream goes on
                transport.send(push, protocol.encode_frame("cam", session, seq, frames[seq]))
            transport.send(push, protocol.encode_eos("cam", session, 24))
            got = {name: 0 for name in LAYERS}
            for head, array in sub:
                if array is not None:
                    got[head["layer"]] += 1
        assert got == {name: 24 for name in LAYERS}  # every output despite the failed writes
        assert worker.stop() == 0
    finally:
        worker.reap()


def test_a_restored_live_stream_goes_on_from_its_state_with_the_gap_counted(
    start_worker: Start, zmq_ctx: transport.Context, tmp_path: Path
) -> None:
    """A sender that does not resend (live, or any plain client): after the restart it skips
    frames; the worker goes on from the checkpointed state, counts the gap, and does not mark
    a discontinuity (the state was restored)."""
    flags = ("--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "8")
    frames = clip(30)
    session = protocol.new_session()
    worker = start_worker(RETINA, *flags)
    with Subscriber(worker.output, stream="cam", timeout_s=20) as sub:
        sub.wait_ready(worker.input)
        push = transport.push_socket(zmq_ctx, worker.input)
        for seq in range(16):
            transport.send(push, protocol.encode_frame("cam", session, seq, frames[seq]))
        take(sub, 16)
    assert worker.stop() == 0
    worker = start_worker(RETINA, *flags)
    with Subscriber(worker.output, stream="cam", timeout_s=20) as sub:
        sub.wait_ready(worker.input)
        push = transport.push_socket(zmq_ctx, worker.input)
        for seq in range(20, 30):  # 16..19 never sent
            transport.send(push, protocol.encode_frame("cam", session, seq, frames[seq]))
        after = take(sub, 10)
    kept = frames[:16] + frames[20:]
    expected = offline(kept)
    for name in LAYERS:
        heads = [h for h, _ in after[name]]
        assert [h["seq"] for h in heads] == list(range(20, 30))
        assert not any(h.get("discontinuity") for h in heads)
        got = np.stack([a for _, a in after[name]])
        np.testing.assert_allclose(got, expected[name][16:], rtol=1e-5, atol=1e-6)
    st = status(worker)
    assert st["counts"]["frames_missing"] == 4
