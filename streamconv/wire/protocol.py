"""The wire format (docs/PROTOCOL.md): encode and decode input and output messages.

Only numpy and the standard library: any process, with or without torch or zmq, can use it.
Arrays travel as a JSON header plus the raw C-order buffer; nothing is ever pickled.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from streamconv.errors import Drop, ProtocolError
from streamconv.wire.quant import F32_MAX, FULL_SCALE, dequantise, quantise

VERSION = 1
INT64_MAX = 2**63 - 1  # every integer field fits a signed 64-bit integer (any language can hold it)
MAX_SESSION_CHARS = 128
MAX_PEEK_BYTES = 4096  # a header read only to name who sent a message too large
PROBE_STREAM = "_probe"  # eos on this stream asks the worker for an eos back (readiness)
PREVIEW_PREFIX = "_preview/"  # "_preview/{stream}/{layer}/": small, rate-limited outputs
SHM_PREFIX = "_shm/"  # "_shm/{stream}/{layer}/": outputs whose payload is in shared memory
SHM_NAME_RE = re.compile(r"/?[A-Za-z0-9_.-]{1,64}")
# The layer name of a stream's input preview. A layer name cannot contain a dot (config), a
# protocol name can: no layer is ever called this.
INPUT = ".input"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
VERSION_RE = re.compile(r"[0-9a-f]{1,64}")  # a model_version: the weights' fingerprint
# Multi-byte values are little-endian on the wire, whatever the machine.
INPUT_DTYPES: dict[str, np.dtype[Any]] = {
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}
OUTPUT_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
}
INPUT_KINDS = ("frame", "eos")
OUTPUT_KINDS = ("output", "eos")


def now_ns() -> int:
    return time.time_ns()


def new_session() -> str:
    """A fresh session id: unique per capture start."""
    return uuid.uuid4().hex


def _short(value: object) -> str:
    """repr for an error message, cut short: a hostile header may hold a 4000-digit number."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} chars)"


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        msg = f"{what} must match [A-Za-z0-9_.-]{{1,64}}, got {_short(value)}"
        raise ProtocolError(msg)
    return value


def topic(stream: str, layer: str) -> bytes:
    """Output topic; the trailing slash keeps 'conv1/' from matching 'conv10/'."""
    return f"{stream}/{layer}/".encode()


def stream_topic(stream: str) -> bytes:
    return f"{stream}/".encode()


def preview_topic(stream: str, layer: str) -> bytes:
    return f"{PREVIEW_PREFIX}{stream}/{layer}/".encode()


def as_shm(parts: list[Any], ref: dict[str, Any] | bool) -> list[Any]:
    """An output message (`encode_output`'s parts) whose payload went to shared memory:
    the same header plus `shm` (ring name, slot, generation, slot size), on the shm topic,
    with no payload; an eos (`encode_output_eos`'s) is repeated there with `"shm": true`."""
    header = json.loads(parts[1])
    header["shm"] = ref
    topic = SHM_PREFIX.encode() + bytes(parts[0])
    return [topic, json.dumps(header).encode(), b""]


def shm_payload(header: dict[str, Any], data: np.ndarray) -> np.ndarray:
    """The array of an output whose bytes `data` came from shared memory (uint8: scaled
    back to float32, as decode_output does with a payload)."""
    if header["dtype"] == "uint8":
        return dequantise(data, float(header["scale"]), float(header["offset"]))
    return data


@dataclass(frozen=True, slots=True)
class InputMessage:
    """A decoded input message; `frame` is None for eos and read-only for frames."""

    kind: str
    stream: str
    session: str
    seq: int
    t_ns: int
    frame: np.ndarray | None = None
    fps: float | None = None
    watch: str | None = None  # a probe asks whether this stream has a subscriber
    resume: str | None = None  # ...and where the watched stream's session `resume` goes on
    lossless: bool = False  # the sender resends what a restarted worker asks for
    live: bool = False  # the sender drops frames rather than wait: the worker may too
    replay: bool = False  # a frame sent again after a resume
    ack: int | None = None  # a lossless subscriber's probe: the next seq of `watch` it needs
    ack_session: str | None = None  # ...of this session of it (None: whichever comes)


