"""The input archive on disk: what a recording worker writes and a replay reads.

    DIR/<stream>/<session>/<first seq, 12 digits>.zarr    a closed segment: a Zarr v3 group
    DIR/<stream>/<session>/.open-<first seq>.zarr         one being written (or cut by a crash)

A segment holds consecutive frames of one session as they arrived, lossless: `frames`
(T, H, W) or (T, H, W, C) in the dtype they came in (uint8, uint16 or float32), zstd, eight
frames a chunk; `seq` and `t_ns` (T,) int64, the sender's seq and capture time; its
attributes: stream, session, first and last seq and t_ns, fps (or None), and `format`. A
segment is written under its `.open-` name and renamed when complete, so a listed segment is
always whole; what a SIGKILL cuts is the open one, found and reported as partial. Readable
with zarr alone: `zarr.open_group(path)["frames"][:]`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
SEGMENT = re.compile(r"^(?P<first>\d{12})\.zarr$")
OPEN_PREFIX = ".open-"
FRAMES_PER_CHUNK = 8


@dataclass(frozen=True)
class Segment:
    """One closed segment, as listed (its arrays are read only when asked for)."""

    path: Path
    stream: str
    session: str
    first_seq: int
    last_seq: int
    first_t_ns: int
    last_t_ns: int
    frames: int
    nbytes: int
    fps: float | None

    def seqs(self) -> np.ndarray:
        """The segment's seq array alone (small: no frame is read)."""
        import zarr

        return np.asarray(zarr.open_array(str(self.path / "seq"), mode="r")[...])

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames, seq, t_ns) of the whole segment."""
        import zarr

        group = zarr.open_group(str(self.path), mode="r")
        arrays = [group[name] for name in ("frames", "seq", "t_ns")]
        frames, seqs, t_ns = (np.asarray(a[...]) for a in arrays)  # type: ignore[index]
        return frames, seqs, t_ns


def write_segment(
    folder: Path, stream: str, session: str, frames: np.ndarray, seqs: np.ndarray,
    t_ns: np.ndarray, fps: float | None, level: int,
) -> tuple[Path, int]:  # fmt: skip
    """Write a segment under its open name, then rename it: (its path, bytes on disk).
    Raises OSError (a full disk, say); the open folder is then removed."""
    import zarr
    from zarr.codecs import ZstdCodec

    first = int(seqs[0])
    final = folder / f"{first:012d}.zarr"
    tmp = folder / f"{OPEN_PREFIX}{first:012d}.zarr"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        group = zarr.open_group(str(tmp), mode="w")
        chunks = (min(FRAMES_PER_CHUNK, len(frames)), *frames.shape[1:])
        codecs = [ZstdCodec(level=level)] if level else None  # 0: stored as they are
        # Every chunk is written: by default Zarr first scans each for the fill value, to
        # skip "empty" ones, which doubled the writer's CPU time (BENCHMARKS.md).
        group.create_array("frames", data=frames, chunks=chunks, compressors=codecs,
                           config={"write_empty_chunks": True})  # fmt: skip
        group.create_array("seq", data=seqs.astype(np.int64))
        group.create_array("t_ns", data=t_ns.astype(np.int64))
        group.attrs.update({"format": FORMAT, "stream": stream, "session": session,
                            "first_seq": first, "last_seq": int(seqs[-1]),
                            "first_t_ns": int(t_ns[0]), "last_t_ns": int(t_ns[-1]),
                            "frames": len(seqs), "fps": fps})  # fmt: skip
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, size_of(final)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_attrs(path: Path) -> dict[str, Any]:
    import json

    meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    attrs: dict[str, Any] = meta.get("attributes", {})
    return attrs


def segments(root: Path, stream: str | None = None) -> list[Segment]:
    """Every closed segment under `root` (of `stream`), by stream, then time."""
    found: list[Segment] = []
    streams = [root / stream] if stream is not None else sorted(p for p in root.iterdir()
                                                                if p.is_dir())  # fmt: skip
    for folder in streams:
        if not folder.is_dir():
            continue
        for session in folder.iterdir():
            for path in session.iterdir() if session.is_dir() else []:
                if not SEGMENT.match(path.name):
                    continue
                try:
                    a = read_attrs(path)
                    found.append(Segment(path, a["stream"], a["session"], a["first_seq"],
                                         a["last_seq"], a["first_t_ns"], a["last_t_ns"],
                                         a["frames"], size_of(path), a.get("fps")))  # fmt: skip
                except (OSError, ValueError, KeyError):
                    continue  # not ours, or damaged: `partial` reports the open ones
    return sorted(found, key=lambda s: (s.stream, s.first_t_ns, s.first_seq))


def partial(root: Path) -> list[Path]:
    """Segments cut while open (a crash): never listed as recorded, reported as such."""
    return sorted(root.glob(f"*/*/{OPEN_PREFIX}*.zarr"))
