"""What CURVE costs: pass-through frames/s and live latency, encrypted against plaintext.

A benchmark, never a test: medians of interleaved runs, side by side in one run. The worker
runs the pass-through pipeline (identity layer, float16 outputs); a Sender process pushes
frames from memory (lossless: as fast as the worker takes them; live: paced at 30 frames/s);
this process subscribes and times every output (capture-to-subscriber latency from the
header's capture timestamp). Both variants use the same code paths; only the keys differ.

    python bench/curve.py            # about 3 minutes on 2 cores
    python bench/curve.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pipeline_procs as procs
from machine import cpu_line

from streamconv.capture.sources import synthetic_frame
from streamconv.client import Sender, Subscriber
from streamconv.config import load_settings
from streamconv.wire.curve import generate

CONFIG = Path(__file__).resolve().parents[1] / "config" / "bench" / "passthrough.toml"
SHAPES = {"640x480 gray": (640, 480, 1), "1280x720 BGR": (1280, 720, 3)}


def sender_entry(endpoint: str, shape: tuple[int, int, int], n: int, fps: float | None,
                 keys: dict[str, Any]) -> None:  # fmt: skip
    """Push n frames (8 distinct ones, cycled) as stream 'bench', then eos."""
    w, h, c = shape
    frames = [synthetic_frame(i, w, h, channels=c) for i in range(8)]
    mode = "live" if fps else "lossless"
    with Sender(endpoint, "bench", mode, wait_s=30, fps=fps, **keys) as sender:
        t0 = time.monotonic()
        for i in range(n):
            if fps:
                delay = t0 + i / fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sender.send(frames[i % 8])


def one_run(
    shape: tuple[int, int, int], n: int, fps: float | None, keys: Path | None
) -> dict[str, float]:
    """Frames/s (first to last output) and latency percentiles of one run."""
    c = shape[2]
    server: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if keys is not None:
        server = {"curve_secret": keys / "worker.key_secret", "curve_clients": keys / "clients"}
        client = {"curve_secret": keys / "clients/client.key_secret",
                  "curve_server": keys / "worker.key"}  # fmt: skip
    inp, out = procs.free_endpoint(), procs.free_endpoint()
    worker = {"input": {"endpoint": inp, **server}, "output": {"endpoint": out, **server},
              "http": "off", "output_dtype": "float16", "in_channels": c,
              "color": "as-is" if c == 3 else "gray",
              "max_wait_ms": 0 if fps else 20, "chunk": 1 if fps else 8}  # fmt: skip
    settings = load_settings(CONFIG, {"worker": worker}, environ={})
    latencies: list[float] = []
    first = last = 0.0
    with (
        procs.child(procs.worker_entry, settings, name="worker"),
        Subscriber(out, stream="bench", timeout_s=60, **client) as sub,
    ):
        sub.wait_ready(inp, timeout_s=60)
        with procs.child(sender_entry, inp, shape, n, fps, client, name="sender"):
            for head, frame in sub:
                if frame is None:
                    continue
                now_ns = time.time_ns()
                last = time.monotonic()
                first = first or last
                latencies.append((now_ns - head["t_ns"]) / 1e6)
    got = len(latencies)
    p50, p99 = np.percentile(latencies, [50, 99])
    fps = (got - 1) / (last - first) if got > 1 else 0.0
    return {"fps": fps, "frames": got, "p50": float(p50), "p99": float(p99)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600, help="frames per throughput run")
    p.add_argument("--live-frames", type=int, default=150, help="frames per live run (30/s)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.frames, args.live_frames, args.rounds = 150, 45, 1
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        generate(keys, "worker")
        generate(keys / "clients", "client")
        variants = {"plaintext": None, "curve": keys}
        print(f"\n{'what':34} {'plaintext':>12} {'curve':>12} {'curve/plain':>12}")
        for label, shape in SHAPES.items():
            n = args.frames if shape[2] == 1 else args.frames // 3
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
            live: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
            for _ in range(args.rounds):  # interleaved: A B A B ...
                for name, folder in variants.items():
                    runs[name].append(one_run(shape, n, None, folder))
                    live[name].append(one_run(shape, args.live_frames, 30.0, folder))
            med = {v: statistics.median(r["fps"] for r in runs[v]) for v in variants}
            ratio = med["curve"] / med["plaintext"]
            print(f"{label + ' frames/s (lossless)':34} {med['plaintext']:12.0f}"
                  f" {med['curve']:12.0f} {ratio:12.2f}")  # fmt: skip
            for q in ("p50", "p99"):
                lat = {v: statistics.median(r[q] for r in live[v]) for v in variants}
                added = lat["curve"] - lat["plaintext"]
                print(f"{label + f' live 30/s latency {q} ms':34} {lat['plaintext']:12.2f}"
                      f" {lat['curve']:12.2f} {added:+12.2f}")  # fmt: skip
    print(
        "\n(frames/s: median of the runs; latency: median over runs of each run's percentile;"
        " the last column is the ratio for frames/s and the difference in ms for latency)"
    )


if __name__ == "__main__":
    main()
