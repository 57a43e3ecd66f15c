"""Child processes for the benchmarks: entry points, how they start and end, free endpoints and
the wait for a worker to be ready.

Every entry point is a module-level function so the spawn context can import it, and none of
this module's top-level imports pulls in torch: the senders must start light, like a real
capture client. Each child makes its own sockets and configures its own logging.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import zmq

WIDTH, HEIGHT = 640, 480
DISTINCT = 16  # distinct frames, cycled: same bytes in every variant, little memory
STREAM = "bench"
SPAWN = multiprocessing.get_context("spawn")
log = logging.getLogger(__name__)


_GIVEN: set[int] = set()


def free_endpoint() -> str:
    """A free loopback port, never one handed out before in this run (the OS may give the
    port just closed again: a worker's input and output would then collide)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return f"tcp://127.0.0.1:{port}"


def wait_worker_ready(worker: Any, sub: Any, inp: str, timeout_s: float = 120.0) -> None:
    """`streamconv run`'s readiness wait (streamconv.run.wait_worker_ready), for a worker
    process started here."""
    from streamconv.run import wait_worker_ready as wait  # imported here: it pulls in torch

    wait(sub, inp, worker, timeout_s=timeout_s)


def free_port_pair(after: int) -> int:
    """A free port above `after` whose next port is free too (a worker's input and output)."""
    for candidate in range(after + 2, 32000, 3):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", candidate))
                b.bind(("127.0.0.1", candidate + 1))
            except OSError:
                continue
            return candidate
    raise SystemExit("no free pair of ports")


def bench_frames(n: int, size: tuple[int, int, int] = (WIDTH, HEIGHT, 1)) -> list[np.ndarray]:
    """n uint8 frames (W, H, channels: gray 640x480 by default) of the synthetic pattern,
    made once, before any clock."""
    from streamconv.capture.sources import synthetic_frame

    w, h, c = size
    base = [synthetic_frame(i, w, h, channels=c) for i in range(DISTINCT)]
    return [base[i % DISTINCT] for i in range(n)]


def _quiet() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(processName)s %(name)s %(message)s")


def worker_entry(settings: Any) -> None:
    """A streamconv worker until SIGTERM (which it handles: it finishes and exits 0)."""
    from streamconv.worker.role import Worker

    _quiet()
    Worker(settings).run()


def capture_entry(endpoint: str, n: int, mode: str, fps: float | None, realtime: bool,
                  size: tuple[int, int, int] = (WIDTH, HEIGHT, 1)) -> None:  # fmt: skip
    """The reference capture client over an in-memory source: no decoding cost anywhere."""
    from streamconv.capture.role import Capture
    from streamconv.capture.sources import ArraySource

    _quiet()
    source = ArraySource(bench_frames(n, size), fps=fps)
    Capture(source, stream=STREAM, endpoint=endpoint, mode=mode, realtime=realtime).run()


def _pace(t0: float, index: int, fps: float | None) -> None:
    # Same pacing rule as Capture._pump: frame i is due at t0 + i / fps.
    if fps is not None:
        delay = t0 + index / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def relay_sender_entry(endpoint: str, n: int, fps: float | None) -> None:
    """Plain pyzmq PUSH: a small JSON header and the raw frame, zero-copy, then an end marker.

    With `fps` it is paced and never blocks (a frame that cannot be queued is dropped), like
    the capture's live mode; without, it sends as fast as the receiver takes them.
    """
    _quiet()
    frames = bench_frames(n)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    sent, t0 = 0, time.monotonic()
    try:
        for i, frame in enumerate(frames):
            _pace(t0, i, fps)
            head = {"seq": sent, "t_ns": time.time_ns(), "shape": list(frame.shape)}
            try:
                sock.send_multipart(
                    [json.dumps(head).encode(), frame], copy=False, flags=zmq.NOBLOCK if fps else 0
                )
                sent += 1
            except zmq.Again:
                pass
        sock.send_multipart([json.dumps({"end": True, "sent": sent}).encode(), b""])
    finally:
        sock.close()
        ctx.term()


def imagezmq_sender_entry(endpoint: str, n: int) -> None:
    """imagezmq's ImageSender (REQ): each send waits for the hub's reply."""
    import imagezmq

    _quiet()
    sender = imagezmq.ImageSender(connect_to=endpoint)
    try:
        for frame in bench_frames(n):
            sender.send_image(str(time.time_ns()), frame)
    finally:
        sender.zmq_socket.close(linger=0)
        sender.zmq_context.term()


def stop(proc: multiprocessing.process.BaseProcess, timeout_s: float = 10.0) -> None:
    """SIGTERM, a bounded join, then SIGKILL: no child outlives the benchmark."""
    if proc.is_alive():
        proc.terminate()
    proc.join(timeout_s)
    if proc.is_alive():
        log.warning("%s did not stop within %.0f s: killed", proc.name, timeout_s)
        proc.kill()
        proc.join(timeout_s)


@contextmanager
def child(target: Any, *args: Any, name: str) -> Iterator[multiprocessing.process.BaseProcess]:
    """A started spawn child that is stopped on the way out, even on error."""
    proc = SPAWN.Process(target=target, args=args, name=name, daemon=True)
    proc.start()
    try:
        yield proc
    finally:
        stop(proc)
