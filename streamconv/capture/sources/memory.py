"""An in-memory source: the test double for anything that consumes a Source."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from streamconv.capture.sources.base import BaseSource, Size


class ArraySource(BaseSource):
    """Yields the given frames (any shape and dtype the protocol takes), with the usual options."""

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        *,
        fps: float | None = None,
        live: bool = False,
        resize: Size | None = None,
        gray: bool = False,
        limit: int | None = None,
        loop: bool = False,
    ) -> None:
        self.live, self.frames = live, list(frames)
        super().__init__(resize=resize, gray=gray, limit=limit, loop=loop)
        self._fps = fps

    @property
    def fps(self) -> float | None:
        return self._fps

    def _pass_length(self) -> int | None:
        return None if self.live else len(self.frames)

    def _read_pass(self, first: bool) -> Iterator[np.ndarray]:
        yield from self.frames

    def __repr__(self) -> str:
        return f"ArraySource({len(self.frames)} frames)"
