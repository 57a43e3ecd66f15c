"""Issue 16, case 5, with real processes: a worker without checkpoints is stopped (SIGTERM)
in the middle of a lossless file capture and started again on the same endpoints.

The new worker meets the stream at seq N > 0 without its state: it marks it (cause
lost_state, frames_missing N, the first output a discontinuity), and the subscriber's summary
names the reset and the outputs it missed. With the capture's resume path on, the capture
says too that it cannot send the session again: a worker without checkpoints can never ask
for it, so the capture keeps only the frames in flight (issue 17)."""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.helpers import DEFAULT, get, preset_layers, status, until, write_video
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

LAYERS = preset_layers(DEFAULT)
FRAMES, FPS = 300, 30.0
WAIT_S = 60  # a restart on a busy machine
LOST = re.compile(r"lost: clip/(\w+) session \w+: received (\d+) of (\d+), missed (\d+) .*")


def clip(worker: WorkerProc) -> dict[str, Any]:
    return status(worker)["streams"].get("clip", {})


def endpoints(resume: bool) -> tuple[str, str]:
    """The worker's input and output: the capture looks for the output at the input port + 1.
    Below the ephemeral range: a client reconnecting to a dead port from an ephemeral port
    can connect to itself on loopback, and that port is then taken."""
    rng = random.Random()
    gap = 1 if resume else 2
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + gap))
            except OSError:
                continue
        return f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + gap}"
    pytest.skip("no two free ports")


@pytest.mark.parametrize("resume", [False, True], ids=["no-resume-path", "resume-path"])
def test_a_restart_without_checkpoints_is_marked(
    start_worker: Callable[..., WorkerProc],
    python_env: dict[str, str],
    tmp_path: Path,
    resume: bool,
) -> None:
    video = write_video(tmp_path / "clip.mp4", FRAMES, fps=FPS)
    inp, out = endpoints(resume)
    flags = ("--input", inp, "--output", out)
    worker = start_worker(DEFAULT, *flags)
    sub = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "subscribe", "--connect", out, "--stream", "clip",
         "--timeout", "20"],
        cwd=REPO, env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    capture: subprocess.Popen[str] | None = None
    try:
        until(lambda: "clip/" in status(worker)["subscriptions"],
              "the subscriber's subscription", WAIT_S)  # fmt: skip
        capture = subprocess.Popen(
            [sys.executable, "-m", "streamconv", "capture", str(video), "--stream", "clip",
             "--mode", "lossless", "--realtime", "--connect", inp],
            cwd=REPO, env=python_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        until(lambda: clip(worker).get("frames_processed", 0) >= 60, "60 frames processed", WAIT_S)
        assert worker.stop(signal.SIGTERM) == 0
        worker = start_worker(DEFAULT, *flags)
        _, capture_log = capture.communicate(timeout=120)
        assert capture.returncode == 0, capture_log
        stdout, stderr = sub.communicate(timeout=60)
    finally:
        for proc in (capture, sub):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    until(lambda: clip(worker).get("state") == "eos", "the stream's end at the new worker", WAIT_S)
    st = clip(worker)
    metrics = get(worker, "/metrics")
    lost = {m[1]: tuple(map(int, m.groups()[1:])) for m in LOST.finditer(stdout)}
    # The new worker met the stream mid-session: marked, and the frames before counted. A
    # capture that finds the worker's output knows it too: the worker keeps no checkpoints, so
    # it kept only the frames in flight (issue 17), and it says it cannot send the rest again.
    if resume:
        assert "which is no longer kept" in capture_log, capture_log
    first = FRAMES - st["frames_received"]
    assert first > 0, st
    assert st["resets"] == {"lost_state": 1}, st
    assert st["frames_missing"] == first, st
    assert 'streamconv_resets_total{cause="lost_state"} 1.0' in metrics
    assert f"met at seq {first} without its state" in worker.log()
    # The subscriber names the reset, and every output it missed; exit code 4 if any.
    assert sorted(lost) == sorted(LAYERS), stdout
    for layer in LAYERS:
        assert f"clip/{layer} session" in stdout
        received, total, missed = lost[layer]
        assert (total, received + missed) == (FRAMES, FRAMES), stdout
    # The reset is seen unless its output was published before this subscriber was back
    # (PUB/SUB after a restart): then it is a gap, and counted as one.
    for line in (x for x in stdout.splitlines() if x.startswith("lost: clip/")):
        assert "1 state resets" in line or "in gaps 0" not in line, stdout
    missed_any = any(missed for _, _, missed in lost.values())
    assert sub.returncode == (4 if missed_any else 0), (stdout, stderr)
