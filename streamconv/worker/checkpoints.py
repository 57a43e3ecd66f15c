"""Checkpoint files: each stream's temporal state on disk, so a restarted worker goes on exactly.

One file per stream, `{stream}.ckpt` in the checkpoint folder, replaced atomically (written
to a temporary file, fsync'd, renamed, the folder fsync'd). The file is a magic line, the
SHA-256 of the payload, then the payload: `torch.save` of plain tensors, numbers and strings,
read back with `weights_only=True` (no pickled objects are ever loaded). Each checkpoint holds
the stream's session, the seq of the next frame to run, the frame shape, every layer's state,
and the fingerprint of the model it came from (layer specs, weights, dtype, colour handling):
a checkpoint of another model or config is refused, as is a corrupt or truncated one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from streamconv.config import Settings
from streamconv.layers import Layer, State
from streamconv.layers.base import map_state

log = logging.getLogger(__name__)

MAGIC = b"streamconv-checkpoint 1\n"
SUFFIX = ".ckpt"


@dataclass
class Snapshot:
    """A stream's state between chunks: what a restarted worker needs to go on exactly."""

    stream: str
    session: str
    next_seq: int  # the seq of the next frame to run
    shape: tuple[int, ...]  # (C, H, W) of its frames
    state: State
    owner: str | None = None


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message says why."""


def fingerprint(model: Layer, settings: Settings) -> str:
    """What a checkpoint must match: the layers, their weights, dtype and colour handling."""
    h = hashlib.sha256()
    # Where the code and weights were found is no part of the model: a moved folder restores.
    layers = [spec.model_dump(mode="json", exclude={"root"}) for spec in settings.layers]
    code = settings.model.model_dump(mode="json", exclude={"root", "weights"})
    w = settings.worker
    h.update(json.dumps([layers, w.dtype, w.color, w.in_channels], sort_keys=True).encode())
    if settings.model.factory is not None:  # older checkpoints of [[layers]] still match
        h.update(json.dumps(code, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


class Checkpoints:
    """The checkpoint folder of one worker, or its share of a folder several workers use:
    `mine(stream)` says which streams' files this worker may read, prune and remove (the
    streams it owns among the shards; by default all)."""

    def __init__(
        self, folder: Path, model_fingerprint: str, mine: Callable[[str], bool] | None = None,
        version: str | None = None,
    ) -> None:  # fmt: skip
        self.folder = folder
        self.fingerprint = model_fingerprint
        self.version = version  # the weights' model_version, recorded in every file
        self.mine = mine or (lambda stream: True)
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, stream: str) -> Path:
        return self.folder / f"{stream}{SUFFIX}"

    def write(self, snap: Snapshot) -> int:
        """Write `snap` atomically; the bytes written (0: another shard's stream, whose file
        is its owner's to write). Raises OSError (e.g. a full disk)."""
        if not self.mine(snap.stream):
            return 0
        data = pack(snap, self.fingerprint, self.version)
        final = self.path(snap.stream)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        return len(data)

    def read(self, path: Path, device: torch.device) -> Snapshot:
        """One checkpoint file; CheckpointError saying why it cannot be used."""
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"unreadable: {e}") from e
        snap = unpack(data, self.fingerprint, device, self.version)
        if path.name != f"{snap.stream}{SUFFIX}":
            raise CheckpointError(f"names stream {snap.stream!r}, not {path.stem!r}")
        return snap

    def load_all(self, device: torch.device, max_age_s: float, keep: int) -> list[Snapshot]:
        """Every usable checkpoint, newest first, at most `keep`; the rest are removed."""
        files = sorted((p for p in self.folder.glob(f"*{SUFFIX}") if self.mine(p.stem)),
                       key=lambda p: p.stat().st_mtime, reverse=True)  # fmt: skip
        for stale in self.folder.glob(f".*{SUFFIX}.*.tmp"):  # a write cut short by a crash
            if self.mine(stale.name[1:].rsplit(f"{SUFFIX}.", 1)[0]):
                stale.unlink(missing_ok=True)
        snaps: list[Snapshot] = []
        now = time.time()
        for path in files:
            if len(snaps) >= keep or now - path.stat().st_mtime > max_age_s:
                log.info("checkpoint %s: past the retention limit, removed", path.name)
                path.unlink(missing_ok=True)
                continue
            try:
                snaps.append(self.read(path, device))
            except CheckpointError as e:
                log.warning("checkpoint %s refused: %s; that stream starts fresh", path.name, e)
                path.unlink(missing_ok=True)
        return snaps

    def remove(self, stream: str) -> None:
        if self.mine(stream):  # another shard's stream: its owner's file to keep
            self.path(stream).unlink(missing_ok=True)


