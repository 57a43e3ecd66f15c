"""The shared-memory ring (wire/shm.py): what a reader gets is a whole payload or nothing;
a slot reused before or while it reads is refused and counted, never returned torn."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from streamconv.wire.shm import HEADER, Reader, Ring


@pytest.fixture
def ring() -> Iterator[Ring]:
    made = Ring(3, 64)
    yield made
    made.close()


def ref(ring: Ring, slot: int, gen: int) -> dict[str, int | str]:
    return {"name": ring.name, "slot": slot, "gen": gen, "slot_bytes": ring.slot_bytes}


def test_a_payload_comes_back_whole(ring: Ring) -> None:
    reader = Reader()
    payload = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    put = ring.put(payload)
    assert put is not None
    got = reader.get(ref(ring, *put), np.dtype("<f4"), (1, 3, 4))
    assert got is not None
    assert np.array_equal(got, payload)
    payload[:] = -1  # the reader holds a copy, not the slot
    assert got[0, 0, 1] == 1
    reader.close()


def test_a_slot_reused_before_the_read_is_refused_and_counted(ring: Ring) -> None:
    reader = Reader()
    first = ring.put(np.zeros((4,), np.float32))
    assert first is not None
    for value in (1.0, 2.0, 3.0):  # three more: the ring of three comes round to slot 0
        assert ring.put(np.full((4,), value, np.float32)) is not None
    assert reader.get(ref(ring, *first), np.dtype("<f4"), (4,)) is None
    assert reader.torn == 1
    reader.close()


def test_a_slot_being_written_is_refused(ring: Ring) -> None:
    """The writer's generation is odd while it copies: a reader then gets nothing."""
    reader = Reader()
    put = ring.put(np.ones((4,), np.float32))
    assert put is not None
    slot, gen = put
    ring.heads[slot][0] = gen + 1  # a writer has begun to reuse the slot
    assert reader.get(ref(ring, slot, gen), np.dtype("<f4"), (4,)) is None
    assert reader.torn == 1
    reader.close()


def test_a_payload_larger_than_a_slot_is_not_put(ring: Ring) -> None:
    assert ring.put(np.zeros((17,), np.float32)) is None  # 68 bytes > 64
    assert ring.stride == HEADER + 64


def test_a_slot_outside_the_ring_is_refused(ring: Ring) -> None:
    reader = Reader()
    assert reader.get(ref(ring, 7, 2), np.dtype("<f4"), (4,)) is None
    assert reader.torn == 1
    reader.close()


def test_a_shared_memory_subscriber_is_never_lossless() -> None:
    from streamconv.client import Subscriber
    from streamconv.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be lossless"):
        Subscriber("tcp://127.0.0.1:1", shm=True, lossless=True, inputs=["tcp://127.0.0.1:2"])
