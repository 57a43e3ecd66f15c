"""Shared memory for subscribers on the worker's host: a ring of slots the worker writes each
output into, so that only a small header travels on the socket (`[worker] shm`, README).

Each slot starts with two uint64: a generation and the payload's length. The writer makes
the generation odd, copies the payload, writes the length, then makes it even again (a
seqlock); the header on the socket names the ring, the slot and that even generation. A
reader copies the payload out and checks the generation before and after: if the slot was
reused meanwhile (the reader fell a whole ring behind) the copy is refused, never returned
torn, and the caller counts it as a lost output.
"""

from __future__ import annotations

import sys
import threading
from multiprocessing import shared_memory
from typing import Any

import numpy as np

HEADER = 16  # bytes a slot starts with: generation, nbytes (uint64 each, native order)
_LOCK = threading.Lock()
MAPPED = 2  # rings a reader keeps mapped: the worker's current one and the one before


class Ring:
    """The worker's side: `slots` slots of `slot_bytes` each in one shared memory block."""

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slots, self.slot_bytes = slots, slot_bytes
        self.stride = HEADER + slot_bytes
        with _LOCK:  # not while a reader has registering turned off (_attach)
            self.shm = shared_memory.SharedMemory(create=True, size=slots * self.stride)
        self.name = self.shm.name
        self.buf = np.ndarray((slots * self.stride,), np.uint8, self.shm.buf)
        self.heads = [np.ndarray((2,), np.uint64, self.shm.buf, i * self.stride)
                      for i in range(slots)]  # fmt: skip
        for head in self.heads:
            head[:] = 0
        self.next = 0

    def put(self, payload: np.ndarray) -> tuple[int, int] | None:
        """Copy `payload` (C-contiguous) into the next slot: (slot, generation), or None if
        it does not fit a slot."""
        data = payload.reshape(-1).view(np.uint8)
        if data.nbytes > self.slot_bytes:
            return None
        slot = self.next
        self.next = (slot + 1) % self.slots
        head = self.heads[slot]
        gen = int(head[0]) + 1
        head[0] = gen  # odd: being written
        start = slot * self.stride + HEADER
        self.buf[start : start + data.nbytes] = data
        head[1] = data.nbytes
        head[0] = gen + 1  # even: whole
        return slot, gen + 1

    def close(self) -> None:
        del self.buf, self.heads
        self.shm.close()
        self.shm.unlink()


class Reader:
    """A subscriber's side: maps the rings named in headers, copies payloads out."""

    def __init__(self) -> None:
        self._maps: dict[str, shared_memory.SharedMemory] = {}
        self.torn = 0  # payloads refused: the slot was reused before or while copying
        self.mapped = 0  # rings mapped so far (0 and a failure: not this host's memory)

    def get(
        self, ref: dict[str, Any], dtype: np.dtype[Any], shape: tuple[int, ...]
    ) -> np.ndarray | None:
        """The payload `ref` names, copied out; None if it was overwritten (counted)."""
        shm = self._map(ref["name"])
        stride = HEADER + ref["slot_bytes"]
        if (ref["slot"] + 1) * stride > shm.size:  # not a slot of this ring
            self.torn += 1
            return None
        head = np.ndarray((2,), np.uint64, shm.buf, ref["slot"] * stride)
        gen = ref["gen"]
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if int(head[0]) != gen or int(head[1]) != nbytes:
            self.torn += 1
            return None
        start = ref["slot"] * stride + HEADER
        out = np.ndarray((nbytes,), np.uint8, shm.buf, start).copy()
        if int(head[0]) != gen:  # reused while we copied
            self.torn += 1
            return None
        return out.view(dtype).reshape(shape)

    def _map(self, name: str) -> shared_memory.SharedMemory:
        shm = self._maps.pop(name, None)
        if shm is None:
            shm = _attach(name)
            self.mapped += 1
        self._maps[name] = shm  # the most recently used last
        while len(self._maps) > MAPPED:  # a restarted worker's old rings: let them go
            self._maps.pop(next(iter(self._maps))).close()
        return shm

    def close(self) -> None:
        for shm in self._maps.values():
            shm.close()
        self._maps.clear()


def _attach(name: str) -> shared_memory.SharedMemory:
    """Map an existing block without owning it: before Python 3.13 an attached block is
    registered with the resource tracker, which would unlink it (the worker's) at exit, so
    registering is skipped while it is mapped (under the lock a ring is made under too)."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    from multiprocessing import resource_tracker

    with _LOCK:
        register = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None
        try:
            return shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = register