def encode_frame(
    stream: str,
    session: str,
    seq: int,
    frame: np.ndarray,
    t_ns: int | None = None,
    fps: float | None = None,
    *,
    lossless: bool = False,
    replay: bool = False,
    live: bool = False,
) -> list[Any]:
    """[header, payload] for one frame of shape (H, W) or (H, W, C). `lossless`: the sender
    resends from where a restarted worker asks; `replay`: this frame is such a resend; `live`:
    latency first, the worker may drop frames of this stream when it falls behind."""
    dtype = frame.dtype.name
    if dtype not in INPUT_DTYPES:
        msg = f"frame dtype {dtype} is not one of {sorted(INPUT_DTYPES)}"
        raise ProtocolError(msg)
    if frame.ndim not in (2, 3):
        msg = f"frame shape {frame.shape} must be [H, W] or [H, W, C]"
        raise ProtocolError(msg)
    header: dict[str, Any] = {
        "v": VERSION,
        "kind": "frame",
        "stream": stream,
        "session": session,
        "seq": seq,
        "t_ns": now_ns() if t_ns is None else t_ns,
        "shape": list(frame.shape),
        "dtype": dtype,
    }
    if fps is not None:
        header["fps"] = float(fps)
    if lossless:
        header["lossless"] = True
    if replay:
        header["replay"] = True
    if live:
        header["live"] = True
    return [json.dumps(header).encode(), np.ascontiguousarray(frame, dtype=INPUT_DTYPES[dtype])]


def as_replay(parts: list[Any]) -> list[Any]:
    """A frame message (from encode_frame) marked `replay`: sent again after a resume, or the
    first frame after a resume that found the worker holding every frame sent (a restarted
    worker runs a lossless stream's restored seq only as its sender's resend)."""
    header = json.loads(bytes(parts[0])) | {"replay": True}
    return [json.dumps(header).encode(), *parts[1:]]


def encode_eos(
    stream: str,
    session: str,
    seq: int,
    t_ns: int | None = None,
    watch: str | None = None,
    resume: str | None = None,
    lossless: bool = False,
) -> list[Any]:
    """[header, b""]: the end of a stream; `seq` is the number of frames sent. A probe (stream
    PROBE_STREAM) may `watch` a stream: the answer says whether it has a subscriber, and with
    `resume` (a session of that stream) the seq the worker needs next and its last checkpoint.
    `lossless`: the sender resends frames (and this eos) that a restarted worker lacks."""
    header: dict[str, Any] = {
        "v": VERSION,
        "kind": "eos",
        "stream": stream,
        "session": session,
        "seq": seq,
        "t_ns": now_ns() if t_ns is None else t_ns,
    }
    if watch is not None:
        header["watch"] = watch
    if resume is not None:
        header["resume"] = resume
    if lossless:
        header["lossless"] = True
    return [json.dumps(header).encode(), b""]


def _header(raw: Any) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        msg = f"header is not UTF-8 JSON: {e}"
        raise ProtocolError(msg, Drop.MALFORMED) from e
    if not isinstance(header, dict):
        msg = f"header must be a JSON object, got {type(header).__name__}"
        raise ProtocolError(msg, Drop.MALFORMED)
    version = header.get("v")
    # JSON 1.0 and true compare equal to 1 in Python: the type is checked first.
    if not _is_int(version) or version != VERSION:
        msg = f"unsupported protocol version {_short(version)} (this build speaks {VERSION})"
        raise ProtocolError(msg, Drop.VERSION)
    return header


