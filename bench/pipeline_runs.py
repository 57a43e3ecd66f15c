"""One measured run per transport, all received in this (the parent) process.

Every run reports the same things the same way: frames received, frames the sender reported
sent, the seconds from the first frame's send time (its t_ns) to the last frame's arrival,
and per-frame latencies (arrival time minus t_ns). Sender and receiver share one clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pipeline_procs as procs
import zmq

from streamconv.client.subscriber import Subscriber

RECV_TIMEOUT_S = 60.0  # a hung run is a failed run, never a hung benchmark
R = TypeVar("R")


def interleave(
    variants: dict[str, Callable[[], R]], rounds: int, skip: int = 0
) -> dict[str, list[R]]:
    """Run every variant once per round, rotating the order so drift hits all of them; the
    first `skip` rounds are warm-up, not kept."""
    names: list[str] = list(variants)
    runs: dict[str, list[R]] = {n: [] for n in variants}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = variants[name]()
            if r >= skip:
                runs[name].append(run)
    return runs


@dataclass
class Run:
    received: int = 0
    sent: int = 0
    first_t_ns: int = 0
    last_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)

    def add(self, t_ns: int, now: int) -> None:
        if not self.received:
            self.first_t_ns = t_ns
        self.received += 1
        self.last_ns = now
        self.latencies_ns.append(now - t_ns)

    @property
    def fps(self) -> float:
        return self.received / max(self.last_ns - self.first_t_ns, 1) * 1e9

    @property
    def lost(self) -> int:
        return self.sent - self.received


class PipelineVariant:
    """A worker (kept up across repeats) and this process's subscriber to its last layer."""

    def __init__(self, stack: ExitStack, settings: Any, name: str, shm: bool = False) -> None:
        self.input, self.layer = settings.worker.input.endpoint, settings.layers[-1].name
        self.worker = stack.enter_context(procs.child(procs.worker_entry, settings, name=name))
        self.sub = stack.enter_context(
            Subscriber(
                settings.worker.output.endpoint,
                stream=procs.STREAM,
                layers=[self.layer],
                timeout_s=RECV_TIMEOUT_S,
                shm=shm,  # payloads from the worker's shared memory (same host)
            )
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Beat the PUB/SUB slow joiner (torch import and model build take seconds)."""
        procs.wait_worker_ready(self.worker, self.sub, self.input, timeout_s)

    def run(self, n: int, *, live: bool = False, fps: float = 30.0,
            size: tuple[int, int, int] = (procs.WIDTH, procs.HEIGHT, 1)) -> Run:  # fmt: skip
        mode = "live" if live else "lossless"
        args = (self.input, n, mode, fps if live else None, live, size)
        out = Run()
        with procs.child(procs.capture_entry, *args, name="capture") as cap:
            while True:
                header, frame = self.sub.recv()
                now = time.time_ns()
                if frame is None:  # eos: its seq is the number of frames the capture sent
                    out.sent = header["seq"]
                    break
                out.add(header["t_ns"], now)
            cap.join(RECV_TIMEOUT_S)
        return out


def relay_run(n: int, fps: float | None = None) -> Run:
    """One plain PUSH -> PULL hop; the frame is rebuilt as a numpy view, as a client would."""
    endpoint = procs.free_endpoint()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    out = Run()
    try:
        with procs.child(procs.relay_sender_entry, endpoint, n, fps, name="relay") as sender:
            while True:
                if not sock.poll(int(RECV_TIMEOUT_S * 1000)):
                    msg = "plain relay: no frame within the timeout"
                    raise TimeoutError(msg)
                head_raw, payload = sock.recv_multipart(copy=False)
                now = time.time_ns()
                head = json.loads(bytes(head_raw.buffer))
                if head.get("end"):
                    out.sent = head["sent"]
                    break
                np.frombuffer(payload.buffer, np.uint8).reshape(head["shape"])
                out.add(head["t_ns"], now)
            sender.join(RECV_TIMEOUT_S)
    finally:
        sock.close()
        ctx.term()
    return out


def imagezmq_run(n: int) -> Run:
    """imagezmq REQ/REP: one hop, the hub replies to every image before the next is sent."""
    import imagezmq

    endpoint = procs.free_endpoint()
    hub = imagezmq.ImageHub(open_port=endpoint)
    hub.zmq_socket.setsockopt(zmq.RCVTIMEO, int(RECV_TIMEOUT_S * 1000))  # never hang
    out = Run(sent=n)
    try:
        with procs.child(procs.imagezmq_sender_entry, endpoint, n, name="imagezmq") as sender:
            for _ in range(n):
                msg, _image = hub.recv_image()
                now = time.time_ns()
                hub.send_reply(b"OK")
                out.add(int(msg), now)
            sender.join(RECV_TIMEOUT_S)
    finally:
        hub.zmq_socket.close(linger=0)
        hub.zmq_context.term()
    return out


def side_by_side(
    settings: dict[str, Any], frames: int, warmup: int, repeats: int, label: str = "variant"
) -> dict[str, float]:
    """One worker per variant (its settings), all up at once, fed `frames` in alternating
    runs; prints frames/s medians per variant and returns them."""

    with ExitStack() as stack:
        variants = {n: PipelineVariant(stack, s, n) for n, s in settings.items()}
        for v in variants.values():
            v.wait_ready()
        runs = interleave({n: (lambda v=v: v.run(frames)) for n, v in variants.items()},
                          warmup + repeats, skip=warmup)  # fmt: skip
    return fps_table(runs, label)


def fps_table(runs: dict[str, list[Run]], label: str = "variant") -> dict[str, float]:
    """Print frames/s medians (min-max, lost) per variant; return the medians."""
    import statistics

    print(f"| {label} | frames/s (median) | min-max | lost |")
    print("|---|---:|---:|---:|")
    med = {}
    for name, rs in runs.items():
        fps = [r.fps for r in rs]
        med[name] = statistics.median(fps)
        print(f"| {name} | {med[name]:.0f} | {min(fps):.0f}-{max(fps):.0f} "
              f"| {sum(r.lost for r in rs)} |")  # fmt: skip
    return med
