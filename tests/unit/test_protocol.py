"""The wire format: round trips, and every malformed message rejected with a named fault."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streamconv.errors import Drop, ProtocolError
from streamconv.wire import protocol

SESSION = "s" * 32


def header(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "kind": "frame",
        "stream": "cam0",
        "session": SESSION,
        "seq": 3,
        "t_ns": 1000,
        "shape": [2, 3],
        "dtype": "uint8",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def message(payload: bytes = bytes(6), **changes: Any) -> list[Any]:
    return [json.dumps(header(**changes)).encode(), payload]


def wire(parts: list[Any]) -> list[bytes]:
    """What a receiver gets: every part as bytes."""
    return [bytes(memoryview(p)) for p in parts]


frames = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
    shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
    elements={"allow_nan": False, "allow_infinity": False},  # non-finite: rejected
)


@settings(max_examples=60, deadline=None)
@given(frame=frames, seq=st.integers(0, 2**40), fps=st.none() | st.floats(0.1, 240.0))
def test_frame_round_trip(frame: np.ndarray, seq: int, fps: float | None) -> None:
    msg = protocol.decode_input(
        wire(protocol.encode_frame("cam-0.a_b", SESSION, seq, frame, 7, fps))
    )
    assert (msg.kind, msg.stream, msg.session, msg.seq, msg.t_ns, msg.fps) == (
        "frame", "cam-0.a_b", SESSION, seq, 7, fps,
    )  # fmt: skip
    assert msg.frame is not None
    assert msg.frame.dtype == frame.dtype
    np.testing.assert_array_equal(msg.frame, frame)


def test_non_contiguous_frame_is_sent_in_c_order() -> None:
    frame = np.arange(24, dtype=np.uint8).reshape(4, 6)[:, ::2]
    msg = protocol.decode_input(wire(protocol.encode_frame("cam0", SESSION, 0, frame)))
    np.testing.assert_array_equal(msg.frame, frame)


def test_eos_round_trip() -> None:
    msg = protocol.decode_input(wire(protocol.encode_eos("cam0", SESSION, 12, t_ns=5)))
    assert (msg.kind, msg.seq, msg.t_ns, msg.frame) == ("eos", 12, 5, None)


def test_to_float_scales_by_dtype() -> None:
    assert protocol.to_float(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert protocol.to_float(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    assert protocol.to_float(np.array([-2.5], np.float32)).tolist() == [-2.5]


@pytest.mark.parametrize(
    ("parts", "fault"),
    [
        ([b"{}"], "2 parts"),
        ([b"{}", b"", b""], "2 parts"),
        ([b"not json", b""], "not UTF-8 JSON"),
        ([b"\xff\xfe", b""], "not UTF-8 JSON"),
        ([b"[1, 2]", b""], "JSON object, got list"),
        (message(v=...), "version None"),
        (message(v=2), "version 2"),
        (message(v="1"), "version '1'"),
        (message(v=1.0), "version 1.0"),
        (message(v=True), "version True"),
        (message(kind="frames"), "'kind'"),
        (message(kind=...), "'kind'"),
        (message(stream="a/b"), "'stream'"),
        (message(stream=""), "'stream'"),
        (message(stream="x" * 65), "'stream'"),
        (message(stream=7), "'stream'"),
        (message(session=""), "'session'"),
        (message(session=5), "'session'"),
        (message(session="x" * 129), "'session'"),
        (message(seq=-1), "'seq'"),
        (message(seq=1.0), "'seq'"),
        (message(seq=True), "'seq'"),
        (message(seq=...), "'seq'"),
        (message(t_ns="5"), "'t_ns'"),
        (message(seq=10**100), "'seq'"),
        (message(seq=2**63), "'seq'"),
        (message(t_ns=2**70), "'t_ns'"),
        (message(t_ns=-1), "'t_ns'"),
        (message(kind="eos", seq=2**64), "'seq'"),
        (message(shape=[2**63, 1]), "'shape'"),
        (message(fps=10**400), "'fps'"),
        (message(dtype="int8"), "'dtype'"),
        (message(dtype=...), "'dtype'"),
        (message(shape=[6]), "'shape'"),
        (message(shape=[1, 2, 3, 1]), "'shape'"),
        (message(shape=[2, 0]), "'shape'"),
        (message(shape=[2, "3"]), "'shape'"),
        (message(shape=[2, True]), "'shape'"),
        (message(shape="2x3"), "'shape'"),
        (message(fps=0), "'fps'"),
        (message(fps="30"), "'fps'"),
        (message(fps=True), "'fps'"),
        (message(payload=bytes(5)), "payload is 5 bytes"),
        (message(payload=bytes(7)), "needs 6"),
        (message(payload=bytes(6), dtype="uint16"), "needs 12"),
    ],
)
def test_malformed_input_is_rejected_naming_the_fault(parts: list[Any], fault: str) -> None:
    with pytest.raises(ProtocolError, match=fault):
        protocol.decode_input(parts)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"{}"], Drop.MALFORMED),
        ([b"not json", b""], Drop.MALFORMED),
        ([b"[1]", b""], Drop.MALFORMED),
        (message(v=1.0), Drop.VERSION),
        (message(v=True), Drop.VERSION),
        (message(v=...), Drop.VERSION),
        (message(seq=10**100), Drop.BAD_FIELD),
        (message(t_ns=2**70), Drop.BAD_FIELD),
        (message(shape=[2**63, 1]), Drop.BAD_FIELD),
        (message(payload=bytes(5)), Drop.BAD_PAYLOAD),
    ],
)
def test_rejection_reason_is_typed(parts: list[Any], reason: Drop) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_input(parts)
    assert info.value.reason is reason


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"t/", b"{}"], Drop.MALFORMED),
        ([b"t/", b"{", b""], Drop.MALFORMED),
        ([b"t/", json.dumps({"v": 1.0, "kind": "eos"}).encode(), b""], Drop.VERSION),
        ([b"t/", json.dumps({"v": True, "kind": "eos"}).encode(), b""], Drop.VERSION),
    ],
)
def test_output_rejection_reason_is_typed(parts: list[Any], reason: Drop) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_output(parts)
    assert info.value.reason is reason


def test_int64_bounds_are_inclusive() -> None:
    """2**63-1 is the largest integer any field may hold: it decodes, in both directions."""
    top = 2**63 - 1
    msg = protocol.decode_input(message(seq=top, t_ns=top))
    assert (msg.seq, msg.t_ns) == (top, top)
    eos = protocol.decode_input(wire(protocol.encode_eos("cam0", SESSION, top, t_ns=top)))
    assert (eos.seq, eos.t_ns) == (top, top)
    array = np.zeros((1, 1, 2), np.float32)
    head, _ = protocol.decode_output(
        wire(protocol.encode_output("cam0", "c", SESSION, top, top, array))
    )
    assert (head["seq"], head["t_ns"]) == (top, top)


def test_a_4000_digit_seq_is_rejected_with_a_short_message() -> None:
    with pytest.raises(ProtocolError, match="'seq'") as info:
        protocol.decode_input(message(seq=10**4000))
    assert len(str(info.value)) < 200


def test_probe_watch_and_subscribed_round_trip() -> None:
    probe = protocol.decode_input(wire(protocol.encode_eos("_probe", SESSION, 0, watch="cam0")))
    assert (probe.stream, probe.watch) == ("_probe", "cam0")
    with pytest.raises(ProtocolError, match="'watch'"):
        protocol.decode_input(message(kind="eos", watch="a/b"))
    for subscribed in (True, False):
        parts = protocol.encode_output_eos("_probe", "c", SESSION, 0, subscribed=subscribed)
        head, _ = protocol.decode_output(wire(parts))
        assert head["subscribed"] is subscribed
    head, _ = protocol.decode_output(wire(protocol.encode_output_eos("cam0", "c", SESSION, 0)))
    assert "subscribed" not in head


def test_output_fps_round_trip() -> None:
    array = np.zeros((1, 1, 2), np.float32)
    head, _ = protocol.decode_output(
        wire(protocol.encode_output("cam0", "c", SESSION, 0, 0, array, fps=12.5))
    )
    assert head["fps"] == 12.5
    head, _ = protocol.decode_output(
        wire(protocol.encode_output("cam0", "c", SESSION, 0, 0, array))
    )
    assert "fps" not in head


def test_output_model_version_round_trip_and_a_bad_one_is_refused() -> None:
    array = np.zeros((1, 1, 2), np.float32)
    parts = protocol.encode_output("cam0", "c", SESSION, 0, 0, array, model_version="0a1b2c")
    head, _ = protocol.decode_output(wire(parts))
    assert head["model_version"] == "0a1b2c"
    header = json.loads(parts[1])
    for bad in ("XYZ", 12, "", "a" * 65):
        header["model_version"] = bad
        with pytest.raises(ProtocolError, match="model_version"):
            protocol.decode_output(wire([parts[0], json.dumps(header).encode(), parts[2]]))


def test_encode_frame_rejects_unsupported_arrays() -> None:
    with pytest.raises(ProtocolError, match="dtype int64"):
        protocol.encode_frame("cam0", SESSION, 0, np.zeros((2, 2), np.int64))
    with pytest.raises(ProtocolError, match="shape"):
        protocol.encode_frame("cam0", SESSION, 0, np.zeros((2,), np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_output_float_round_trip(dtype: str) -> None:
    array = np.linspace(-3, 3, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    parts = protocol.encode_output("cam0", "conv1", SESSION, 4, 9, array, dtype=dtype)
    assert parts[0] == b"cam0/conv1/"
    head, out = protocol.decode_output(wire(parts))
    assert (head["layer"], head["seq"], head["t_ns"], head["shape"]) == ("conv1", 4, 9, [2, 3, 4])
    assert "discontinuity" not in head
    assert out is not None
    np.testing.assert_allclose(out, array, rtol=1e-3 if dtype == "float16" else 0.0)


@settings(max_examples=40, deadline=None)
@given(
    array=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=3, max_dims=3, max_side=5),
        elements=st.floats(-1e3, 1e3, width=32),
    )
)
def test_output_uint8_round_trip_within_one_step(array: np.ndarray) -> None:
    parts = protocol.encode_output("cam0", "c", SESSION, 0, 0, array, dtype="uint8")
    head, out = protocol.decode_output(wire(parts))
    assert out is not None
    assert out.dtype == np.float32
    step = head["scale"]
    np.testing.assert_allclose(
        out, array, atol=step * 0.5 + 1e-3 * max(1.0, float(np.abs(array).max()))
    )


@pytest.mark.parametrize("tiny", [1.1754944e-38, 1e-45, 1e-37, 1e-35])
def test_uint8_quantising_a_subnormal_range_does_not_overflow(tiny: float) -> None:
    """Found by hypothesis: 1/scale overflowed float32 (a RuntimeWarning, inf bytes)."""
    array = np.array([[[tiny, 0.0]]], np.float32)
    _, out = protocol.decode_output(
        wire(protocol.encode_output("cam0", "c", SESSION, 0, 0, array, dtype="uint8"))
    )
    assert out is not None
    np.testing.assert_allclose(out, array, atol=1e-36)


def test_output_flags_and_eos() -> None:
    array = np.zeros((1, 2, 2), np.float32)
    head, _ = protocol.decode_output(
        wire(protocol.encode_output("cam0", "c", SESSION, 0, 0, array, discontinuity=True))
    )
    assert head["discontinuity"] is True
    eos = wire(protocol.encode_output_eos("cam0", "c", SESSION, 8))
    assert eos[0] == protocol.topic("cam0", "c")
    head, out = protocol.decode_output(eos)
    assert (head["kind"], head["seq"], out) == ("eos", 8, None)


def test_topics_do_not_collide_by_prefix() -> None:
    assert not protocol.topic("cam0", "conv10").startswith(protocol.topic("cam0", "conv1"))
    assert not protocol.topic("cam10", "c").startswith(protocol.stream_topic("cam1"))
    assert protocol.topic("cam1", "c").startswith(protocol.stream_topic("cam1"))


def test_output_encode_rejects_bad_arrays() -> None:
    with pytest.raises(ProtocolError, match=r"\[C, H, W\]"):
        protocol.encode_output("cam0", "c", SESSION, 0, 0, np.zeros((2, 2), np.float32))
    with pytest.raises(ProtocolError, match="output dtype"):
        protocol.encode_output("cam0", "c", SESSION, 0, 0, np.zeros((1, 2, 2)), dtype="int8")


def out_header(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "kind": "output",
        "stream": "cam0",
        "layer": "conv1",
        "session": SESSION,
        "seq": 3,
        "t_ns": 1000,
        "t_out_ns": 2000,
        "shape": [1, 1, 2],
        "dtype": "float32",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def out_message(payload: bytes = bytes(8), **changes: Any) -> list[Any]:
    return [b"cam0/conv1/", json.dumps(out_header(**changes)).encode(), payload]


def test_a_valid_output_header_decodes() -> None:
    """The base of the malformed cases below is itself valid: each case tests one fault."""
    head, out = protocol.decode_output(out_message())
    assert out is not None
    assert (head["stream"], head["layer"], out.shape) == ("cam0", "conv1", (1, 1, 2))


@pytest.mark.parametrize(
    ("parts", "fault"),
    [
        ([b"t/", b"{}"], "3 parts"),
        ([b"t/", b"nope", b""], "not UTF-8 JSON"),
        (out_message(kind="frame"), "'kind'"),
        (out_message(dtype="int8"), "'dtype'"),
        (out_message(shape=[2, 2]), "'shape'"),
        (out_message(shape=[1, 1, 2**63]), "'shape'"),
        (out_message(shape=[1, 1, 0]), "'shape'"),
        (out_message(payload=b"1234"), "needs 8"),
        (out_message(v=9), "version 9"),
        (out_message(v=1.0), "version 1.0"),
        (out_message(v=True), "version True"),
        (out_message(stream=...), "'stream'"),
        (out_message(stream="a/b"), "'stream'"),
        (out_message(layer=...), "'layer'"),
        (out_message(layer="../x"), "'layer'"),
        (out_message(session=...), "'session'"),
        (out_message(session=""), "'session'"),
        (out_message(seq=...), "'seq'"),
        (out_message(seq=-1), "'seq'"),
        (out_message(seq=3.0), "'seq'"),
        (out_message(seq=10**100), "'seq'"),
        (out_message(seq=2**63), "'seq'"),
        (out_message(t_ns=...), "'t_ns'"),
        (out_message(t_ns=2**70), "'t_ns'"),
        (out_message(t_out_ns=...), "'t_out_ns'"),
        (out_message(t_out_ns=2**64), "'t_out_ns'"),
        (out_message(fps=0), "'fps'"),
        (out_message(fps="25"), "'fps'"),
        (out_message(fps=10**400), "'fps'"),
        (out_message(discontinuity="yes"), "'discontinuity'"),
        (out_message(discontinuity=1), "'discontinuity'"),
        (out_message(kind="eos", subscribed=1), "'subscribed'"),
        (out_message(kind="eos", seq=10**100), "'seq'"),
        (out_message(kind="eos", layer=...), "'layer'"),
    ],
)
def test_malformed_output_is_rejected_naming_the_fault(parts: list[Any], fault: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(fault)):
        protocol.decode_output(parts)


@pytest.mark.parametrize(
    ("scale", "offset"),
    [(..., 0.0), (1.0, ...), ("1", 0.0), (True, 0.0), (1e300, 0.0), (1.0, 1e39), (10**400, 0)],
    ids=["no-scale", "no-offset", "string", "bool", "overflows", "offset-overflows", "huge-int"],
)
def test_uint8_output_without_usable_scale_is_a_protocol_error(scale: Any, offset: Any) -> None:
    parts = out_message(b"\x00", dtype="uint8", shape=[1, 1, 1], scale=scale, offset=offset)
    with pytest.raises(ProtocolError, match="scale"):
        protocol.decode_output(parts)


def test_huge_shape_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="payload"):
        protocol.decode_input(message(payload=b"", shape=[2**32, 2**32, 1]))


def test_nan_fps_is_a_protocol_error() -> None:
    parts = [json.dumps(header(fps=float("nan"))).encode(), bytes(6)]
    with pytest.raises(ProtocolError, match="'fps'"):
        protocol.decode_input(parts)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float32_frame_with_nan_or_inf_is_rejected(bad: float) -> None:
    frame = np.zeros((2, 3), np.float32)
    frame[1, 2] = bad
    parts = wire(protocol.encode_frame("cam0", SESSION, 0, frame))
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        protocol.decode_input(parts)
