"""What checkpoints cost: per checkpoint (ms, bytes), the worker's throughput with checkpoints at
the default interval against none, and the time from a restart to the first resumed output.

A benchmark, never a test: medians, side by side in one run, machine named.

    python bench/checkpoints.py           # about 3 minutes on 2 cores
    python bench/checkpoints.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pipeline_procs as procs
import torch
from machine import cpu_line

from streamconv.capture.sources import synthetic_frame
from streamconv.client import Sender, Subscriber
from streamconv.config import load_settings
from streamconv.model import build_model
from streamconv.worker.checkpoints import Checkpoints, Snapshot, fingerprint, snapshot_state


def write_cost(w: int, h: int, repeats: int) -> tuple[float, float, int]:
    """(ms to copy the state, ms to write it atomically with fsync, bytes) at w x h, retina."""
    settings = load_settings("retina", {"worker": {"device": "cpu"}}, environ={})
    model = build_model(settings, torch.device("cpu"))
    with torch.inference_mode():
        _, state = model.step(torch.rand(1, 1, settings.worker.chunk, h, w), None)
    copies, writes, nbytes = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Checkpoints(Path(tmp), fingerprint(model, settings))
        for _ in range(repeats):
            start = time.perf_counter()
            snap = Snapshot("bench", "s" * 32, 100, (1, h, w), snapshot_state(state))
            copies.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            nbytes = folder.write(snap)
            writes.append((time.perf_counter() - start) * 1000)
    return statistics.median(copies), statistics.median(writes), nbytes


def sender_entry(endpoint: str, w: int, h: int, n: int) -> None:
    """Push n frames (8 distinct ones, cycled) as stream 'bench', lossless, then eos."""
    frames = [synthetic_frame(i, w, h, channels=1) for i in range(8)]
    with Sender(endpoint, "bench", wait_s=60) as sender:
        for i in range(n):
            sender.send(frames[i % 8])


def run(w: int, h: int, n: int, checkpoints: Path | None) -> float:
    """Frames/s of one lossless stream through the retina worker (first to last output)."""
    inp, out = procs.free_endpoint(), procs.free_endpoint()
    worker = {"input": inp, "output": out, "http": "off", "device": "cpu"}
    if checkpoints is not None:
        worker["checkpoint_dir"] = str(checkpoints)
    settings = load_settings("retina", {"worker": worker}, environ={})
    first = last = 0.0
    with (
        procs.child(procs.worker_entry, settings, name="worker"),
        Subscriber(out, stream="bench", layers=["ganglion"], timeout_s=120) as sub,
    ):
        sub.wait_ready(inp, timeout_s=120)
        with procs.child(sender_entry, inp, w, h, n, name="sender"):
            for _, frame in sub:  # outputs as they come, while the sender sends
                if frame is not None:
                    last = time.monotonic()
                    first = first or last
    return (n - 1) / (last - first)


def restart_to_output(w: int, h: int) -> float:
    """Seconds from starting a worker that holds a checkpoint to the first resumed output."""
    inp, out = procs.free_endpoint(), procs.free_endpoint()
    with tempfile.TemporaryDirectory() as tmp:
        worker = {"input": inp, "output": out, "http": "off", "device": "cpu",
                  "checkpoint_dir": tmp, "checkpoint_every": 8}  # fmt: skip
        settings = load_settings("retina", {"worker": worker}, environ={})
        frames = [synthetic_frame(i, w, h, channels=1) for i in range(16)]
        from streamconv.wire import protocol, transport

        ctx = transport.context()
        push = transport.push_socket(ctx, inp, linger_ms=2000)
        session = protocol.new_session()
        with procs.child(procs.worker_entry, settings, name="worker"):
            with Subscriber(out, stream="bench", layers=["ganglion"], timeout_s=120) as sub:
                sub.wait_ready(inp, timeout_s=120)
                for seq in range(16):
                    transport.send(push, protocol.encode_frame("bench", session, seq, frames[seq]))
                for _ in range(16):
                    sub.recv()
            time.sleep(0.5)  # the checkpoint at seq 16 is written; the stop writes it too
        start = time.monotonic()
        with (
            procs.child(procs.worker_entry, settings, name="worker"),
            Subscriber(out, stream="bench", layers=["ganglion"], timeout_s=120) as sub,
        ):
            sub.wait_ready(inp, timeout_s=120)
            transport.send(push, protocol.encode_frame("bench", session, 16, frames[0]))
            head, _ = sub.recv()
            took = time.monotonic() - start
            assert not head.get("discontinuity"), "the state was not restored"
        transport.close(push, 0)
        ctx.term()
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600, help="frames per throughput run (640x480)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.frames, args.rounds = 300, 1
    print(cpu_line())
    print(f"torch {torch.__version__}, numpy {np.__version__}\n")
    print("1. one checkpoint of one stream, retina preset (median of 5)")
    print(f"{'size':>10} {'copy ms':>9} {'write+fsync ms':>15} {'MB':>8}")
    for w, h in ((640, 480), (1280, 720)):
        copy_ms, write_ms, nbytes = write_cost(w, h, 5)
        print(f"{f'{w}x{h}':>10} {copy_ms:9.1f} {write_ms:15.1f} {nbytes / 2**20:8.1f}")
    print(
        "\n2. throughput, retina, one lossless 640x480 stream, checkpoint every 256 frames"
        " (the default) against none; interleaved rounds, medians"
    )
    with tempfile.TemporaryDirectory() as tmp:
        plain, kept = [], []
        for i in range(args.rounds):
            plain.append(run(640, 480, args.frames, None))
            kept.append(run(640, 480, args.frames, Path(tmp) / f"r{i}"))
    a, b = statistics.median(plain), statistics.median(kept)
    print(f"  no checkpoints {a:7.1f} frames/s, checkpoints {b:7.1f} frames/s: ratio {b / a:.3f}")
    print(
        "\n3. restart to the first resumed output (a new worker process that restores a "
        "640x480 stream; torch import and model build included)"
    )
    print(f"  {restart_to_output(640, 480):.2f} s")


if __name__ == "__main__":
    main()
