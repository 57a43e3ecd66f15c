"""One logging setup for the CLI and for the child processes it spawns (each configures its
own logging: spawned children inherit none)."""

from __future__ import annotations

import logging
import time


def configure(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.Formatter.converter = time.gmtime  # UTC, like t_ns on the wire