class TakeOver:
    """A moved stream's newest checkpoint in the shared folder (written by its previous
    owner), or None: no file, not this shard's stream, or no change since the last look."""

    def __init__(self, folder: Checkpoints, device: torch.device, mine: Callable[[str], bool]):
        self.folder, self.device, self.mine = folder, device, mine
        self.seen: dict[str, float] = {}  # stream -> mtime of the file last looked at

    def __call__(self, stream: str) -> Snapshot | None:
        path = self.folder.path(stream)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        if not self.mine(stream) or self.seen.get(stream) == mtime:
            return None
        self.seen[stream] = mtime
        if len(self.seen) > 4096:
            self.seen.pop(next(iter(self.seen)))
        try:
            snap = self.folder.read(path, self.device)
        except CheckpointError as e:
            log.warning("checkpoint %s refused: %s; that stream starts fresh", path.name, e)
            return None
        return snap


def pack(snap: Snapshot, model_fingerprint: str, version: str | None = None) -> bytes:
    """The checkpoint file's bytes: magic line, SHA-256 of the payload, payload."""
    payload = io.BytesIO()
    torch.save({"fingerprint": model_fingerprint, "model_version": version, "stream": snap.stream,
                "session": snap.session, "next_seq": snap.next_seq,
                "shape": list(snap.shape), "owner": snap.owner,
                "state": snap.state}, payload)  # fmt: skip
    body = payload.getvalue()
    return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def unpack(
    data: bytes, model_fingerprint: str, device: torch.device, version: str | None = None
) -> Snapshot:
    """`pack` undone, the state on `device`; CheckpointError saying why it cannot be used."""
    if not data.startswith(MAGIC):
        raise CheckpointError("not a streamconv checkpoint")
    digest, _, body = data[len(MAGIC) :].partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise CheckpointError("corrupt or truncated (checksum mismatch)")
    try:
        raw = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except Exception as e:  # any unpickling failure: the file is not ours
        raise CheckpointError(f"unreadable payload: {type(e).__name__}") from e
    if not isinstance(raw, dict) or raw.get("fingerprint") != model_fingerprint:
        theirs = raw.get("model_version") if isinstance(raw, dict) else None
        versions = f" (weights version {theirs}; this worker serves {version})" if theirs else ""
        raise CheckpointError(f"from a different model or config{versions}")
    return Snapshot(raw["stream"], raw["session"], int(raw["next_seq"]), tuple(raw["shape"]),
                    map_state(raw["state"], lambda t: t.to(device)), raw.get("owner"))  # fmt: skip


def snapshot_state(state: State | None) -> State:
    """A copy of a stream's state on the CPU, safe to write from another thread."""
    return map_state(state, lambda t: t.detach().to("cpu").clone()) if state is not None else {}


@dataclass
class Written:
    """What the writer thread did with one stream: a checkpoint (bytes, ms) or an error."""

    stream: str
    session: str
    next_seq: int
    nbytes: int = 0
    ms: float = 0.0
    error: str | None = None


class Writer:
    """Writes checkpoints on a thread of its own, so the serve loop never waits for a disk.

    At most one pending snapshot per stream (a newer one replaces it); removals are queued in
    order with writes, so an ended stream's file never comes back.
    """

    def __init__(self, checkpoints: Checkpoints) -> None:
        self.checkpoints = checkpoints
        self._pending: dict[str, Snapshot | None] = {}  # None: remove the file
        self._done: list[Written] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
        self._thread.start()

    def put(self, snap: Snapshot) -> None:
        with self._cond:
            self._pending[snap.stream] = snap
            self._cond.notify()

    def remove(self, stream: str) -> None:
        with self._cond:
            self._pending[stream] = None
            self._cond.notify()

    def done(self) -> list[Written]:
        """What was written (or failed) since the last call."""
        with self._cond:
            out, self._done = self._done, []
        return out

    def close(self, timeout_s: float) -> bool:
        """Write what is pending, then stop; False if that took longer than `timeout_s`."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                stream = next(iter(self._pending))
                snap = self._pending.pop(stream)
            if snap is None:
                self.checkpoints.remove(stream)
                continue
            start = time.perf_counter()
            try:
                nbytes = self.checkpoints.write(snap)
                written = Written(stream, snap.session, snap.next_seq, nbytes,
                                  (time.perf_counter() - start) * 1000)  # fmt: skip
            except (OSError, RuntimeError) as e:
                written = Written(stream, snap.session, snap.next_seq, error=str(e))
            with self._cond:
                self._done.append(written)
