"""Live under overload: a live source faster than the worker computes, with the worker dropping
the oldest waiting frames (the default) against keeping every frame it receives. Latency from
capture to subscriber, p50 and p99, and the frames dropped where. A benchmark, never a test.

    python bench/overload.py [--size 1920x1080] [--seconds 8]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pipeline_procs as procs
from machine import cpu_line

from streamconv.capture.sources import synthetic_frame
from streamconv.client import Sender, Subscriber
from streamconv.config import load_settings


def sender_entry(endpoint: str, w: int, h: int, n: int, fps: float, out: Any) -> None:
    """A live Sender paced at `fps`: it drops (and counts) what it cannot queue."""
    frames = [synthetic_frame(i, w, h) for i in range(8)]  # BGR
    with Sender(endpoint, "live", "live", wait_s=60, fps=fps) as sender:
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sender.send(frames[i % 8])
        out.put(sender.dropped)


def one(w: int, h: int, seconds: float, fps: float, drop_oldest: bool) -> dict[str, float]:
    inp, outp = procs.free_endpoint(), procs.free_endpoint()
    worker = {"input": inp, "output": outp, "http": "off", "device": "cpu", "chunk": 1,
              "max_wait_ms": 0, "live_drop_oldest": drop_oldest}  # fmt: skip
    settings = load_settings("retina", {"worker": worker}, environ={})
    n = int(seconds * fps)
    latencies: list[float] = []
    queue = procs.SPAWN.Queue()
    with (
        procs.child(procs.worker_entry, settings, name="worker"),
        Subscriber(outp, stream="live", layers=["ganglion"], timeout_s=120) as sub,
    ):
        sub.wait_ready(inp, timeout_s=120)
        with procs.child(sender_entry, inp, w, h, n, fps, queue, name="sender"):
            for head, frame in sub:
                if frame is not None:
                    latencies.append((time.time_ns() - head["t_ns"]) / 1e6)
            sender_dropped = queue.get(timeout=30)
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "shown": len(latencies),
            "sent": n - sender_dropped, "sender_dropped": sender_dropped}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    print(cpu_line())
    print(
        f"\nretina, chunk 1, {args.size} BGR live at {args.fps:g} frames/s for {args.seconds:g} s;"
        f" {args.rounds} interleaved rounds, each figure the median over rounds"
    )
    rows: dict[str, list[dict[str, float]]] = {"drop oldest (default)": [], "keep all": []}
    for _ in range(args.rounds):
        rows["drop oldest (default)"].append(one(w, h, args.seconds, args.fps, True))
        rows["keep all"].append(one(w, h, args.seconds, args.fps, False))
    head = ("worker", "p50 ms", "p99 ms", "sent", "shown", "dropped at sender")
    print(f"{head[0]:24} {head[1]:>9} {head[2]:>9} {head[3]:>6} {head[4]:>6} {head[5]:>18}")
    for name, runs in rows.items():
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        print(f"{name:24} {med['p50']:9.0f} {med['p99']:9.0f} {med['sent']:6.0f}"
              f" {med['shown']:6.0f} {med['sender_dropped']:18.0f}")  # fmt: skip
    print(
        "(sent: frames the capture queued; shown: outputs the subscriber got; the difference "
        "was dropped by the worker, oldest first)"
    )


if __name__ == "__main__":
    main()
