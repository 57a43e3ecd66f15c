"""The defining test of crash safety: a worker killed with SIGKILL at random points, restarted
with the same settings, and still every output of a lossless file capture, exactly once (after
dropping the replays a subscriber already has) and equal to the offline pipeline."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from streamconv.capture.sources import open_source, synthetic_frame
from streamconv.client import Subscriber
from streamconv.config import load_settings
from streamconv.layers import Output
from streamconv.model import build_model
from streamconv.worker.pixels import frame_to_chw
from tests.conftest import PRESETS, REPO
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

RETINA = PRESETS / "retina.toml"
LAYERS = ("opl", "bipolar", "amacrine", "ganglion")
FRAMES, FPS = 360, 30.0


def write_video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (64, 48))
    for i in range(FRAMES):
        writer.write(synthetic_frame(i, 64, 48))
    writer.release()
    return path


def offline(video: Path) -> dict[str, np.ndarray]:
    """The decoded file through the pipeline in one pass, as the capture and worker see it."""
    source = open_source(str(video))
    frames = [frame_to_chw(f, "gray", 1) for f in source]
    source.close()
    model = build_model(load_settings(RETINA, environ={}), torch.device("cpu"))
    with torch.inference_mode():
        out = model.run(np.stack(frames, axis=1)[None])
    assert isinstance(out, Output)
    return {name: out[name][0].transpose(0, 1).numpy() for name in LAYERS}


def two_ports() -> tuple[int, int]:
    """Free consecutive ports (the capture finds the output at its input port + 1), below the
    ephemeral range: a client reconnecting to a dead port from an ephemeral port can connect
    to itself on loopback, and that port is then taken."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port, port + 1
    pytest.skip("no two consecutive free ports")


def status(worker: WorkerProc) -> dict[str, Any]:
    with urllib.request.urlopen(worker.http + "/status", timeout=5) as reply:
        return json.load(reply)


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_random_points_loses_nothing_and_stays_exact(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str], tmp_path: Path,
    seed: int,
) -> None:  # fmt: skip
    video = write_video(tmp_path / "clip.mp4")
    expected = offline(video)
    inp, out = two_ports()
    flags = ("--input", f"tcp://127.0.0.1:{inp}", "--output", f"tcp://127.0.0.1:{out}",
             "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "16")  # fmt: skip
    worker = start_worker(RETINA, *flags)
    got: dict[str, dict[int, tuple[dict[str, Any], np.ndarray]]] = {n: {} for n in LAYERS}
    errors: list[BaseException] = []
    sub = Subscriber(f"tcp://127.0.0.1:{out}", stream="clip", hwm=100_000, timeout_s=90)

    def collect() -> None:
        try:
            for head, array in sub:
                if array is not None:
                    assert head["seq"] not in got[head["layer"]] or head.get("replay"), head
                    got[head["layer"]].setdefault(head["seq"], (head, array))
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    capture = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "capture", str(video), "--stream", "clip",
         "--connect", f"tcp://127.0.0.1:{inp}", "--realtime", "--wait-subscriber",
         "--wait", "60"],
        cwd=REPO, env=python_env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rng = random.Random(seed)
    try:
        kills = 0
        # 1: right after a checkpoint was written
        deadline = time.monotonic() + 60
        while status(worker)["counts"].get("checkpoints", 0) < 1:
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.005)
        worker.stop(signal.SIGKILL)
        kills += 1
        # 2, 3: at random moments (mid-chunk or not: chunks are whatever arrived in 20 ms)
        for _ in range(2):
            worker = start_worker(RETINA, *flags)
            time.sleep(rng.uniform(0.3, 1.5))
            if capture.poll() is not None:
                break
            worker.stop(signal.SIGKILL)
            kills += 1
        if worker.proc.poll() is not None:
            worker = start_worker(RETINA, *flags)
        _, err = capture.communicate(timeout=120)
        assert capture.returncode == 0, err
        reader.join(120)
        assert not reader.is_alive(), "the subscriber never saw the stream end"
        assert not errors, errors
        assert kills >= 3, f"the capture ended after {kills} kills; make the clip longer"
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.communicate(timeout=10)
        sub.close()
    for name in LAYERS:
        seqs = sorted(got[name])
        assert seqs == list(range(FRAMES)), f"{name}: missing {set(range(FRAMES)) - set(seqs)}"
        heads = [got[name][s][0] for s in seqs]
        assert [bool(h.get("discontinuity")) for h in heads] == [True] + [False] * (FRAMES - 1)
        stacked = np.stack([got[name][s][1] for s in seqs])
        err_rel = np.abs(stacked - expected[name]).max() / np.abs(expected[name]).max()
        assert err_rel < 1e-5, f"{name}: relative error {err_rel:.2e}"
    assert "frames again" in err  # the capture resent what a restarted worker lacked
