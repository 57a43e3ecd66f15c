"""Freed memory kept for reuse: glibc gives large blocks back to the kernel at once (mmap
above 128 KB, a trim when the heap's top holds more than 128 KB free), so every chunk's
fresh tensors and every received frame fault their pages in again, zeroed by the kernel:
80-120 page faults a 640x480 frame, 8-10% of the worker's time on the default preset
(bench/pipelined.py). Raising glibc's thresholds lets malloc reuse those blocks. glibc only;
elsewhere (musl, macOS) nothing changes."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
MMAP_MAX_MB = 32  # glibc's largest mmap threshold on 64-bit (larger blocks are mmapped)


def keep_freed_memory(keep_mb: int) -> bool:
    """Let malloc keep up to `keep_mb` of freed memory (0: glibc's defaults); True if set."""
    if keep_mb <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = (
        mallopt(M_MMAP_THRESHOLD, min(keep_mb, MMAP_MAX_MB) << 20)
        and mallopt(M_TRIM_THRESHOLD, keep_mb << 20)
        and mallopt(M_TOP_PAD, min(keep_mb, 64) << 20)
    )
    if done:
        log.debug("malloc keeps up to %d MB of freed memory", keep_mb)
    return bool(done)
