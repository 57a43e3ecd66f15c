"""`streamconv subscribe` as users run it (a subprocess) against a stand-in worker output.

It must run until told to stop, stop cleanly on SIGTERM (docker stop) as on SIGINT, end by
itself at the end of a `--stream`, count `--count` per layer, and write only safe file names.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import cv2
import pytest

from streamconv.wire import transport
from tests.conftest import REPO
from tests.helpers import table_counts
from tests.integration.outputs import FakeWorker, wait_tcp_connected

pytestmark = pytest.mark.integration

EXIT_TIMEOUT_S = 15.0


class SubscribeProc:
    """`python -m streamconv subscribe ARGS`, its output read as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamconv", "subscribe", *args],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for r in self.readers:
            r.start()

    @staticmethod
    def _drain(pipe: IO[str], lines: list[str]) -> None:
        for line in pipe:
            lines.append(line.rstrip("\n"))

    def stdout(self) -> str:
        return "\n".join(self.out)

    def wait_for_line(self, text: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.out:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        pytest.fail(f"no line {text!r} (exit {self.proc.poll()}):\n{self.stdout()}\n{self.err}")

    def wait(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"subscribe still running after {timeout_s} s:\n{self.stdout()}")
        for r in self.readers:
            r.join(5)
        return code

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for r in self.readers:
            r.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def subscribe(python_env: dict[str, str]) -> Iterator[Callable[..., SubscribeProc]]:
    procs: list[SubscribeProc] = []

    def start(*args: str | Path) -> SubscribeProc:
        proc = SubscribeProc([str(a) for a in args], python_env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


@pytest.fixture
def worker(zmq_ctx: transport.Context) -> FakeWorker:
    return FakeWorker(zmq_ctx)


def assert_clean_exit(proc: SubscribeProc, code: int) -> None:
    assert code == 0, f"exit {code}\n{proc.stdout()}\n" + "\n".join(proc.err)
    assert not any("Traceback" in line for line in proc.err), proc.err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_without_timeout_it_waits_until_stopped(
    subscribe: Callable[..., SubscribeProc], sig: int
) -> None:
    """Before the fix: OverflowError at once (the default 0 became a year in ms for poll)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as nothing:
        # A TCP port that never speaks ZeroMQ: no output will come, but the connection shows
        # that the subscriber is up (and its signal handlers are in place).
        nothing.bind(("127.0.0.1", 0))
        nothing.listen()
        port = nothing.getsockname()[1]
        proc = subscribe("--connect", f"tcp://127.0.0.1:{port}")
        wait_tcp_connected(proc.proc, port)
        time.sleep(1.5)
        assert proc.proc.poll() is None, f"exited early:\n{proc.stdout()}\n{proc.err}"
        code = proc.stop(sig)
    assert_clean_exit(proc, code)
    assert f"no output received from tcp://127.0.0.1:{port}" in proc.out
    assert table_counts(proc.stdout()) == {}


def read_video(path: Path) -> tuple[int, float]:
    video = cv2.VideoCapture(str(path))
    try:
        assert video.isOpened(), f"{path} ({path.stat().st_size} bytes) does not open"
        fps = video.get(cv2.CAP_PROP_FPS)
        count = 0
        while video.read()[0]:
            count += 1
    finally:
        video.release()
    return count, fps


def test_sigterm_finalises_previews_and_exits_0(
    subscribe: Callable[..., SubscribeProc], worker: FakeWorker, tmp_path: Path
) -> None:
    """Before the fix: exit 143 and a 44-byte mp4 that does not play."""
    previews = tmp_path / "previews"
    proc = subscribe("--connect", worker.endpoint, "--save", previews)
    worker.wait_subscribed(b"", proc=proc.proc)
    for seq in range(6):
        worker.output("cam0", "c1", seq, fps=10.0)
    worker.eos("cam0", "c1", 6)
    proc.wait_for_line("eos: cam0/c1 after 6 frames")  # so every frame has arrived
    assert proc.proc.poll() is None  # without --stream an eos does not end it
    code = proc.stop(signal.SIGTERM)
    assert_clean_exit(proc, code)
    path = previews / "cam0_c1.mp4"
    assert f"preview: {path}" in proc.out
    assert table_counts(proc.stdout()) == {"cam0/c1": 6}
    assert read_video(path) == (6, pytest.approx(10.0))  # the source's fps, not 25


def test_stream_ends_by_itself_after_eos_on_every_layer(
    subscribe: Callable[..., SubscribeProc], worker: FakeWorker
) -> None:
    proc = subscribe("--connect", worker.endpoint, "--stream", "cam0")
    worker.wait_subscribed(b"cam0/", proc=proc.proc)
    for seq in range(3):
        worker.output("cam0", "c1", seq)
        worker.output("cam0", "c2", seq)
    worker.eos("cam0", "c1", 3)
    proc.wait_for_line("eos: cam0/c1 after 3 frames")
    assert proc.proc.poll() is None  # c2 has not ended yet
    worker.eos("cam0", "c2", 3)
    code = proc.wait()  # no --timeout: before the fix it waited forever (or crashed)
    assert_clean_exit(proc, code)
    assert "eos: cam0/c2 after 3 frames" in proc.out
    assert table_counts(proc.stdout()) == {"cam0/c1": 3, "cam0/c2": 3}


def test_npy_names_from_a_hostile_session_stay_in_the_folder(
    subscribe: Callable[..., SubscribeProc], worker: FakeWorker, tmp_path: Path
) -> None:
    """Before the fix a session holding '/' crashed `subscribe --npy`."""
    out = tmp_path / "npy"
    proc = subscribe("--connect", worker.endpoint, "--stream", "cam0", "--npy", out)
    worker.wait_subscribed(b"cam0/", proc=proc.proc)
    session = "../a/b"
    worker.output("cam0", "c1", 0, session=session)
    worker.output("cam0", "c1", 1, session=session)
    worker.eos("cam0", "c1", 2, session=session)
    code = proc.wait()
    assert_clean_exit(proc, code)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.npy"))
    assert written == ["npy/cam0_c1____a_b_000000.npy", "npy/cam0_c1____a_b_000001.npy"]


@pytest.mark.parametrize("stream", [True, False], ids=["with-stream", "all-streams"])
def test_count_is_frames_of_every_layer(
    subscribe: Callable[..., SubscribeProc], worker: FakeWorker, stream: bool
) -> None:
    """Before the fix --count 3 stopped after 3 messages: 2 of c1 and 1 of c2."""
    args = ["--stream", "cam0"] if stream else []
    proc = subscribe("--connect", worker.endpoint, "--count", "3", *args)
    worker.wait_subscribed(b"cam0/" if stream else b"", proc=proc.proc)
    for seq in range(5):
        worker.output("cam0", "c1", seq)
        worker.output("cam0", "c2", seq)
    code = proc.wait()
    assert_clean_exit(proc, code)
    assert table_counts(proc.stdout()) == {"cam0/c1": 3, "cam0/c2": 3}


def test_several_connects_fan_in_every_shards_outputs(
    subscribe: Callable[..., SubscribeProc], zmq_ctx: transport.Context
) -> None:
    """`--connect` repeated (and EP,EP): one subscriber reads two workers' streams."""
    shards = [FakeWorker(zmq_ctx) for _ in range(3)]
    proc = subscribe("--connect", shards[0].endpoint,
                     "--connect", f"{shards[1].endpoint},{shards[2].endpoint}",
                     "--timeout", "3")  # fmt: skip
    for i, shard in enumerate(shards):
        shard.wait_subscribed(b"", proc=proc.proc)
        for seq in range(2 + i):
            shard.output(f"cam{i}", "c1", seq)
        shard.eos(f"cam{i}", "c1", 2 + i)
    for i in range(3):
        proc.wait_for_line(f"eos: cam{i}/c1 after {2 + i} frames")
    code = proc.wait()  # ends after 3 idle seconds
    assert_clean_exit(proc, code)
    assert table_counts(proc.stdout()) == {"cam0/c1": 2, "cam1/c1": 3, "cam2/c1": 4}