def _is_int(value: object) -> TypeGuard[int]:
    """A JSON integer: not a float such as 1.0, not a boolean (a bool is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(header: dict[str, Any], key: str) -> int:
    """A JSON integer in the int64 range, and >= 0 (every integer field of version 1 is)."""
    value = header.get(key)
    if not _is_int(value) or not 0 <= value <= INT64_MAX:
        msg = f"field {key!r} must be an integer in [0, 2**63-1], got {_short(value)}"
        raise ProtocolError(msg)
    return value


def _session(header: dict[str, Any]) -> str:
    session = header.get("session")
    if not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION_CHARS:
        msg = (
            f"field 'session' must be a non-empty string of at most {MAX_SESSION_CHARS} chars, "
            f"got {_short(session)}"
        )
        raise ProtocolError(msg)
    return session


def _fps(header: dict[str, Any]) -> float | None:
    fps = header.get("fps")
    if fps is None:
        return None
    # An integer fps is bounded too: float(10**400) would overflow.
    ok = (_is_int(fps) and 0 < fps <= INT64_MAX) or (isinstance(fps, float) and 0 < fps < math.inf)
    if not ok:
        msg = f"field 'fps' must be a positive number, got {_short(fps)}"
        raise ProtocolError(msg)
    return float(fps)


def _flag(header: dict[str, Any], key: str) -> None:
    """An optional boolean: absent, true or false (not 1, not "false")."""
    if key in header and not isinstance(header[key], bool):
        msg = f"field {key!r} must be true or false, got {_short(header[key])}"
        raise ProtocolError(msg)


def _shape(value: Any, ndims: tuple[int, ...]) -> tuple[int, ...]:
    ok = (
        isinstance(value, list)
        and len(value) in ndims
        and all(_is_int(n) and 0 < n <= INT64_MAX for n in value)
    )
    if not ok:
        msg = (
            f"field 'shape' must be a list of {ndims} integers in [1, 2**63-1], got {_short(value)}"
        )
        raise ProtocolError(msg)
    return tuple(value)


def _array(payload: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    buf = memoryview(payload)
    expected = math.prod(shape) * dtype.itemsize  # exact: np.prod would overflow
    if buf.nbytes != expected:
        msg = f"payload is {buf.nbytes} bytes, shape {list(shape)} of {dtype.name} needs {expected}"
        raise ProtocolError(msg, Drop.BAD_PAYLOAD)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def decode_input(parts: list[Any]) -> InputMessage:
    """Validate and decode [header, payload]; raises ProtocolError naming the fault."""
    if len(parts) != 2:
        msg = f"input message must have 2 parts [header, payload], got {len(parts)}"
        raise ProtocolError(msg, Drop.MALFORMED)
    header = _header(parts[0])
    kind = header.get("kind")
    if kind not in INPUT_KINDS:
        msg = f"field 'kind' must be one of {INPUT_KINDS}, got {_short(kind)}"
        raise ProtocolError(msg)
    stream = check_name(header.get("stream"), "field 'stream'")
    session = _session(header)
    seq = _int_field(header, "seq")
    t_ns = _int_field(header, "t_ns")
    if kind == "eos":
        watch = header.get("watch")
        if watch is not None:
            watch = check_name(watch, "field 'watch'")
        resume = header.get("resume")
        if resume is not None:
            resume = _session({"session": resume})
        _flag(header, "lossless")
        ack, ack_session = _ack(header)
        return InputMessage("eos", stream, session, seq, t_ns, watch=watch, resume=resume,
                            lossless=bool(header.get("lossless")), ack=ack,
                            ack_session=ack_session)  # fmt: skip
    dtype_name = header.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in INPUT_DTYPES:
        msg = f"field 'dtype' must be one of {sorted(INPUT_DTYPES)}, got {_short(dtype_name)}"
        raise ProtocolError(msg)
    shape = _shape(header.get("shape"), (2, 3))
    fps = _fps(header)
    frame = _array(parts[1], shape, INPUT_DTYPES[dtype_name])
    if dtype_name == "float32" and not np.isfinite(frame).all():
        msg = "float32 frame holds NaN or infinite values"
        raise ProtocolError(msg, Drop.NON_FINITE)
    _flag(header, "lossless")
    _flag(header, "replay")
    _flag(header, "live")
    return InputMessage("frame", stream, session, seq, t_ns, frame, fps,
                        lossless=bool(header.get("lossless")), replay=bool(header.get("replay")),
                        live=bool(header.get("live")))  # fmt: skip


def _ack(header: dict[str, Any]) -> tuple[int | None, str | None]:
    """A lossless subscriber's acknowledgement on a probe: (next seq needed, of which session)."""
    if header.get("ack") is None:
        return None, None
    if header.get("watch") is None:
        msg = "field 'ack' needs 'watch' (the stream acknowledged)"
        raise ProtocolError(msg)
    ack = _int_field(header, "ack")
    session = header.get("ack_session")
    return ack, None if session is None else _session({"session": session})


def encode_ack(subscriber: str, stream: str, next_seq: int, session: str | None) -> list[Any]:
    """[header, b""]: a lossless subscriber (`subscriber`, its own id) has consumed every
    output of `stream` (of `session`, if known) before `next_seq`; the worker lets lossless
    senders of that stream run at most a window ahead (docs/PROTOCOL.md)."""
    header = json.loads(encode_eos(PROBE_STREAM, subscriber, 0, watch=stream)[0])
    header["ack"] = next_seq
    if session is not None:
        header["ack_session"] = session
    return [json.dumps(header).encode(), b""]


def peek_stream(raw: Any) -> tuple[str | None, str | None]:
    """(stream, session) of an input header that will not be decoded (a message too large),
    best effort: (None, None) when they cannot be read."""
    if len(raw) > MAX_PEEK_BYTES:
        return None, None
    try:
        header = _header(raw)
        return check_name(header.get("stream"), "stream"), _session(header)
    except ProtocolError:
        return None, None


def to_float(frame: np.ndarray) -> np.ndarray:
    """Input pixels as float32: integers divided by their full scale, float32 as is."""
    full = FULL_SCALE.get(frame.dtype)
    if full is None:
        return frame.astype(np.float32, copy=False)
    return frame.astype(np.float32) / full


