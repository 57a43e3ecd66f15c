"""Runs roles as child processes (like uvicorn's multiprocess supervisor), for `run`.

Children start with the `spawn` context (forking after torch or CUDA started is unsafe) and
configure their own logging. stop() sends SIGTERM, waits, and kills what is left.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from streamconv.config import CaptureSettings, Settings, ViewSettings
from streamconv.errors import StartupError
from streamconv.logs import configure as configure_logging

log = logging.getLogger(__name__)

STOP_WAIT_S = 10.0  # a worker finishes in-hand chunks within its shutdown_timeout_s
EXIT_STARTUP = 3  # the CLI's code for a startup error


def worker_main(settings: Settings) -> None:
    """Child process entry: run a worker until SIGTERM."""
    from streamconv.worker.role import Worker

    configure_logging(settings.log.level, settings.log.format)
    Worker(settings).run()


def capture_main(settings: CaptureSettings, level: str, fmt: str) -> None:
    """Child process entry: push every frame of the source, then eos."""
    from streamconv.capture.role import Capture

    configure_logging(level, fmt)
    Capture(settings).run()


def view_main(settings: ViewSettings, level: str, fmt: str) -> None:
    """Child process entry: serve the live page until SIGTERM. A startup error (its port was
    taken since run checked it) is one log line and exit code 3, as `streamconv view` gives,
    not a traceback: this entry is the child's command line."""
    from streamconv.client.view.role import View

    configure_logging(level, fmt)
    try:
        View(settings).run()
    except StartupError as e:
        log.error("%s", e)
        raise SystemExit(EXIT_STARTUP) from None


class Supervisor:
    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.children: dict[str, BaseProcess] = {}

    def start(self, name: str, target: Callable[..., None], *args: Any) -> BaseProcess:
        proc = self.ctx.Process(target=target, args=args, name=name)
        proc.start()
        self.children[name] = proc
        return proc

    def failed(self) -> str | None:
        """The first child that exited with an error, as a sentence; None if none did."""
        for name, proc in self.children.items():
            if proc.exitcode not in (None, 0):
                return f"the {name} process exited (code {proc.exitcode}); see its log above"
        return None

    def stop(self, timeout_s: float = STOP_WAIT_S) -> None:
        """SIGTERM every live child (they shut down cleanly), then kill stragglers."""
        for proc in self.children.values():
            if proc.pid is not None and proc.is_alive():
                proc.terminate()
        for name, proc in self.children.items():
            if proc.pid is None:
                continue
            proc.join(timeout_s)
            if proc.is_alive():
                log.warning("%s did not stop within %.0f s; killing it", name, timeout_s)
                proc.kill()
                proc.join(5)
