"""The input archive on disk: what a recording worker writes and a replay reads.

    DIR/<stream>/<session>/<first seq, 12 digits>.zarr    a closed segment: a Zarr v3 group
    (an id that is no harmless folder name, e.g. '..', is stored as '~' + its digest)
    DIR/<stream>/<session>/.open-<first seq>.zarr         one being written (or cut by a crash)

A segment holds consecutive frames of one session as they arrived, lossless: `frames`
(T, H, W) or (T, H, W, C) in the dtype they came in (uint8, uint16 or float32), zstd, eight
frames a chunk; `seq` and `t_ns` (T,) int64, the sender's seq and capture time; its
attributes: stream, session, first and last seq and t_ns, frames, fps (or None), the frame
shape, `codec` and `format`. With [record] lossy_quality (long retention), 8-bit frames are
kept as JPEG instead (codec "jpeg qN": `jpeg` bytes end to end, `offsets` (T + 1)): smaller,
and not exact. A
segment is written under its `.open-` name and renamed when complete, so a listed segment is
always whole; what a SIGKILL cuts is the open one, found and reported as partial. Readable
with zarr alone: `zarr.open_group(path)["frames"][:]`.
"""

from __future__ import annotations

import hashlib
import itertools
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
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


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
    codec: str = "zstd"  # "jpeg qN": lossy, decoded on read; a replay is then not exact

    @property
    def lossy(self) -> bool:
        return self.codec.startswith("jpeg")

    def seqs(self) -> np.ndarray:
        """The segment's seq array alone (small: no frame is read)."""
        import zarr

        return np.asarray(zarr.open_array(str(self.path / "seq"), mode="r")[...])

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames, seq, t_ns) of the whole segment (a lossy one decoded)."""
        import zarr

        group: Any = zarr.open_group(str(self.path), mode="r")
        seqs, t_ns = np.asarray(group["seq"][...]), np.asarray(group["t_ns"][...])
        if not self.lossy:
            return np.asarray(group["frames"][...]), seqs, t_ns
        import cv2

        data, offsets = np.asarray(group["jpeg"][...]), np.asarray(group["offsets"][...])
        shape = tuple(read_attrs(self.path)["shape"])
        frames = []
        for a, b in itertools.pairwise(offsets):
            frame = cv2.imdecode(data[a:b], cv2.IMREAD_UNCHANGED)
            if frame is None:
                raise ValueError(f"{self.path}: a JPEG frame does not decode")
            frames.append(frame.reshape(shape))
        return np.stack(frames), seqs, t_ns


def write_segment(
    folder: Path, stream: str, session: str, frames: np.ndarray, seqs: np.ndarray,
    t_ns: np.ndarray, fps: float | None, level: int, quality: int = 0,
) -> tuple[Path, int]:  # fmt: skip
    """Write a segment under its open name, then rename it: (its path, bytes on disk).
    `quality` 1-100: 8-bit frames as JPEG (lossy, for long retention; see `lossy`). Raises
    OSError (a full disk, say); the open folder is then removed."""
    import zarr
    from zarr.codecs import ZstdCodec

    first = int(seqs[0])
    final = folder / f"{first:012d}.zarr"
    tmp = folder / f"{OPEN_PREFIX}{first:012d}.zarr"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        group = zarr.open_group(str(tmp), mode="w")
        codec = "zstd"
        if quality and lossy_fits(frames):
            codec = _write_jpeg(group, frames, quality)
        else:
            chunks = (min(FRAMES_PER_CHUNK, len(frames)), *frames.shape[1:])
            codecs = [ZstdCodec(level=level)] if level else None  # 0: stored as they are
            # Every chunk is written: by default Zarr first scans each for the fill value,
            # to skip "empty" ones, which doubled the writer's CPU time (BENCHMARKS.md).
            group.create_array("frames", data=frames, chunks=chunks, compressors=codecs,
                               config={"write_empty_chunks": True})  # fmt: skip
        group.create_array("seq", data=seqs.astype(np.int64))
        group.create_array("t_ns", data=t_ns.astype(np.int64))
        group.attrs.update({"format": FORMAT, "stream": stream, "session": session,
                            "first_seq": first, "last_seq": int(seqs[-1]),
                            "first_t_ns": int(t_ns[0]), "last_t_ns": int(t_ns[-1]),
                            "frames": len(seqs), "fps": fps, "codec": codec,
                            "shape": list(frames.shape[1:])})  # fmt: skip
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, size_of(final)


def lossy_fits(frames: np.ndarray) -> bool:
    """JPEG takes 8-bit gray or BGR frames; others are kept lossless."""
    return frames.dtype == np.uint8 and (frames.ndim == 3 or frames.shape[-1] in (1, 3))


def _write_jpeg(group: Any, frames: np.ndarray, quality: int) -> str:
    """Every frame as JPEG bytes, end to end in `jpeg`, with their `offsets` (T + 1)."""
    import cv2

    encoded = []
    for frame in frames:
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - OpenCV encodes any 8-bit gray or BGR frame
            raise ValueError("JPEG encoding failed")
        encoded.append(buf.reshape(-1))
    offsets = np.cumsum([0, *(len(b) for b in encoded)]).astype(np.int64)
    group.create_array("jpeg", data=np.concatenate(encoded), chunks=(max(1, int(offsets[-1])),))
    group.create_array("offsets", data=offsets)
    return f"jpeg q{quality}"


def folder_name(value: str) -> str:
    """A stream or session id as one directory name: the id itself when it is harmless, else
    '~' and its digest. Both come from the network (a session may be any 128 characters, a
    stream '..'), so neither reaches a path unchanged; the ids are in each segment's
    attributes, which is where listing and replay read them."""
    if _SAFE.fullmatch(value) and ".." not in value:
        return value
    return "~" + hashlib.sha256(value.encode()).hexdigest()[:32]


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
    streams = (
        [root / folder_name(stream)]
        if stream is not None
        else sorted(p for p in root.iterdir() if p.is_dir())
    )
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
                                         a["frames"], size_of(path), a.get("fps"),
                                         a.get("codec", "zstd")))  # fmt: skip
                except (OSError, ValueError, KeyError):
                    continue  # not ours, or damaged: `partial` reports the open ones
    return sorted(found, key=lambda s: (s.stream, s.first_t_ns, s.first_seq))


def partial(root: Path) -> list[Path]:
    """Segments cut while open (a crash): never listed as recorded, reported as such."""
    return sorted(root.glob(f"*/*/{OPEN_PREFIX}*.zarr"))
