"""Everything that consumes a subscriber's outputs, behind one interface (`Sink`).

Adding a sink is one file in this folder (a class with `add(header, frame)` and `close()`)
plus one line in FILE_SINKS below, under the name its files are listed by in a summary.
`subscribe` and `run` compose sinks with `Sinks`; the view's hub is no sink: it also takes
eos markers and the worker's input previews, and pages read it while it is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from streamconv.client.sinks.base import Sink, Sinks, safe_name
from streamconv.client.sinks.monitor import Monitor
from streamconv.client.sinks.npy import NpyWriter
from streamconv.client.sinks.preview import PreviewWriter
from streamconv.client.sinks.record import RecordWriter

# The sinks that write into a folder the user names, by name (subscribe: --save is preview).
FILE_SINKS: dict[str, Callable[[Path], Sink]] = {
    "preview": PreviewWriter,
    "npy": NpyWriter,
    "record": RecordWriter,
}


def open_sinks(folders: Mapping[str, Path | None]) -> dict[str, Sink]:
    """The file sinks named in `folders` that were given a folder, in FILE_SINKS order."""
    unknown = set(folders) - set(FILE_SINKS)
    if unknown:  # a caller's typo, not the user's: their flags map to these names
        msg = f"unknown sinks {sorted(unknown)}: known are {sorted(FILE_SINKS)}"
        raise ValueError(msg)
    opened: dict[str, Sink] = {}
    for name, make in FILE_SINKS.items():
        folder = folders.get(name)
        if folder:
            opened[name] = make(folder)
    return opened


__all__ = [
    "FILE_SINKS",
    "Monitor",
    "NpyWriter",
    "PreviewWriter",
    "RecordWriter",
    "Sink",
    "Sinks",
    "open_sinks",
    "safe_name",
]
