"""What the engine hands the publisher: outputs, ends of streams and failures, as values.

Torch-free: the publisher and the stats read these without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamconv.errors import Drop


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """Outputs for consecutive frames of one stream: layers[name] is (T, C, H, W)."""

    stream: str
    session: str
    seqs: list[int]
    t_ns: list[int]
    discontinuity: bool
    layers: dict[str, np.ndarray]
    # For uint8 output: per layer, each frame's (scales, offsets): value = byte*scale+offset.
    quant: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    fps: float | None = None  # the source's nominal rate, forwarded to subscribers
    compute_s: float = 0.0  # time in the model, copies in and out included
    replays: list[bool] = field(default_factory=list)  # per frame: resent after a resume
    # The chunk's newest input frame (C, H, W) after the colour step, in the chunk buffer's
    # dtype: a view into that buffer (reused only once nothing refers to it), so it costs no copy.
    input_frame: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class EndResult:
    """The stream's session ended; `seq` is the frame count the sender reported.

    `watch` is set for an answer to a readiness probe that asked about a stream; `resume`,
    for one that asked where that stream goes on, the answer's fields: next_seq (needed next),
    checkpointed (the last checkpoint's next seq), ended (that session ended here by its eos),
    credit (the first seq a lossless sender may not send yet, or None)."""

    stream: str
    session: str
    seq: int
    watch: str | None = None
    resume: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """Input that was dropped: `frames` frames (0 for a message that never became one) of
    `stream` and `session` (None when the message could not be read), for `reason`, explained
    by `detail`. The session's sender is told (docs/PROTOCOL.md, the resume answer's
    `dropped`)."""

    reason: Drop
    detail: str
    stream: str | None = None
    frames: int = 1
    session: str | None = None


Result = ChunkResult | EndResult | Failed
