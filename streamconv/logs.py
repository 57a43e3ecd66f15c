"""One logging setup for the CLI and for the child processes it spawns (each configures its
own logging: spawned children inherit none). Text or JSON lines, UTC timestamps."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(level: int | str = "info", fmt: str = "text") -> None:
    """Log to stderr at `level` ('info' or logging.INFO) as 'text' or 'json' lines."""
    if isinstance(level, str):
        level = LEVELS[level]
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
        formatter.converter = time.gmtime  # UTC, like t_ns on the wire
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
