"""Chunk buffers kept for reuse.

A chunk's pixels go into a (chunk, C, H, W) buffer that the model reads. Its outputs may
alias it (a pass-through layer) and leave zero-copy, so a buffer is taken again only once
nothing refers to it any more: no view, no tensor, no message ZeroMQ has yet to send (each of
them holds a reference to it, and CPython's reference count says when the last one went).
A fresh large buffer costs its page faults and the kernel's zeroing on every chunk: glibc
maps blocks over 32 MB anew each time (1280x720 BGR in chunks of 8: 88 MB, 3 ms a frame of
the worker's time, BENCHMARKS.md "Pipelined worker"). Torch-free; the engine owns it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

KEEP = 6  # buffers kept per shape and dtype
KEEP_BYTES = 1 << 30  # and at most this many bytes kept in all


def _free_count() -> int:
    """sys.getrefcount of a kept buffer nothing else refers to (the list's and the call's
    references in CPython 3.11-3.13): measured, not assumed."""
    kept = [np.empty(1)]
    return sys.getrefcount(kept[0])


FREE = _free_count()


class Buffers:
    def __init__(self, keep: int = KEEP, keep_bytes: int = KEEP_BYTES) -> None:
        self.keep, self.keep_bytes = keep, keep_bytes
        self._kept: dict[tuple[Any, ...], list[np.ndarray]] = {}
        self._bytes = 0
        self.reused = self.made = 0  # for tests and the curious

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A buffer of `shape` and `dtype` (its contents are whatever was there)."""
        key = (shape, np.dtype(dtype).str)
        kept = self._kept.setdefault(key, [])
        for i in range(len(kept)):
            if sys.getrefcount(kept[i]) == FREE:
                self.reused += 1
                return kept[i]
        buf = np.empty(shape, dtype)
        self.made += 1
        if len(kept) < self.keep and self._bytes + buf.nbytes <= self.keep_bytes:
            kept.append(buf)
            self._bytes += buf.nbytes
        return buf
