"""What waits on the worker's input socket, read and decoded: messages for the engine, and
Failed results for what could not be read (too large, malformed, a decoder bug)."""

from __future__ import annotations

import logging
import threading

from streamconv.config import WorkerSettings
from streamconv.errors import Drop, ProtocolError
from streamconv.wire import transport
from streamconv.wire.protocol import InputMessage, decode_input, peek_stream
from streamconv.worker.overload import thin_live
from streamconv.worker.results import Failed
from streamconv.worker.stats import Stats

log = logging.getLogger(__name__)

BATCH = 256  # messages drained per wake-up before partial chunks are checked

Taken = tuple[InputMessage, str | None]  # a message and its sender's CURVE key


class Intake:
    def __init__(self, pull: transport.Socket, settings: WorkerSettings, stats: Stats) -> None:
        self.pull, self.settings, self.stats = pull, settings, stats
        self.curve = settings.input.curve  # read each sender's key
        self.read = 0  # messages read from the input socket

    def take(self, stop: threading.Event) -> tuple[list[Taken], list[Failed]]:
        """Every message waiting (up to BATCH; `stop` is checked between messages), decoded.
        Runs on the input thread when the worker is pipelined (worker/stages.py)."""
        taken: list[Taken] = []
        failed: list[Failed] = []
        for _ in range(BATCH):
            if stop.is_set():
                break
            parts = transport.recv_nowait(self.pull)
            if parts is None:
                break
            self.read += 1
            got = self._decode(parts)
            if isinstance(got, Failed):
                failed.append(got)
            else:
                taken.append(got)
        return taken, failed

    def keep(
        self, batches: list[tuple[list[Taken], list[Failed]]]
    ) -> tuple[list[Taken], list[Failed]]:
        """Batches read, as one: live streams thinned to their newest chunk over all of them
        (worker/overload.py); the serve loop's thread."""
        taken = [t for b in batches for t in b[0]]
        failed = [f for b in batches for f in b[1]]
        if self.settings.live_drop_oldest and taken:
            kept, dropped = thin_live([m for m, _ in taken], self.settings.chunk)
            for n in dropped.values():  # the engine counts the gap as missing frames as well
                self.stats.count("live_dropped", n)
            keep = {id(m) for m in kept}
            taken = [t for t in taken if id(t[0]) in keep]
        return taken, failed

    def _decode(self, parts: list[transport.Frame]) -> Taken | Failed:
        size = sum(len(p) for p in parts)
        limit = self.settings.max_message_bytes
        if size > limit:
            why = f"message of {size} bytes exceeds max_message_bytes {limit}"
            stream, session = peek_stream(parts[0].buffer)  # its sender is told
            return Failed(Drop.OVERSIZE, why, stream, session=session)
        try:
            msg = decode_input([p.buffer for p in parts])
        except ProtocolError as e:
            return Failed(e.reason, str(e))
        except Exception as e:  # a decoder bug must not take the daemon down with it
            if not self.stats.drops[Drop.DECODER_BUG]:
                log.exception("decoder failed on a message")  # the traceback, once
            return Failed(Drop.DECODER_BUG, f"undecodable message: {type(e).__name__}")
        return msg, (transport.peer_key(parts[0]) if self.curve else None)