def encode_output(
    stream: str,
    layer: str,
    session: str,
    seq: int,
    t_ns: int,
    array: np.ndarray,
    *,
    dtype: str = "float32",
    discontinuity: bool = False,
    scale: float | None = None,
    offset: float | None = None,
    fps: float | None = None,
    replay: bool = False,
    model_version: str | None = None,
) -> list[Any]:
    """[topic, header, payload] for one output frame (C, H, W) of one layer; `replay`: it was
    computed again after a resume (a subscriber may already hold this seq); `model_version`:
    the fingerprint of the weights it was computed with.

    For dtype "uint8" a float frame is quantised here (value = byte * scale + offset); a
    uint8 frame with its `scale` and `offset` (quantised by the sender, e.g. on the GPU) is
    sent as is. `fps` is the source's nominal frame rate, forwarded from the input.
    """
    if array.ndim != 3:
        msg = f"output frame must be [C, H, W], got shape {array.shape}"
        raise ProtocolError(msg)
    header: dict[str, Any] = {
        "v": VERSION,
        "kind": "output",
        "stream": stream,
        "layer": layer,
        "session": session,
        "seq": seq,
        "t_ns": t_ns,
        "t_out_ns": now_ns(),
        "shape": list(array.shape),
        "dtype": dtype,
    }
    if discontinuity:
        header["discontinuity"] = True
    if replay:
        header["replay"] = True
    if model_version is not None:
        header["model_version"] = model_version
    if fps is not None:
        header["fps"] = float(fps)
    if dtype == "uint8":
        if array.dtype != np.uint8 or scale is None or offset is None:
            array, scale, offset = quantise(array)
        header["scale"], header["offset"] = scale, offset
        payload = np.ascontiguousarray(array)
    elif dtype in OUTPUT_DTYPES:
        payload = np.ascontiguousarray(array, dtype=OUTPUT_DTYPES[dtype])
    else:
        msg = f"output dtype must be one of {sorted(OUTPUT_DTYPES)}, got {dtype!r}"
        raise ProtocolError(msg)
    return [topic(stream, layer), json.dumps(header).encode(), payload]


def encode_preview(
    stream: str,
    layer: str,
    session: str,
    seq: int,
    t_ns: int,
    small: np.ndarray,
    *,
    full_shape: tuple[int, ...],
    discontinuity: bool,
    lost: int,
    fps: float | None = None,
    model_version: str | None = None,
) -> list[Any]:
    """A preview of output `seq`: `small` (C, h, w) float as uint8, on the preview topic, with
    the full frame's shape, whether a discontinuity came since the previous preview, and the
    stream's frames the worker never ran (`lost`)."""
    parts = encode_output(stream, layer, session, seq, t_ns, small, dtype="uint8",
                          discontinuity=discontinuity, fps=fps,
                          model_version=model_version)  # fmt: skip
    header = json.loads(parts[1])
    header |= {"preview": True, "full_shape": list(full_shape), "lost": lost}
    return [preview_topic(stream, layer), json.dumps(header).encode(), parts[2]]


def encode_output_eos(
    stream: str,
    layer: str,
    session: str,
    seq: int,
    subscribed: bool | None = None,
    *,
    preview: bool = False,
    resume: dict[str, Any] | None = None,
    boot: str | None = None,
    shm_outputs: bool = False,
) -> list[Any]:
    """[topic, header, b""]: no more output for this layer of this stream and session.
    `subscribed` answers a probe's `watch`; `preview` sends it on the preview topic; a probe's
    answer carries the `resume` fields (next_seq, checkpointed, ended, credit), the worker's
    `boot` id and `shm_outputs` (it publishes outputs in shared memory too)."""
    header: dict[str, Any] = {
        "v": VERSION,
        "kind": "eos",
        "stream": stream,
        "layer": layer,
        "session": session,
        "seq": seq,
        "t_out_ns": now_ns(),
    }
    if subscribed is not None:
        header["subscribed"] = subscribed
    if resume is not None:  # a probe's answer: where the watched stream goes on
        header.update(resume)
    if boot is not None and stream == PROBE_STREAM:
        header["boot"] = boot
    if shm_outputs and stream == PROBE_STREAM:
        header["shm_outputs"] = True
    if preview:
        header["preview"] = True
        return [preview_topic(stream, layer), json.dumps(header).encode(), b""]
    return [topic(stream, layer), json.dumps(header).encode(), b""]


