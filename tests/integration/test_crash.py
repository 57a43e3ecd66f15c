"""The defining test of crash safety: a worker killed with SIGKILL at random points, restarted
with the same settings, and still every output of a lossless file capture, exactly once (after
dropping the replays a subscriber already has) and equal to the offline pipeline."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamconv.client import Subscriber
from tests.conftest import REPO
from tests.helpers import RETINA, offline, preset_layers, read_video, status, two_ports, write_video
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

LAYERS = preset_layers(RETINA)
FRAMES, FPS = 360, 30.0


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_random_points_loses_nothing_and_stays_exact(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str], tmp_path: Path,
    seed: int,
) -> None:  # fmt: skip
    video = write_video(tmp_path / "clip.mp4", FRAMES, fps=FPS)
    expected = offline(read_video(video))
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
