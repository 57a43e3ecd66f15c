"""Engine results -> protocol messages -> the XPUB socket. One message per frame per layer.

The socket is an XPUB so the worker knows its subscriptions (for /status, /metrics and a
capture's `watch` probe); subscribers see an ordinary PUB.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from streamconv.wire import protocol, transport
from streamconv.wire.protocol import INPUT, SHM_PREFIX
from streamconv.wire.shm import Ring
from streamconv.worker.previews import Previews
from streamconv.worker.results import ChunkResult, EndResult, Result
from streamconv.worker.stats import Stats

SHM = SHM_PREFIX.encode()


class Publisher:
    """Publishes every published layer's output frames, then eos on every layer."""

    def __init__(
        self,
        sock: transport.Socket,
        layers: list[str],
        output_dtype: str,
        stats: Stats,
        previews: Previews | None = None,
        shm_bytes: int = 0,
    ) -> None:
        self.sock, self.layers, self.output_dtype = sock, layers, output_dtype
        self.stats, self.previews = stats, previews
        # Shared memory for same-host subscribers ([worker] shm): a ring made at the first
        # output a `_shm/` subscription asks for, sized to hold `shm_bytes` of outputs.
        self.shm_bytes, self.ring = shm_bytes, None  # type: int, Ring | None
        # The weights' fingerprint, in every output header. A reload changes it between two
        # turns of the serve loop, after the results of every pass before it went out, so
        # each output names the weights that computed it.
        self.model_version: str | None = None

    def _previewing(self) -> Previews | None:
        if self.previews is None or not Previews.wanted(self.stats.subscriptions):
            return None
        return self.previews

    def publish(self, results: list[Result]) -> None:
        """Send outputs and ends; Failed results are the caller's to count and log."""
        for result in results:
            if isinstance(result, ChunkResult):
                self._chunk(result)
            elif isinstance(result, EndResult):
                self._end(result)

    def take_subscriptions(self) -> int:
        """Read the subscribe/unsubscribe messages waiting on the XPUB into the stats."""
        n = 0
        while (parts := transport.recv_nowait(self.sock)) is not None:
            event = transport.subscription_event(parts)
            if event is not None:
                self.stats.subscription(*event)
                n += 1
        return n

    def _chunk(self, r: ChunkResult) -> None:
        # Frame-major: every layer of frame i goes out before frame i+1 (a viewer shows them
        # together).
        latencies: list[float] = []
        shm = self.shm_bytes > 0 and any(t.startswith(SHM) for t in self.stats.subscriptions)
        for i, (seq, t_ns) in enumerate(zip(r.seqs, r.t_ns, strict=True)):
            for name, frames in r.layers.items():
                scales, offsets = r.quant.get(name, (None, None))
                parts = protocol.encode_output(
                    r.stream,
                    name,
                    r.session,
                    seq,
                    t_ns,
                    frames[i],
                    dtype=self.output_dtype,
                    discontinuity=r.discontinuity and i == 0,
                    scale=scales[i] if scales else None,
                    offset=offsets[i] if offsets else None,
                    fps=r.fps,
                    replay=bool(r.replays) and r.replays[i],
                    model_version=self.model_version,
                )
                transport.send(self.sock, parts)
                if shm:
                    self._send_shm(parts)
            latencies.append((time.time_ns() - t_ns) / 1e9)
        for j, name in enumerate(r.layers):
            self.stats.published(r.stream, name, len(r.seqs), latencies if j == 0 else [])
        self.stats.count("published", len(r.seqs) * len(r.layers))
        previews = self._previewing()
        if previews is not None:
            self._preview(r, previews)
            self._preview_input(r, previews)

    def _send_shm(self, parts: list[Any]) -> None:
        """The same output for same-host subscribers: its payload into the ring, a header
        naming the slot on the `_shm/` topic. A payload larger than the ring's slots makes a
        new ring (the old one's name goes; mapped copies stay valid)."""
        payload = parts[2]
        if self.ring is None or payload.nbytes > self.ring.slot_bytes:
            self.close_shm()
            slot_bytes = -(-payload.nbytes // 65536) * 65536
            self.ring = Ring(max(2, self.shm_bytes // slot_bytes), slot_bytes)
        put = self.ring.put(payload)
        if put is None:  # pragma: no cover - the ring was just sized for it
            return
        slot, gen = put
        ref = {"name": self.ring.name, "slot": slot, "gen": gen, "slot_bytes": self.ring.slot_bytes}
        transport.send(self.sock, protocol.as_shm(parts, ref))
        self.stats.count("shm_published")

    def close_shm(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def _preview(self, r: ChunkResult, previews: Previews) -> None:
        """Offer the chunk's newest frame of each layer as its preview."""
        for name in r.layers:
            make = functools.partial(self._preview_message, r, name, previews)
            parts = previews.offer(r.stream, name, make, r.discontinuity)
            if parts is not None:
                self._send_preview(parts)

    def _preview_message(self, r: ChunkResult, name: str, previews: Previews) -> list[Any]:
        last = len(r.seqs) - 1
        frames = r.layers[name]
        scales, offsets = r.quant.get(name, (None, None))
        small = previews.shrink(frames[last], scales[last] if scales else None,
                                offsets[last] if offsets else None)  # fmt: skip
        return protocol.encode_preview(
            r.stream, name, r.session, r.seqs[last], r.t_ns[last], small,
            full_shape=frames[last].shape, lost=self.stats.lost(r.stream),
            fps=r.fps, discontinuity=previews.take_reset(r.stream, name),
            model_version=self.model_version,
        )  # fmt: skip

    def _preview_input(self, r: ChunkResult, previews: Previews) -> None:
        """Offer the chunk's newest input frame as the stream's input preview (INPUT)."""
        if r.input_frame is None or not Previews.input_wanted(self.stats.subscriptions, r.stream):
            return
        make = functools.partial(previews.input_message, r, self.stats.lost)
        parts = previews.offer(r.stream, INPUT, make, r.discontinuity)
        if parts is not None:
            self._send_preview(parts)

    def _send_preview(self, parts: list[Any]) -> None:
        transport.send(self.sock, parts)
        self.stats.count("previews")

    def flush_previews(self) -> None:
        """Send the previews that waited for their time (the serve loop calls this)."""
        if self.previews is not None:
            for parts in self.previews.due():
                self._send_preview(parts)

    def _end(self, r: EndResult) -> None:
        subscribed = None
        if r.watch is not None:
            subscribed = self.stats.has_subscriber(r.watch, self.layers)
        for name in self.layers:
            parts = protocol.encode_output_eos(r.stream, name, r.session, r.seq, subscribed,
                                               resume=r.resume, boot=self.stats.boot,
                                               shm_outputs=self.shm_bytes > 0)  # fmt: skip
            transport.send(self.sock, parts)
        self.stats.count("eos_published", len(self.layers))
        shm = self.shm_bytes > 0 and any(t.startswith(SHM) for t in self.stats.subscriptions)
        if shm and r.stream != protocol.PROBE_STREAM:  # the shm subscribers' end of stream
            for name in self.layers:
                eos = protocol.encode_output_eos(r.stream, name, r.session, r.seq)
                transport.send(self.sock, protocol.as_shm(eos, True))
        previews = self._previewing()
        if previews is not None and r.stream != protocol.PROBE_STREAM:
            for parts in previews.due(stream=r.stream):  # the last frames, before the end
                self._send_preview(parts)
            for name in self.layers:
                eos = protocol.encode_output_eos(r.stream, name, r.session, r.seq, preview=True)
                transport.send(self.sock, eos)
            previews.forget(r.stream)
