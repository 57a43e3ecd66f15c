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


@pytest.mark.parametrize(
    ("endpoints", "lossless", "previews", "auto"),
    [
        (["tcp://127.0.0.1:5556"], False, False, True),
        (["ipc:///tmp/w-out"], False, False, True),
        (["tcp://localhost:5556"], False, False, True),
        (["tcp://10.0.0.5:5556"], False, False, False),  # another host: the socket
        (["tcp://127.0.0.1:5556", "tcp://127.0.0.1:5566"], False, False, False),  # shards
        (["tcp://127.0.0.1:5556"], True, False, False),  # the ring does not wait
        (["tcp://127.0.0.1:5556"], False, True, False),  # previews: small, on the socket
    ],
)
def test_auto_shared_memory_only_on_this_host_and_never_lossless(
    endpoints: list[str], lossless: bool, previews: bool, auto: bool
) -> None:
    from streamconv.client.shared import Shared

    shared = Shared("auto", lossless, previews, endpoints)
    assert shared.auto is auto
    assert not shared.on  # until the worker says it offers a ring


def test_a_ring_that_cannot_be_mapped_sends_an_auto_subscriber_back_to_the_socket(
    zmq_ctx: object,
) -> None:
    """Another container's /dev/shm: the name in the header maps nothing here. The output is
    lost (counted in torn, so the subscriber reports it) and the next ones come by socket."""
    from streamconv.client.shared import Shared
    from streamconv.wire import protocol, transport

    sub = transport.open_socket(
        zmq_ctx,  # type: ignore[arg-type]
        "sub",
        transport.socket_settings("tcp://127.0.0.1:1", False, 8, 0),
        topics=[b"cam/"],
    )
    shared = Shared("auto", False, False, ["tcp://127.0.0.1:1"])
    shared.prepare(sub, [b"cam/"])
    offer = protocol.encode_output_eos(protocol.PROBE_STREAM, "x", "s", 0, shm_outputs=True)
    shared.settle(sub, [b"cam/"], [zmq_frame(p) for p in offer])
    assert shared.on
    assert shared.topics([b"cam/"]) == [b"_shm/cam/"]
    gone = {"name": "sc-no-such-ring", "slot": 0, "gen": 2, "slot_bytes": 65536}
    header = {"dtype": "float32", "shape": [1, 2, 2], "shm": gone}
    assert shared.payload(header, sub, [b"cam/"]) is None
    assert shared.torn == 1
    assert not shared.on
    assert not shared.auto  # it does not try again
    assert shared.topics([b"cam/"]) == [b"cam/"]


def zmq_frame(part: object) -> object:
    import zmq

    return zmq.Frame(part if isinstance(part, bytes) else bytes(part))  # type: ignore[arg-type]
