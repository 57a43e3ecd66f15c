"""Continuity across restarts and moves: where each stream goes on, and from which state.

The engine's bookkeeping for checkpoints (snapshot, restore), for a restarted worker or a
restored stream waiting for its lossless sender to resend (its frames from the restored seq
on are dropped until the resend comes, up to RESEND_WAIT), for the resume probes that ask
where a stream goes on, and for a stream moved here from another shard (taken over from the
newest checkpoint of its session in a shared folder). `StreamState` is one stream as the
engine holds it.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamconv.layers import State
from streamconv.wire.protocol import SHM_PREFIX, InputMessage
from streamconv.worker.checkpoints import Snapshot, snapshot_state
from streamconv.worker.credits import Credits
from streamconv.worker.stats import Stats

log = logging.getLogger(__name__)

TOPICS = ("", SHM_PREFIX)  # where a subscriber of a stream's outputs may subscribe

RESEND_WAIT = 128  # frames ahead dropped, after a restore, while a lossless sender resends
ENDED_KEPT = 1024  # sessions remembered as ended by their eos (a sender asks to be sure)


@dataclass
class StreamState:
    name: str
    session: str
    next_seq: int = 0
    shape: tuple[int, ...] | None = None
    state: State | None = None
    discontinuity: bool = True
    buffer: np.ndarray | None = None  # (chunk, C, H, W), a fresh one for every chunk
    count: int = 0
    seqs: list[int] = field(default_factory=list)
    t_ns: list[int] = field(default_factory=list)
    replays: list[bool] = field(default_factory=list)
    since: float = 0.0
    last_seen: float = 0.0
    fps: float | None = None
    resets: int = 0
    recent_sessions: deque[str] = field(default_factory=lambda: deque(maxlen=4))
    owner: str | None = None  # the CURVE key that opened the stream
    restored: bool = False  # its state came from a checkpoint, and no frame followed yet
    awaited: int = 0  # frames dropped while waiting for the sender to resend (restored)
    resuming: bool = False  # restored here, and its sender has not resent a frame yet

    def restart(self, session: str) -> None:
        self.session, self.state, self.shape, self.discontinuity = session, None, None, True


class Continuity:
    """Resume, restore and take-over bookkeeping for the engine's `streams` (the engine holds
    one). It is the one owner of: the checkpoint last written per stream (`written`, told by
    the keeper), the sessions ended here by their eos, the window after a start in which
    lossless senders resend, where streams moved from another shard are taken over from, the
    checkpoint interval senders are told, and the lossless subscribers' credit."""

    def __init__(self, streams: dict[str, StreamState], stats: Stats, max_streams: int) -> None:
        self.streams, self.stats, self.max_streams = streams, stats, max_streams
        self.checkpointed: dict[str, tuple[str, int]] = {}  # stream -> (session, next seq)
        self.ended: OrderedDict[str, tuple[str, int]] = OrderedDict()  # by eos: (session, seq)
        self.credits = Credits()  # how far lossless senders may run ahead of their subscribers
        self.checkpoint_every = 0  # frames per stream between checkpoints; 0: none kept
        self.fresh_until = 0.0  # until then, a restarted worker awaits resends
        self.load: Callable[[str], Snapshot | None] | None = None  # shared-folder take-over
        self._awaiting: Counter[str] = Counter()

    def keep_checkpoints(
        self, every: int, resume_until: float,
        load: Callable[[str], Snapshot | None] | None = None,
    ) -> None:  # fmt: skip
        """Checkpoints are on: senders are told `every`; until `resume_until` lossless senders
        resend what a restart lost; `load` gives a moved stream's checkpoint (shards)."""
        self.checkpoint_every, self.fresh_until, self.load = every, resume_until, load

    def written(self, stream: str, session: str, next_seq: int) -> None:
        """The keeper wrote a checkpoint: frames before `next_seq` are never asked for again."""
        self.checkpointed[stream] = (session, next_seq)

    def forget(self, stream: str) -> None:
        """The stream ended and its checkpoint is removed."""
        self.checkpointed.pop(stream, None)

    def await_from_start(self, msg: InputMessage, now: float) -> bool:
        """Just restarted without this stream's state: a lossless sender resends from seq 0,
        so frames queued before the restart are dropped until it does (up to RESEND_WAIT)."""
        late = msg.lossless and msg.seq > 0 and not msg.replay and now < self.fresh_until
        if not late or self._awaiting[msg.stream] >= RESEND_WAIT:
            return False
        self._awaiting[msg.stream] += 1
        self.stats.count("awaiting_resend")
        return True

    def out_of_order(self, st: StreamState, msg: InputMessage) -> bool:
        """A frame of the stream's own session that is not the next, or that meets it restored
        (no frame since): True to drop it.

        A resend of a frame already taken is a duplicate. After a restore from a checkpoint,
        a lossless sender resends from the seq the worker asks for, so frames ahead of it that
        are not replays (queued before the restart) are dropped until it does, up to
        RESEND_WAIT frames; so is the one at it while no subscriber takes the stream's
        outputs: run at once, its outputs would go out before the subscriber the sender waits
        for is back (PUB/SUB drops what is published before a subscriber joins), and the
        sender then resends it. Any other sender goes on from the restored state, a gap
        counted. Otherwise (False) the frame runs, or its gap resets the state as usual."""
        if msg.seq < st.next_seq and msg.replay:
            self.stats.count("duplicates")
            return True
        if msg.live and msg.seq > st.next_seq:  # frames dropped on the way: the state goes on
            missing = msg.seq - st.next_seq
            self.stats.missing(st.name, missing)
            st.next_seq = msg.seq
            return False
        if not st.restored or msg.seq < st.next_seq:
            return False
        # At next_seq: the resend begins (a replay), or a subscriber is there to see it run.
        goes_on = msg.seq == st.next_seq and (msg.replay or self.stats.watched(st.name, TOPICS))
        if msg.lossless and not goes_on and st.awaited < RESEND_WAIT:
            st.awaited += 1
            self.stats.count("awaiting_resend")
            return True
        if msg.seq == st.next_seq:
            return False
        missing = msg.seq - st.next_seq
        self.stats.missing(st.name, missing)
        log.info("stream %s: %d frames missing after the restore; going on from the "
                 "checkpointed state", st.name, missing)  # fmt: skip
        st.next_seq = msg.seq
        return False

    def eos_early(self, st: StreamState | None, msg: InputMessage, now: float) -> bool:
        """A lossless sender's eos ahead of the frames this worker ran (they were lost with a
        worker that died, or wait in the sender's resend): True to drop it, as the frames
        ahead are, since the sender resends them and the eos again."""
        if not msg.lossless:
            return False
        if st is None:
            return self.await_from_start(msg, now)
        if not st.resuming or msg.seq <= st.next_seq or st.awaited >= RESEND_WAIT:
            return False
        st.awaited += 1
        self.stats.count("awaiting_resend")
        return True

    def remember_end(self, stream: str, session: str, ran: int) -> None:
        """The session ended here by its eos after `ran` frames in order: a sender asking
        where it goes on is told so (and is done only if it sent no more than that)."""
        self.ended[stream] = (session, ran)
        self.ended.move_to_end(stream)
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)

    # -- checkpoints ------------------------------------------------------------------------
    def resume_point(self, stream: str | None, session: str, now: float) -> dict[str, Any]:
        """The answer to a sender asking where `session` of `stream` goes on: next_seq (0 when
        this worker holds nothing of it: start over), checkpointed (its last checkpoint's next
        seq, or None), ended (it ended here by its eos), credit (Credits), dropped (frames of
        the session dropped here, by reason: the worker's verdict on it), checkpoint_every
        (frames between its checkpoints, 0: none: what the sender keeps to resend)."""
        name = stream or ""
        answer = self._answer(name, session, now)
        held = self.streams.get(name)
        at = held.next_seq if held is not None and held.session == session else 0
        return {**answer, "credit": self.credits.credit(name, session, now, at),
                "dropped": self.stats.verdict(name, session),
                "checkpoint_every": self.checkpoint_every}  # fmt: skip

    def _answer(self, name: str, session: str, now: float) -> dict[str, Any]:
        stream = name or None
        st = self.streams.get(name)
        if stream and (st is None or st.restored):
            st = self.take_over(stream, session, now)
        if st is None or st.session != session:
            ended = self.ended.get(name, ("", 0))
            if ended[0] == session:
                return {"next_seq": ended[1], "checkpointed": None, "ended": True}
            return {"next_seq": 0, "checkpointed": None, "ended": False}
        done = self.checkpointed.get(st.name)
        checkpointed = done[1] if done is not None and done[0] == session else None
        return {"next_seq": st.next_seq, "checkpointed": checkpointed, "ended": False}

    def take_over(self, name: str, session: str, now: float) -> StreamState | None:
        """The stream as this worker should continue it: a stream it does not hold, or holds
        only as restored (no frame since), goes on from the newest checkpoint of `session`
        in a shared folder, written by the shard that held it before (its capture moved it
        here). `load` returns only checkpoints new since it last looked (cheap to ask)."""
        st = self.streams.get(name)
        if self.load is None or (st is not None and not st.restored):
            return st
        snap = self.load(name)
        if snap is None or snap.session != session:
            return st
        if st is not None and snap.next_seq <= st.next_seq:
            return st
        if st is None and len(self.streams) >= self.max_streams:
            return None
        self.restore(snap, now)
        self.checkpointed[name] = (session, snap.next_seq)
        log.info("stream %s: taken over from another shard's checkpoint", name)
        return self.streams[name]

    def snapshot(self, name: str) -> Snapshot | None:
        """The stream's state after its last chunk run (frames waiting in a partial chunk
        are not in it: they are run again after a restore), or None if nothing ran yet."""
        st = self.streams.get(name)
        if st is None or st.state is None or st.shape is None:
            return None
        return Snapshot(name, st.session, st.next_seq - st.count, st.shape,
                        snapshot_state(st.state), st.owner)  # fmt: skip

    def restore(self, snap: Snapshot, now: float) -> None:
        """Hold a checkpointed stream: frames that go on from `snap.next_seq` in its session
        continue exactly, with no discontinuity."""
        st = StreamState(snap.stream, snap.session, next_seq=snap.next_seq, shape=snap.shape,
                     state=snap.state, discontinuity=False, last_seen=now, owner=snap.owner,
                     restored=True, resuming=True)  # fmt: skip
        self.streams[snap.stream] = st
        self.stats.open(snap.stream, snap.session)
        self.stats.count("restored")
        log.info("stream %s: restored from its checkpoint (session %s, next seq %d)",
                 snap.stream, snap.session[:8], snap.next_seq)  # fmt: skip
