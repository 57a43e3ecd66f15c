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
from typing import Any

import numpy as np

from streamconv.errors import ProtocolError

VERSION = 1
PROBE_STREAM = "_probe"  # eos on this stream asks the worker for an eos back (readiness)
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
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


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        msg = f"{what} must match [A-Za-z0-9_.-]{{1,64}}, got {value!r}"
        raise ProtocolError(msg)
    return value


def topic(stream: str, layer: str) -> bytes:
    """Output topic; the trailing slash keeps 'conv1/' from matching 'conv10/'."""
    return f"{stream}/{layer}/".encode()


def stream_topic(stream: str) -> bytes:
    return f"{stream}/".encode()


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


def encode_frame(
    stream: str,
    session: str,
    seq: int,
    frame: np.ndarray,
    t_ns: int | None = None,
    fps: float | None = None,
) -> list[Any]:
    """[header, payload] for one frame of shape (H, W) or (H, W, C)."""
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
    return [json.dumps(header).encode(), np.ascontiguousarray(frame, dtype=INPUT_DTYPES[dtype])]


def encode_eos(stream: str, session: str, seq: int, t_ns: int | None = None) -> list[Any]:
    """[header, b""]: the end of a stream; `seq` is the number of frames sent."""
    header = {
        "v": VERSION,
        "kind": "eos",
        "stream": stream,
        "session": session,
        "seq": seq,
        "t_ns": now_ns() if t_ns is None else t_ns,
    }
    return [json.dumps(header).encode(), b""]


def _header(raw: Any) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        msg = f"header is not UTF-8 JSON: {e}"
        raise ProtocolError(msg) from e
    if not isinstance(header, dict):
        msg = f"header must be a JSON object, got {type(header).__name__}"
        raise ProtocolError(msg)
    if header.get("v") != VERSION:
        msg = f"unsupported protocol version {header.get('v')!r} (this build speaks {VERSION})"
        raise ProtocolError(msg)
    return header


