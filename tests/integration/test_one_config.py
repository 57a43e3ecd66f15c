"""One config file for every role, as users start them: worker, subscribe and capture given
only `--config mine.toml` find each other on the file's endpoints (not the presets' 5555/5556);
a worker given its own --input serves HTTP on that port + 2; subscribe says at once where it
listens."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import table_counts
from tests.integration.conftest import READY_TIMEOUT_S, launch

pytestmark = pytest.mark.integration
FRAMES = 12


def first_line(proc: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        pytest.fail(f"no line on stdout within {timeout_s} s")
    return proc.stdout.readline()


def test_worker_subscribe_and_capture_agree_on_the_files_endpoints(
    tmp_path: Path, free_endpoint: Callable[[], str], python_env: dict[str, str]
) -> None:
    inp, out = free_endpoint(), free_endpoint()
    mine = tmp_path / "mine.toml"
    mine.write_text(
        f'[worker]\ninput = "{inp}"\noutput = "{out}"\nhttp = "127.0.0.1:0"\ndevice = "cpu"\n'
        '[[layers]]\nname = "low"\ntype = "lowpass"\ntau = 2.0\n'
        '[[layers]]\nname = "high"\ntype = "highpass"\ntau = 2.0\n'
    )
    role = [sys.executable, "-m", "streamconv"]
    worker = launch([*role, "worker", "--config", str(mine)], python_env)
    sub = subprocess.Popen(
        [*role, "subscribe", "--config", str(mine), "--stream", "cam", "--timeout", "30"],
        cwd=REPO, env=python_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        worker.wait_for_line("worker ready", READY_TIMEOUT_S)
        assert first_line(sub) == f"subscribing to stream 'cam' on {out}\n"
        capture = subprocess.run(
            [*role, "capture", f"synthetic:32x24:{FRAMES}", "--config", str(mine), "--stream",
             "cam", "--mode", "lossless", "--wait", "20", "--wait-subscriber"],
            cwd=REPO, env=python_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert capture.returncode == 0, capture.stderr
        stdout, stderr = sub.communicate(timeout=40)
    finally:
        for proc in (sub, worker.proc):
            if proc.poll() is None:
                proc.kill()
        sub.communicate(timeout=10)
        worker.reap()
    assert sub.returncode == 0, stderr
    assert table_counts(stdout) == {"cam/low": FRAMES, "cam/high": FRAMES}


def three_free_ports() -> int:
    """A port P with P, P+1 and P+2 free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 2 > 65535:
            continue
        try:
            for p in (port, port + 1, port + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    pytest.fail("no three consecutive free ports")


def test_a_workers_http_port_follows_its_input_port(python_env: dict[str, str]) -> None:
    port = three_free_ports()
    cmd = [sys.executable, "-m", "streamconv", "worker", "--config", "default", "--device",
           "cpu", "--input", f"tcp://127.0.0.1:{port}", "--output",
           f"tcp://127.0.0.1:{port + 1}"]  # fmt: skip
    worker = launch(cmd, python_env)
    try:
        worker.wait_for_line("worker ready", READY_TIMEOUT_S)
        assert f"http on http://127.0.0.1:{port + 2} " in worker.log()
        assert worker.stop() == 0
    finally:
        worker.reap()


def test_subscribe_says_where_it_listens_before_anything_arrives(
    free_endpoint: Callable[[], str], python_env: dict[str, str]
) -> None:
    nobody = free_endpoint()
    sub = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "subscribe", "--connect", nobody],
        cwd=REPO, env=python_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert first_line(sub) == f"subscribing to every stream on {nobody}\n"
    finally:
        sub.terminate()
        sub.communicate(timeout=10)
