"""The record sink: every output in a Zarr v3 store where numpy users read it.

    zarr.open_group("out.zarr")["cam0/<session>/motion/frames"][:]   # (T, C, H, W)

One group per stream, session and layer (`stream/session/layer`, each part through
safe_name), holding `frames` (time first), `seq` and `t_ns`, with xarray's dimension names
(time, channel, y, x). Frames are gathered and appended FLUSH at a time. seq is the key:
a subscriber restarted on the same store adds no output twice within a session, and a new
session of a stream is kept beside the earlier ones. close() writes what is gathered (a
SIGTERM to `subscribe` ends through it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamconv.client.sinks.base import safe_name

FLUSH = 32  # frames gathered per layer before they are appended


class RecordWriter:
    def __init__(self, path: Path) -> None:
        import zarr

        self.path = path
        self.root = zarr.open_group(str(path), mode="a")
        self._seen: dict[str, set[int]] = {}  # group -> the seqs it holds
        self._pending: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        self.duplicates = 0  # outputs the store already held (a restarted subscriber)

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None:
        key = "/".join(safe_name(header[k]) for k in ("stream", "session", "layer"))
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = self._stored_seqs(key)
        seq = int(header["seq"])
        if seq in seen:
            self.duplicates += 1
            return
        seen.add(seq)
        pending = self._pending.setdefault(key, [])
        pending.append((seq, int(header["t_ns"]), np.asarray(frame)))
        if len(pending) >= FLUSH:
            self._flush(key)

    def close(self) -> list[Path]:
        for key in list(self._pending):
            self._flush(key)
        return [self.path]

    def _stored_seqs(self, key: str) -> set[int]:
        if key not in self.root:
            return set()
        return {int(s) for s in np.asarray(self.root[f"{key}/seq"][...])}  # type: ignore[index]

    def _flush(self, key: str) -> None:
        pending = self._pending.pop(key, [])
        if not pending:
            return
        frames = np.stack([f for _, _, f in pending])
        seqs = np.asarray([s for s, _, _ in pending], np.int64)
        t_ns = np.asarray([t for _, t, _ in pending], np.int64)
        if key not in self.root:
            group = self.root.require_group(key)
            dims = ("time", "channel", "y", "x")
            group.create_array(
                "frames",
                shape=(0, *frames.shape[1:]),
                dtype=frames.dtype,
                chunks=(FLUSH, *frames.shape[1:]),
                dimension_names=dims,
                config={"write_empty_chunks": True},
            )  # no scan for "empty"
            for name in ("seq", "t_ns"):
                group.create_array(name, shape=(0,), dtype=np.int64, chunks=(1024,),
                                   dimension_names=("time",))  # fmt: skip
        for name, values in (("frames", frames), ("seq", seqs), ("t_ns", t_ns)):
            array: Any = self.root[f"{key}/{name}"]
            start = array.shape[0]
            array.resize((start + len(values), *array.shape[1:]))
            array[start:] = values