def _int_field(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"field {key!r} must be a non-negative integer, got {value!r}"
        raise ProtocolError(msg)
    return value


def _shape(value: Any, ndims: tuple[int, ...]) -> tuple[int, ...]:
    ok = (
        isinstance(value, list)
        and len(value) in ndims
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
    )
    if not ok:
        msg = f"field 'shape' must be a list of {ndims} positive integers, got {value!r}"
        raise ProtocolError(msg)
    return tuple(value)


def _array(payload: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    buf = memoryview(payload)
    expected = math.prod(shape) * dtype.itemsize  # exact: np.prod would overflow
    if buf.nbytes != expected:
        msg = f"payload is {buf.nbytes} bytes, shape {list(shape)} of {dtype.name} needs {expected}"
        raise ProtocolError(msg)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def decode_input(parts: list[Any]) -> InputMessage:
    """Validate and decode [header, payload]; raises ProtocolError naming the fault."""
    if len(parts) != 2:
        msg = f"input message must have 2 parts [header, payload], got {len(parts)}"
        raise ProtocolError(msg)
    header = _header(parts[0])
    kind = header.get("kind")
    if kind not in INPUT_KINDS:
        msg = f"field 'kind' must be one of {INPUT_KINDS}, got {kind!r}"
        raise ProtocolError(msg)
    stream = check_name(header.get("stream"), "field 'stream'")
    session = header.get("session")
    if not isinstance(session, str) or not 0 < len(session) <= 128:
        msg = f"field 'session' must be a non-empty string of at most 128 chars, got {session!r}"
        raise ProtocolError(msg)
    seq = _int_field(header, "seq")
    t_ns = _int_field(header, "t_ns")
    if kind == "eos":
        return InputMessage("eos", stream, session, seq, t_ns)
    dtype_name = header.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in INPUT_DTYPES:
        msg = f"field 'dtype' must be one of {sorted(INPUT_DTYPES)}, got {dtype_name!r}"
        raise ProtocolError(msg)
    shape = _shape(header.get("shape"), (2, 3))
    fps = header.get("fps")
    bad_fps = isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < math.inf
    if fps is not None and bad_fps:
        msg = f"field 'fps' must be a positive number, got {fps!r}"
        raise ProtocolError(msg)
    frame = _array(parts[1], shape, INPUT_DTYPES[dtype_name])
    if dtype_name == "float32" and not np.isfinite(frame).all():
        msg = "float32 frame holds NaN or infinite values"
        raise ProtocolError(msg)
    return InputMessage("frame", stream, session, seq, t_ns, frame, fps)


def to_float(frame: np.ndarray) -> np.ndarray:
    """Input pixels as float32: uint8 / 255, uint16 / 65535, float32 as is."""
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / np.float32(255.0)
    if frame.dtype == np.uint16:
        return frame.astype(np.float32) / np.float32(65535.0)
    return frame.astype(np.float32, copy=False)


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
) -> list[Any]:
    """[topic, header, payload] for one output frame (C, H, W) of one layer.

    For dtype "uint8" a float frame is quantised here (value = byte * scale + offset); a
    uint8 frame with its `scale` and `offset` (quantised by the sender, e.g. on the GPU) is
    sent as is.
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
    if dtype == "uint8":
        if array.dtype != np.uint8 or scale is None or offset is None:
            array, scale, offset = quantize(array)
        header["scale"], header["offset"] = scale, offset
        payload = np.ascontiguousarray(array)
    elif dtype in OUTPUT_DTYPES:
        payload = np.ascontiguousarray(array, dtype=OUTPUT_DTYPES[dtype])
    else:
        msg = f"output dtype must be one of {sorted(OUTPUT_DTYPES)}, got {dtype!r}"
        raise ProtocolError(msg)
    return [topic(stream, layer), json.dumps(header).encode(), payload]


def quantize(array: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """uint8 bytes, scale and offset spanning the frame's range (value = byte*scale+offset);
    the bytes go into `out` when given."""
    lo, hi = float(array.min()), float(array.max())
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    # Values are >= 0 after subtracting the minimum, so +0.5 then truncation rounds.
    q = np.subtract(array, np.float32(lo), dtype=np.float32)
    q *= np.float32(1.0 / scale)
    q += np.float32(0.5)
    if out is None:
        return q.astype(np.uint8), scale, lo
    out[...] = q  # the float -> uint8 cast truncates, which rounds here
    return out, scale, lo


def encode_output_eos(stream: str, layer: str, session: str, seq: int) -> list[Any]:
    """[topic, header, b""]: no more output for this layer of this stream and session."""
    header = {
        "v": VERSION,
        "kind": "eos",
        "stream": stream,
        "layer": layer,
        "session": session,
        "seq": seq,
        "t_out_ns": now_ns(),
    }
    return [topic(stream, layer), json.dumps(header).encode(), b""]


def decode_output(parts: list[Any]) -> tuple[dict[str, Any], np.ndarray | None]:
    """(header, array) from [topic, header, payload]; uint8 payloads are scaled back to float32."""
    if len(parts) != 3:
        msg = f"output message must have 3 parts [topic, header, payload], got {len(parts)}"
        raise ProtocolError(msg)
    header = _header(parts[1])
    if header.get("kind") not in OUTPUT_KINDS:
        msg = f"field 'kind' must be one of {OUTPUT_KINDS}, got {header.get('kind')!r}"
        raise ProtocolError(msg)
    if header["kind"] == "eos":
        return header, None
    dtype_name = header.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in OUTPUT_DTYPES:
        msg = f"field 'dtype' must be one of {sorted(OUTPUT_DTYPES)}, got {dtype_name!r}"
        raise ProtocolError(msg)
    shape = _shape(header.get("shape"), (3,))
    array = _array(parts[2], shape, OUTPUT_DTYPES[dtype_name])
    if dtype_name == "uint8":
        scale, offset = header.get("scale"), header.get("offset")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (scale, offset)):
            msg = f"uint8 output needs finite 'scale' and 'offset', got {scale!r}, {offset!r}"
            raise ProtocolError(msg)
        array = np.multiply(array, np.float32(scale), dtype=np.float32)
        array += np.float32(offset)
    return header, array
