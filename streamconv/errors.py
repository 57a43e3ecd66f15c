"""The exception tree (one base class, a few subclasses callers can tell apart) and the typed
reasons a message or frame is dropped."""

from __future__ import annotations

from enum import StrEnum


class Drop(StrEnum):
    """Why input was dropped: the label of streamconv_dropped_total{reason=...}."""

    MALFORMED = "malformed"  # wrong part count, header not a UTF-8 JSON object
    VERSION = "version"  # "v" missing or not this build's version
    BAD_FIELD = "bad_field"  # a header field of the wrong type or out of range
    BAD_PAYLOAD = "bad_payload"  # payload size does not match shape and dtype
    NON_FINITE = "non_finite"  # float32 frame with NaN or infinity
    OVERSIZE = "oversize"  # larger than max_message_bytes
    BAD_SHAPE = "bad_shape"  # channels the model cannot take
    TOO_MANY_STREAMS = "too_many_streams"  # max_streams states already held
    NOT_OWNER = "not_owner"  # a frame or eos for a stream another CURVE key opened
    QUOTA = "quota"  # the sender's key already holds max_streams_per_key streams
    FRAME_TOO_LARGE = "frame_too_large"  # more pixels than max_frame_pixels
    OVER_BUDGET = "over_budget"  # the stream's state would exceed state_budget_mb
    MODEL_FAILED = "model_failed"  # the layers raised on a chunk (its frames are lost)
    DECODER_BUG = "decoder_bug"  # an unexpected exception while decoding
    NOT_FLUSHED = "not_flushed"  # frames still buffered when the shutdown time ran out


class StreamconvError(Exception):
    """Base of every error streamconv raises on purpose."""


class ConfigError(StreamconvError):
    """A setting, config file or environment variable is invalid."""


class ProtocolError(StreamconvError):
    """A message on the wire does not follow docs/PROTOCOL.md; `reason` says how."""

    def __init__(self, message: str, reason: Drop = Drop.BAD_FIELD) -> None:
        super().__init__(message)
        self.reason = reason


class SourceError(StreamconvError):
    """A frame source cannot be opened or read."""


class ShapeError(StreamconvError, ValueError):
    """An input's shape does not fit a layer or its carried temporal state."""


class StartupError(StreamconvError):
    """A role could not start, e.g. its endpoint is already in use or no worker answers."""


class ShutdownCutError(StreamconvError):
    """A second stop signal cut a shutdown short (exit code 130)."""


class AuthError(StartupError):
    """The worker refused this end's CURVE keys, or this end's keys do not fit the worker."""


class RefusedError(StreamconvError):
    """The worker drops this sender's lossless stream: another CURVE key's stream id, a quota,
    frames too large or of the wrong shape (exit code 5). `dropped`: frames by reason."""

    def __init__(self, endpoint: str, stream: str, dropped: dict[str, int]) -> None:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        super().__init__(
            f"the worker at {endpoint} dropped frames of stream {stream} ({why}); its log says "
            "why (another sender's stream id? a quota? frames too large?)"
        )
        self.dropped = dropped