def _number(value: object) -> float | None:
    """A JSON number as a float if it is finite (integers up to int64), else None."""
    if _is_int(value):
        return float(value) if abs(value) <= INT64_MAX else None
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _dequantisable(scale: object, offset: object) -> bool:
    """Numbers for which byte * scale + offset cannot overflow float32 (which would warn)."""
    s, o = _number(scale), _number(offset)
    return s is not None and o is not None and 255 * abs(s) + abs(o) <= F32_MAX


def _shm_ref(header: dict[str, Any], payload_bytes: int) -> None:
    ref = header["shm"]
    fields_ok = isinstance(ref, dict) and isinstance(ref.get("name"), str)
    if not fields_ok or not SHM_NAME_RE.fullmatch(ref["name"]) or payload_bytes:
        msg = f"field 'shm' must name a ring and come without a payload, got {_short(ref)}"
        raise ProtocolError(msg)
    for key in ("slot", "gen", "slot_bytes"):
        _int_field(ref, key)


def decode_output(parts: list[Any]) -> tuple[dict[str, Any], np.ndarray | None]:
    """(header, array) from [topic, header, payload]; uint8 payloads are scaled back to float32.

    Every field a receiver reads is checked, so the header can be trusted: `stream`, `layer`,
    `session`, `seq` and `t_out_ns` always, `t_ns`, `shape` and `dtype` for outputs, and the
    optional `fps`, `discontinuity` and `subscribed` when present.
    """
    if len(parts) != 3:
        msg = f"output message must have 3 parts [topic, header, payload], got {len(parts)}"
        raise ProtocolError(msg, Drop.MALFORMED)
    header = _header(parts[1])
    kind = header.get("kind")
    if kind not in OUTPUT_KINDS:
        msg = f"field 'kind' must be one of {OUTPUT_KINDS}, got {_short(kind)}"
        raise ProtocolError(msg)
    check_name(header.get("stream"), "field 'stream'")
    check_name(header.get("layer"), "field 'layer'")
    _session(header)
    _int_field(header, "seq")
    _int_field(header, "t_out_ns")
    _flag(header, "subscribed")
    _flag(header, "discontinuity")
    _flag(header, "preview")
    _flag(header, "replay")
    if header.get("next_seq") is not None:
        _int_field(header, "next_seq")
    if header.get("checkpointed") is not None:
        _int_field(header, "checkpointed")
    _flag(header, "ended")
    for name in ("credit", "checkpoint_every"):
        if header.get(name) is not None:
            _int_field(header, name)
    dropped = header.get("dropped")
    if dropped is not None and not (
        isinstance(dropped, dict) and all(_is_int(n) and n >= 0 for n in dropped.values())
    ):
        msg = f"field 'dropped' must map reasons to counts, got {_short(dropped)}"
        raise ProtocolError(msg)
    if "boot" in header:
        _session({"session": header["boot"]})
    if header.get("preview"):
        if kind == "output":
            header["full_shape"] = list(_shape(header.get("full_shape"), (3,)))
        if "lost" in header:
            _int_field(header, "lost")
    if header.get("fps") is not None:
        header["fps"] = _fps(header)
    version = header.get("model_version")
    if version is not None and not (isinstance(version, str) and VERSION_RE.fullmatch(version)):
        msg = f"field 'model_version' must be 1-64 hex digits, got {_short(version)}"
        raise ProtocolError(msg)
    if kind == "eos":
        return header, None
    _int_field(header, "t_ns")
    dtype_name = header.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in OUTPUT_DTYPES:
        msg = f"field 'dtype' must be one of {sorted(OUTPUT_DTYPES)}, got {_short(dtype_name)}"
        raise ProtocolError(msg)
    shape = _shape(header.get("shape"), (3,))
    if "shm" in header:  # the payload waits in shared memory: the receiver maps it
        _shm_ref(header, len(parts[2]))
        if dtype_name == "uint8" and not _dequantisable(header.get("scale"), header.get("offset")):
            raise ProtocolError("uint8 output needs finite numbers 'scale' and 'offset'")
        header["shape"] = list(shape)
        return header, None
    array = _array(parts[2], shape, OUTPUT_DTYPES[dtype_name])
    if dtype_name == "uint8":
        scale, offset = header.get("scale"), header.get("offset")
        if not _dequantisable(scale, offset):
            msg = (
                "uint8 output needs finite numbers 'scale' and 'offset' with "
                f"255*|scale| + |offset| within float32, got {_short(scale)}, {_short(offset)}"
            )
            raise ProtocolError(msg)
        array = dequantise(array, float(scale), float(offset))  # type: ignore[arg-type]
    return header, array
