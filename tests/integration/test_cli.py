"""The `streamconv` command as users run it: `python -m streamconv ...` in subprocesses.

Exit codes (cli.py): 0 ok, 2 usage or config, 3 startup. Errors are one readable line on
stderr, never a traceback.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from streamconv.capture.sources import write_sample_video
from streamconv.client.subscriber import Subscriber
from tests.conftest import REPO
from tests.helpers import DEFAULT, preset_layers, table_counts
from tests.integration.conftest import WorkerProc
from tests.integration.outputs import wait_tcp_connected

pytestmark = pytest.mark.integration

LAYERS = preset_layers(DEFAULT)

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(python_env: dict[str, str]) -> Cli:
    """cli(*args, timeout_s=60) runs `python -m streamconv args` to the end."""

    def run(*args: str | Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamconv", *map(str, args)],
            cwd=REPO, env=python_env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=timeout_s, check=False,
        )  # fmt: skip

    return run


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


def assert_readable_video(path: Path, frames: int) -> None:
    video = cv2.VideoCapture(str(path))
    try:
        assert video.isOpened(), path
        count = 0
        while True:
            ok, image = video.read()
            if not ok:
                break
            assert image.size > 0
            count += 1
    finally:
        video.release()
    assert count == frames, f"{path}: {count} frames"


def test_worker_with_a_missing_config_exits_2_naming_it(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert_clean_error(cli("worker", "--config", missing), 2, str(missing), "not found")


def test_worker_with_an_unknown_config_key_exits_2_naming_it(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    text = DEFAULT.read_text()
    config.write_text(text.replace("[worker]\n", "[worker]\nchunk_size = 16\n", 1))
    assert_clean_error(
        cli("worker", "--config", config),
        2,
        "unknown key 'chunk_size' in [worker]; allowed: ",
        str(config),
    )


def test_worker_on_a_port_in_use_exits_3(
    cli: Cli, free_endpoint: Callable[[], str], tmp_path: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            "worker", "--config", DEFAULT, "--device", "cpu",
            "--input", f"tcp://127.0.0.1:{port}", "--output", free_endpoint(),
        )  # fmt: skip
    assert_clean_error(result, 3, "cannot bind", str(port))
    assert "in use" in result.stderr.lower(), result.stderr


def test_capture_of_a_missing_file_exits_2_naming_it(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.mp4"
    result = cli("capture", missing, "--connect", "tcp://127.0.0.1:9")
    assert_clean_error(result, 2, str(missing), "does not exist")


def test_capture_runs_without_torch(python_env: dict[str, str], tmp_path: Path) -> None:
    # A torch package that cannot be imported stands for a machine without torch.
    (tmp_path / "fake" / "torch").mkdir(parents=True)
    (tmp_path / "fake" / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not installed on this machine')\n"
    )
    env = {**python_env, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), str(REPO)])}
    missing = tmp_path / "nothing-here.mp4"
    args = ["capture", str(missing), "--connect", "tcp://127.0.0.1:9"]
    result = subprocess.run(
        [sys.executable, "-m", "streamconv", *args],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert_clean_error(result, 2, str(missing))


# -- capture -> worker -> subscribe --------------------------------------------------------------
def test_capture_into_a_worker_and_subscribe_with_previews(
    cli: Cli,
    start_worker: Callable[..., WorkerProc],
    python_env: dict[str, str],
    tmp_path: Path,
) -> None:
    frames = 30
    clip = write_sample_video(tmp_path / "clip.mp4", frames=frames, size=(64, 48), fps=25.0)
    worker = start_worker(DEFAULT)
    with Subscriber(worker.output) as probe:
        probe.wait_ready(worker.input)  # the worker answers through PUB/SUB

    previews = tmp_path / "previews"
    count = frames + 1  # more than arrive per layer: the stream's eos on every layer ends it
    subscribe = subprocess.Popen(
        [
            sys.executable, "-m", "streamconv", "subscribe", "--connect", worker.output,
            "--stream", "clip", "--count", str(count), "--timeout", "20", "--save", previews,
        ],
        cwd=REPO, env=python_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # PUB/SUB slow joiner: whatever the worker publishes before the subscriber's
        # subscription arrives is lost, and `subscribe` prints nothing until its first
        # message. Probes through the worker would be counted by --count, so the signal used
        # is the subscriber's own TCP connection to the output port (from /proc), plus a
        # short margin for the ZeroMQ handshake and the SUBSCRIBE to reach the worker.
        wait_tcp_connected(subscribe, int(worker.output.rsplit(":", 1)[1]))
        time.sleep(0.5)
        captured = cli("capture", clip, "--connect", worker.input)
        out, err = subscribe.communicate(timeout=60)
    finally:
        if subscribe.poll() is None:
            subscribe.kill()
            subscribe.communicate(timeout=10)

    assert captured.returncode == 0, captured.stderr
    assert re.search(rf"capture: (sent|queued) {frames} frames?\b", captured.stderr), (
        captured.stderr
    )
    assert subscribe.returncode == 0, err
    assert "Traceback" not in err, err
    assert table_counts(out) == {f"clip/{name}": frames for name in LAYERS}, out
    for name in LAYERS:
        assert f"eos: clip/{name} after {frames} frames" in out
        path = previews / f"clip_{name}.mp4"
        assert f"preview: {path}" in out
        assert_readable_video(path, frames)


# -- run: all of it in one command ---------------------------------------------------------------
def test_run_sample_prints_summary_previews_and_verifies(cli: Cli, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    # --device cpu: the offline check compares with a CPU run, exact to 1e-5
    result = cli(
        "run", "sample", "--out", out_dir, "--config", "default", "--device", "cpu",
        timeout_s=110,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert table_counts(result.stdout) == {f"sample/{name}": 120 for name in LAYERS}
    assert "subscriber gaps (outputs lost between worker and subscriber): 0" in result.stdout
    assert re.search(
        r"streamed == offline whole-video pipeline: .* over 120 frames x 3 layers \(OK\)",
        result.stdout,
    ), result.stdout
    for name in LAYERS:
        path = out_dir / f"sample_{name}.mp4"
        assert f"preview: {path}" in result.stdout
        assert_readable_video(path, 120)
    assert (out_dir / "sample.mp4").is_file()


def test_run_with_a_missing_source_fails_fast_naming_it(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.mp4"
    started = time.monotonic()
    result = cli("run", missing, "--out", tmp_path / "out", timeout_s=30)
    assert_clean_error(result, 2, str(missing), "does not exist")
    assert time.monotonic() - started < 20  # no worker started and waited on


def test_run_verifies_uint8_output_to_its_quantisation_step(
    python_env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamconv", "run", "synthetic:64x48:30", "--out",
         str(tmp_path), "--config", "default", "--device", "cpu"],
        cwd=REPO, env={**python_env, "STREAMCONV_WORKER__OUTPUT_DTYPE": "uint8"},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"max relative error \S+ over 30 frames x 3 layers \(OK\)", result.stdout)
