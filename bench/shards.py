"""Aggregate frames/s of 1, 2 and 3 local shards: workers as processes, streams routed by the
capture's rendezvous hashing, one subscriber fanning in every shard's output.

A benchmark, never a test: medians of interleaved rounds, the machine printed. Each round
starts N retina workers on loopback, pushes S lossless streams of synthetic 640x480 gray
frames through `streamconv capture --shards`, and times the first to the last `ganglion`
output at a subscriber connected to every shard (it subscribes to that layer only: the
workers copy back and send nothing else). On a machine with fewer cores than shards plus
captures, more shards only share the same cores: read the numbers with the core count.

    python bench/shards.py [--shards 1 2 3] [--streams 6] [--frames 96] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_line
from pipeline_procs import free_port_pair

from streamconv.wire import protocol, transport
from streamconv.wire.shards import owner

REPO = Path(__file__).resolve().parent.parent


def run(n_shards: int, streams: int, frames: int) -> tuple[float, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    py = [sys.executable, "-m", "streamconv"]
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n_shards):
            port = free_port_pair(ports[-1] if ports else 20998)
            ports.append(port)
            procs.append(subprocess.Popen(
                [*py, "worker", "--config", "retina", "--device", "cpu", "--http", "off",
                 "--input", f"tcp://127.0.0.1:{port}", "--output", f"tcp://127.0.0.1:{port + 1}"],
                env=env, stderr=subprocess.DEVNULL))  # fmt: skip
        inputs = [f"tcp://127.0.0.1:{p}" for p in ports]
        names = [f"cam{i}" for i in range(streams)]
        placed = [sum(owner(s, inputs) == ep for s in names) for ep in inputs]
        # One socket on every shard, subscribed to each stream's last layer only.
        ctx = transport.context()
        outputs = [f"tcp://127.0.0.1:{p + 1}" for p in ports]
        topics = [protocol.topic(s, "ganglion") for s in names]
        sub = transport.sub_socket(ctx, outputs, topics, hwm=100_000)
        captures = [subprocess.Popen(
            [*py, "capture", f"synthetic:640x480:{frames}", "--stream", name, "--gray",
             "--shards", ",".join(inputs), "--wait", "120", "--wait-subscriber"],
            env=env, stderr=subprocess.DEVNULL) for name in names]  # fmt: skip
        procs += captures
        first = last = 0.0
        ended = 0
        while ended < streams:
            parts = transport.recv(sub, 120_000)
            if parts is None:
                raise SystemExit("no output for 120 s")
            head, array = protocol.decode_output([f.buffer for f in parts])
            if array is None:
                ended += head["stream"] != protocol.PROBE_STREAM
                continue
            last = time.perf_counter()
            first = first or last
        transport.close(sub, 0)
        ctx.term()
        for c in captures:
            c.wait(60)
        return streams * frames / (last - first), placed
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--streams", type=int, default=6)
    p.add_argument("--frames", type=int, default=96, help="frames per stream")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"{cpu_line()}; {os.cpu_count()} logical cores")
    print(f"retina, cpu, 1 torch thread per worker; {args.streams} streams x {args.frames} "
          f"frames of 640x480 gray, lossless; {args.rounds} rounds (medians)\n")  # fmt: skip
    fps: dict[int, list[float]] = {n: [] for n in args.shards}
    placed: dict[int, list[int]] = {}
    for r in range(args.rounds):
        order = args.shards if r % 2 == 0 else list(reversed(args.shards))
        for n in order:
            rate, placed[n] = run(n, args.streams, args.frames)
            fps[n].append(rate)
    base = statistics.median(fps[args.shards[0]])
    print("| shards | streams per shard | aggregate frames/s | min-max | vs 1 shard |")
    print("|---:|---|---:|---:|---:|")
    for n in args.shards:
        med = statistics.median(fps[n])
        print(f"| {n} | {placed[n]} | {med:.0f} | {min(fps[n]):.0f}-{max(fps[n]):.0f} | "
              f"{med / base:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
