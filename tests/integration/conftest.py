"""Integration fixtures: real worker processes on free 127.0.0.1 ports, their logs captured.

`start_worker(config, *flags)` runs `python -m streamconv worker` and returns once it logs
"worker ready"; every worker still running at teardown is killed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.helpers import DEFAULT

READY_TIMEOUT_S = 60.0


@dataclass
class WorkerProc:
    proc: subprocess.Popen[str]
    input: str
    output: str
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None
    http: str = ""  # e.g. http://127.0.0.1:40123, from the "http on" log line

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout_s: float = 10.0) -> str:
        """The first log line matching `pattern`; fails the test after `timeout_s`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            if self.proc.poll() is not None and not any(regex.search(x) for x in self.lines):
                time.sleep(0.2)  # let the reader thread catch the last lines
                if not any(regex.search(x) for x in self.lines):
                    pytest.fail(
                        f"worker exited ({self.proc.returncode}) without {pattern!r}:\n{self.log()}"
                    )
            time.sleep(0.02)
        pytest.fail(f"no log line matching {pattern!r} within {timeout_s} s:\n{self.log()}")

    def reap(self) -> None:
        """Kill the process if it still runs, and release its pipe (fixture teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.reader is not None:
            self.reader.join(5)  # EOF once the process is gone
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        """Send `sig` and wait for the exit code; fails the test if it takes too long."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"worker did not exit within {timeout_s} s after signal {sig}")


def launch(
    cmd: list[str], env: dict[str, str], input: str = "", output: str = "", **popen: Any
) -> WorkerProc:
    """Start a streamconv process with its stderr lines collected by a reader thread."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip
    role = WorkerProc(proc, input, output)
    role.reader = threading.Thread(target=role._drain, daemon=True)
    role.reader.start()
    return role


@pytest.fixture
def start_worker(
    free_endpoint: Callable[[], str], python_env: dict[str, str]
) -> Iterator[Callable[..., WorkerProc]]:
    workers: list[WorkerProc] = []

    def start(
        config: str | Path = DEFAULT,
        *flags: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> WorkerProc:
        inp, out = free_endpoint(), free_endpoint()
        cmd = [
            sys.executable,
            "-m",
            "streamconv",
            "worker",
            "--config",
            str(config),
            "--input",
            inp,
            "--output",
            out,
            "--device",
            "cpu",
            "--http",
            "127.0.0.1:0",
            *flags,
        ]
        worker = launch(cmd, {**python_env, **(env or {})}, inp, out)
        workers.append(worker)
        if wait:
            worker.wait_for_line("worker ready", READY_TIMEOUT_S)
            line = next((x for x in worker.lines if "http on " in x), "")
            worker.http = line.split("http on ")[1].split()[0] if line else ""
        return worker

    yield start
    for w in workers:
        w.reap()


@pytest.fixture
def start_view(python_env: dict[str, str]) -> Iterator[Callable[..., WorkerProc]]:
    """start_view(connect, *flags): `streamconv view` on a free port, once it logs its URL
    (in `.http`); killed at teardown if still running."""
    views: list[WorkerProc] = []

    def start(connect: str, *flags: str, wait: bool = True) -> WorkerProc:
        cmd = [sys.executable, "-m", "streamconv", "view", "--connect", connect,
               "--listen", "127.0.0.1:0", *flags]  # fmt: skip
        view = launch(cmd, python_env, output=connect)
        views.append(view)
        if wait:
            line = view.wait_for_line(r"view on http://", READY_TIMEOUT_S)
            view.http = line.split("view on ")[1].split()[0]
        return view

    yield start
    for v in views:
        v.reap()
