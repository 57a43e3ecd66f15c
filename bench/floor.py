"""Child processes and runs for bench/passthrough.py: the raw two-hop Python floor, and the
streamconv capture over the same in-memory frames.

The floor is what any Python program moving these frames between three processes pays: a
sender PUSHes [JSON header, uint8 frame] (zero-copy), a middle process PULLs, converts to
float32 / 255 with numpy (channels kept, HWC) and PUBlishes [topic, JSON header, float32 frame]
(zero-copy), and a SUB receives every frame. High-water marks are streamconv's defaults (8 into
the middle, 1000 out of it and into the subscriber). No top-level import here pulls in torch.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import pipeline_procs as procs
import zmq

DISTINCT = 16  # distinct frames, cycled: the same bytes for every variant, little memory
STREAM = "bench"
TOPIC = b"floor/out/"
IN_HWM, OUT_HWM = 8, 1000  # as a lossless capture, the worker's XPUB and a Subscriber
RECV_TIMEOUT_S = 60.0  # a hung run is a failed run, never a hung benchmark


@dataclass
class Run:
    """Frames received in the parent, timed from the first arrival to the last."""

    received: int = 0
    sent: int = 0
    first_ns: int = 0
    last_ns: int = 0
    first: np.ndarray | None = None  # the first output, checked after the clock

    def add(self, array: np.ndarray) -> None:
        self.last_ns = time.monotonic_ns()
        if not self.received:
            self.first_ns, self.first = self.last_ns, array
        self.received += 1

    @property
    def fps(self) -> float:
        return (self.received - 1) / max(self.last_ns - self.first_ns, 1) * 1e9

    @property
    def lost(self) -> int:
        return self.sent - self.received


def frames(n: int, width: int, height: int, channels: int) -> list[np.ndarray]:
    """n uint8 frames of the synthetic pattern, (H, W) gray or (H, W, 3) BGR, made up front."""
    from streamconv.capture.sources import synthetic_frame

    base = [synthetic_frame(i, width, height, channels) for i in range(DISTINCT)]
    return [base[i % DISTINCT] for i in range(n)]


@functools.cache
def expected(width: int, height: int, channels: int) -> np.ndarray:
    """Frame 0 as float32 / 255, as both pipelines must deliver it (checked after the clock)."""
    from streamconv.capture.sources import synthetic_frame

    frame = synthetic_frame(0, width, height, channels)
    return np.divide(frame, np.float32(255), dtype=np.float32)


def _quiet() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(processName)s %(name)s %(message)s")


def capture_entry(endpoint: str, output: str, n: int, w: int, h: int, c: int) -> None:
    """streamconv's reference capture, lossless, over an in-memory source (no decoding)."""
    from streamconv.capture.role import Capture
    from streamconv.capture.sources import ArraySource

    _quiet()
    # Nothing checkpoints here, so the resume buffer fills and says so once per run: expected.
    logging.getLogger("streamconv.client.resend").setLevel(logging.ERROR)
    source = ArraySource(frames(n, w, h, c))
    Capture(source, stream=STREAM, endpoint=endpoint, mode="lossless", output=output).run()


def sender_entry(endpoint: str, n: int, w: int, h: int, c: int) -> None:
    """Plain PUSH of [JSON header, frame], zero-copy, then an end marker with the count."""
    _quiet()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, IN_HWM)
    sock.setsockopt(zmq.SNDTIMEO, int(RECV_TIMEOUT_S * 1000))  # zmq.Again, never a hang
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    try:
        for seq, frame in enumerate(frames(n, w, h, c)):
            head = {"seq": seq, "t_ns": time.time_ns(), "shape": frame.shape, "dtype": "uint8"}
            sock.send_multipart([json.dumps(head).encode(), frame.data], copy=False)
        sock.send_multipart([json.dumps({"end": True, "sent": n}).encode(), b""])
    finally:
        sock.close()
        ctx.term()


def middle_entry(inp: str, out: str) -> None:
    """PULL -> uint8 to float32 / 255 -> PUB, until SIGTERM or the parent is gone."""
    _quiet()
    ctx = zmq.Context()
    pull, pub = ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
    pull.setsockopt(zmq.RCVHWM, IN_HWM)
    pub.setsockopt(zmq.SNDHWM, OUT_HWM)
    for sock in (pull, pub):
        sock.setsockopt(zmq.LINGER, 0)
    pull.bind(inp)
    pub.bind(out)
    scale, parent = np.float32(255.0), multiprocessing.parent_process()
    try:
        while parent is None or parent.is_alive():
            if not pull.poll(1000):
                continue
            head_raw, payload = pull.recv_multipart(copy=False)
            head = json.loads(bytes(head_raw.buffer))
            if "shape" not in head:  # a probe or the end marker: passed on as it is
                pub.send_multipart([TOPIC, head_raw, b""], copy=False)
                continue
            frame = np.frombuffer(payload.buffer, np.uint8).reshape(head["shape"])
            head["dtype"] = "float32"
            result = np.divide(frame, scale, dtype=np.float32)
            pub.send_multipart([TOPIC, json.dumps(head).encode(), result.data], copy=False)
    finally:
        pull.close()
        pub.close()
        ctx.term()


class FloorVariant:
    """A middle process (kept up across repeats) and this process's SUB to it."""

    def __init__(self, stack: ExitStack, inp: str, out: str, size: tuple[int, int, int]) -> None:
        self.input, self.size = inp, size
        self.middle = stack.enter_context(procs.child(middle_entry, inp, out, name="middle"))
        ctx = zmq.Context()
        stack.callback(ctx.term)
        self.ctx, self.sub = ctx, ctx.socket(zmq.SUB)
        stack.callback(self.sub.close)
        self.sub.setsockopt(zmq.RCVHWM, OUT_HWM)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
        self.sub.connect(out)

    def _recv(self, timeout_s: float) -> tuple[dict[str, Any], Any] | None:
        if not self.sub.poll(int(timeout_s * 1000)):
            return None
        _topic, head, payload = self.sub.recv_multipart(copy=False)
        return json.loads(bytes(head.buffer)), payload

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Probes through the middle until one reaches the SUB (the PUB/SUB slow joiner)."""
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(self.input)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if not self.middle.is_alive():
                    msg = f"floor middle exited (code {self.middle.exitcode})"
                    raise RuntimeError(msg)
                with suppress(zmq.Again):
                    push.send_multipart([json.dumps({"probe": True}).encode(), b""], zmq.NOBLOCK)
                got = self._recv(0.1)
                if got is not None and got[0].get("probe"):
                    return
            msg = f"floor middle at {self.input} did not answer within {timeout_s} s"
            raise TimeoutError(msg)
        finally:
            push.close()

    def run(self, n: int) -> Run:
        out = Run()
        w, h, c = self.size
        with procs.child(sender_entry, self.input, n, w, h, c, name="floor-sender") as sender:
            while True:
                got = self._recv(RECV_TIMEOUT_S)
                if got is None:
                    msg = f"floor: no frame within {RECV_TIMEOUT_S} s"
                    raise TimeoutError(msg)
                head, payload = got
                if head.get("probe"):  # late answers to wait_ready's probes
                    continue
                if head.get("end"):
                    out.sent = head["sent"]
                    break
                out.add(np.frombuffer(payload.buffer, np.float32).reshape(head["shape"]))
            sender.join(RECV_TIMEOUT_S)
        return out
