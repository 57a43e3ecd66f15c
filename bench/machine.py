"""What a benchmark ran on: printed with every table, since figures mean nothing without it."""

from __future__ import annotations

import os
import platform


def cpu_line() -> str:
    """'cpu: MODEL (N logical cores)' from /proc/cpuinfo where there is one."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"platform: {platform.platform()}\ncpu: {cpu} ({os.cpu_count()} logical cores)"
