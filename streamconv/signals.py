"""Stop signals for every role: SIGINT (Ctrl-C) and SIGTERM (`docker stop`) call one handler.

Handlers only set flags (they run in the main thread between bytecodes); only the main thread
may install them, so elsewhere (a worker inside a caller's thread) this does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop(handle: Callable[[int], None]) -> Callable[[], None]:
    """Call `handle(signum)` on SIGINT/SIGTERM; returns a function restoring the old handlers."""
    return on_signals(STOP_SIGNALS, handle)


def on_reload(handle: Callable[[int], None]) -> Callable[[], None]:
    """Call `handle(signum)` on SIGHUP (the daemons' reload signal), where there is one."""
    hup = getattr(signal, "SIGHUP", None)
    return on_signals((hup,) if hup is not None else (), handle)


def on_signals(signums: tuple[int, ...], handle: Callable[[int], None]) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        handle(signum)

    previous = {s: signal.signal(s, handler) for s in signums}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    return restore
