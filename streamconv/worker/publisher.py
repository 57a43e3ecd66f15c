"""Engine results -> protocol messages -> the PUB socket. One message per frame per layer."""

from __future__ import annotations

from collections import Counter

from streamconv.wire import protocol, transport
from streamconv.worker.engine import ChunkResult, EndResult, Result


class Publisher:
    """Publishes every published layer's output frames, then eos on every layer."""

    def __init__(self, sock: transport.Socket, layers: list[str], output_dtype: str) -> None:
        self.sock, self.layers, self.output_dtype = sock, layers, output_dtype
        self.stats: Counter[str] = Counter()

    def publish(self, results: list[Result]) -> None:
        for result in results:
            if isinstance(result, ChunkResult):
                self._chunk(result)
            else:
                self._end(result)

    def _chunk(self, r: ChunkResult) -> None:
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
                )
                transport.send(self.sock, parts)
                self.stats["messages"] += 1

    def _end(self, r: EndResult) -> None:
        for name in self.layers:
            transport.send(self.sock, protocol.encode_output_eos(r.stream, name, r.session, r.seq))
            self.stats["eos"] += 1
