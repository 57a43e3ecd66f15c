"""The source interface, the options every source shares (resize, gray, limit, loop), and
`SourceKind`: one way of naming a source in a spec, as `open_source` tries them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from streamconv.errors import SourceError

Size = tuple[int, int]
Options = dict[str, Any]  # resize, gray, limit and loop, as BaseSource takes them


@runtime_checkable
class Source(Protocol):
    """Frames in, nothing else: what capture needs from a producer.

    Iterating yields C-order numpy frames, (H, W) or (H, W, C), uint8 (uint16 or float32 for
    some image files). `fps` is the nominal rate if known, `live` is True for cameras and URLs
    (frames arrive in real time and cannot be replayed), `length` is the number of frames the
    iteration will yield if known (None for live or endless sources).
    """

    @property
    def fps(self) -> float | None: ...

    @property
    def live(self) -> bool: ...

    @property
    def length(self) -> int | None: ...

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


def transform(frame: np.ndarray, resize: Size | None, gray: bool) -> np.ndarray:
    """Gray first (a third of the pixels to resize), then resize to (W, H)."""
    if gray and frame.ndim == 3:
        channels = frame.shape[2]
        if channels == 1:
            frame = frame[:, :, 0]
        elif channels in (3, 4):
            code = cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY
            frame = cv2.cvtColor(frame, code)
        else:
            msg = f"cannot convert a {channels}-channel frame to gray (expects 1, 3 or 4)"
            raise SourceError(msg)
    if resize is not None and (frame.shape[1], frame.shape[0]) != resize:
        shrink = resize[0] * resize[1] < frame.shape[0] * frame.shape[1]
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        frame = cv2.resize(frame, resize, interpolation=interp)
    return np.ascontiguousarray(frame)


class BaseSource(ABC):
    """Applies the shared options to the frames of one pass that a subclass yields."""

    live: bool = False

    def __init__(
        self,
        *,
        resize: Size | None = None,
        gray: bool = False,
        limit: int | None = None,
        loop: bool = False,
    ) -> None:
        if resize is not None and (len(resize) != 2 or min(resize) <= 0):
            msg = f"resize must be (width, height) with positive sizes, got {resize!r}"
            raise SourceError(msg)
        if limit is not None and limit < 0:
            msg = f"limit must be >= 0 frames (or None for all), got {limit}"
            raise SourceError(msg)
        if loop and self.live:
            msg = f"loop applies to files, images and synthetic sources, not live {self}"
            raise SourceError(msg)
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.gray = gray
        self.limit = limit
        self.loop = loop

    @property
    @abstractmethod
    def fps(self) -> float | None: ...

    @abstractmethod
    def _pass_length(self) -> int | None:
        """Frames in one pass, if known."""

    @abstractmethod
    def _read_pass(self, first: bool) -> Iterator[np.ndarray]:
        """Yield the raw frames of one pass; `first` is False when looping back to the start."""

    @property
    def length(self) -> int | None:
        n = None if self.loop else self._pass_length()
        if self.limit is None:
            return n
        return self.limit if n is None else min(n, self.limit)

    def __iter__(self) -> Iterator[np.ndarray]:
        count, first = 0, True
        while self.limit is None or count < self.limit:
            got = 0
            for raw in self._read_pass(first):
                yield transform(raw, self.resize, self.gray)
                count += 1
                got += 1
                if self.limit is not None and count >= self.limit:
                    return
            first = False
            if not self.loop or got == 0:  # got == 0: an empty pass would loop forever
                return

    def close(self) -> None:  # noqa: B027  (most sources hold nothing to release)
        """Release what the source holds; idempotent."""

    def capture_time(self) -> int | None:
        """When the frame yielded last was captured (ns since the epoch), where the source
        knows (a recording); None: it is captured now."""
        return None

    def __enter__(self) -> BaseSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class SourceKind:
    """One way of naming a source: `recognises(spec)` claims a (stripped, non-empty) spec,
    `open(spec, options)` opens it or raises SourceError saying what is wrong and the fix
    (a spec a kind claims is never passed on to the next kind)."""

    name: str
    recognises: Callable[[str], bool]
    open: Callable[[str, Options], BaseSource]
