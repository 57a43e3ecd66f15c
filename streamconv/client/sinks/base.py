"""The `Sink` interface every consumer of outputs speaks, `Sinks` to feed several as one, and
`safe_name` for the sinks that name files after header fields."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Sink(Protocol):
    """Takes each output frame a subscriber receives (eos markers never reach it)."""

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None: ...

    def close(self) -> list[Path]:
        """Finalise what was written (idempotent); the files worth naming in a summary."""
        ...


class Sinks:
    """Several named sinks fed as one, in order; the name labels their files in the summary."""

    def __init__(self, sinks: Mapping[str, Sink]) -> None:
        self.sinks = dict(sinks)

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None:
        for sink in self.sinks.values():
            sink.add(header, frame)

    def close(self) -> list[str]:
        """Close every sink, even after one failed (an unreleased mp4 does not play); one
        'name: path' line per file named."""
        lines: list[str] = []
        failed: BaseException | None = None
        for name, sink in self.sinks.items():
            try:
                lines += [f"{name}: {path}" for path in sink.close()]
            except Exception as e:  # the others are still closed; the first error is raised
                failed = failed or e
        if failed is not None:
            raise failed
        return lines


def safe_name(value: object, max_chars: int = 64) -> str:
    """`value` as one harmless file-name component: [A-Za-z0-9_.-] only, no '..', no leading
    dot, never empty. Header fields come from the network, so none reaches a path unchanged."""
    name = _UNSAFE.sub("_", str(value)[:max_chars])
    name = re.sub(r"\.\.+", lambda m: "_" * len(m.group()), name)
    if name.startswith("."):
        name = "_" + name[1:]
    return name or "_"
