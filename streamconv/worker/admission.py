"""Who may feed which stream, and how much memory the streams may hold.

Checked before a frame or an eos enters the engine. With CURVE, a stream belongs to the key
that opened it: frames and eos from another key are refused (the same key with a new session
takes over: a restarted capture), and one key holds at most `max_streams_per_key` streams.
Without CURVE every sender looks the same, so neither applies. Memory: a frame larger than
`max_frame_pixels` is refused, and so is a new stream, or a size change, that would take the
streams' state past the budget. A stream's state costs `bytes_per_pixel` x width x height,
measured on the model at startup (every layer's carried frames, plus the pending chunk).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from streamconv.errors import Drop
from streamconv.worker.results import Failed

Shape = tuple[int, ...]  # (C, H, W)


class Held(Protocol):
    """What admission needs to know of a stream the engine holds."""

    owner: str | None
    shape: Shape | None


@dataclass
class Admission:
    max_streams_per_key: int
    max_frame_pixels: int
    budget_bytes: int
    bytes_per_pixel: float

    def cost(self, shape: Shape | None) -> int:
        return 0 if shape is None else int(shape[-1] * shape[-2] * self.bytes_per_pixel)

    def used(self, held: Iterable[Held]) -> int:
        return sum(self.cost(h.shape) for h in held)

    def frame(
        self, stream: str, shape: Shape, sender: str | None, held: Mapping[str, Held]
    ) -> Failed | None:
        """Why this frame may not enter, as a Failed; None if it may."""
        pixels = shape[-1] * shape[-2]
        if pixels > self.max_frame_pixels:
            why = (f"stream {stream!r}: a {shape[-1]}x{shape[-2]} frame has more pixels than "
                   f"max_frame_pixels {self.max_frame_pixels}")  # fmt: skip
            return Failed(Drop.FRAME_TOO_LARGE, why, stream)
        mine = held.get(stream)
        if mine is not None and mine.owner != sender:
            return Failed(Drop.NOT_OWNER, f"stream {stream!r} belongs to another key", stream)
        if mine is None and sender is not None:
            count = sum(1 for h in held.values() if h.owner == sender)
            if count >= self.max_streams_per_key:
                why = (f"stream {stream!r}: this key already holds {count} streams "
                       f"(max_streams_per_key); end one with eos first")  # fmt: skip
                return Failed(Drop.QUOTA, why, stream)
        before = self.cost(mine.shape) if mine is not None else 0
        after = self.used(held.values()) - before + self.cost(shape)
        if after > self.budget_bytes and self.cost(shape) > before:
            why = (f"stream {stream!r}: {shape[-1]}x{shape[-2]} would take the streams' state "
                   f"to {after / 2**20:.0f} MiB, over state_budget_mb "
                   f"{self.budget_bytes / 2**20:.0f}")  # fmt: skip
            return Failed(Drop.OVER_BUDGET, why, stream)
        return None

    def end(self, stream: str, sender: str | None, held: Mapping[str, Held]) -> Failed | None:
        mine = held.get(stream)
        if mine is not None and mine.owner != sender:
            return Failed(Drop.NOT_OWNER, f"eos for stream {stream!r} from another key", stream)
        return None
