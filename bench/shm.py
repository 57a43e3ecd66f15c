"""Same-host subscribers through shared memory (issue 21, benchmark 3), side by side in one
run: the pass-through worker's float32 640x480 outputs read over its socket and through its
shared-memory ring (worker --shm, Subscriber(shm=True)), against a one-hop ZeroMQ relay of
the uint8 input frames (the transport's own ceiling). Target: shared memory at least 0.5x
the relay's frames/s. Also printed: the bytes each way copies per output frame, by design.

A benchmark, never a test: medians, with the machine printed. `--quick`: a smoke run.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import pipeline_procs as procs
from machine import cpu_line
from pipeline_runs import PipelineVariant, Run, fps_table, interleave, relay_run

from streamconv.config import load_settings

CONFIG = Path(__file__).resolve().parent.parent / "config" / "bench" / "passthrough.toml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600, help="640x480 gray frames per run")
    p.add_argument("--repeats", type=int, default=7, help="runs per variant (medians)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.repeats, args.warmup = 120, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(cpu_line())
    print(f"{args.frames} frames of 640x480 gray per run (float32 out: 1.2 MB a frame), "
          f"{args.warmup} warm-up + {args.repeats} runs per variant")  # fmt: skip
    with ExitStack() as stack:
        variants: dict[str, PipelineVariant] = {}
        for name, shm in (("socket", False), ("shared memory", True)):
            ports = {"input": procs.free_endpoint(), "output": procs.free_endpoint()}
            worker = {**ports, "http": "off", "shm": shm, "shm_mb": 256}
            settings = load_settings(CONFIG, {"worker": worker})
            variants[name] = PipelineVariant(stack, settings, name, shm=shm)
        for v in variants.values():
            v.wait_ready()
        runs: dict[str, list[Run]] = interleave(
            {**{n: (lambda v=v: v.run(args.frames)) for n, v in variants.items()},
             "relay (uint8 in, one hop)": lambda: relay_run(args.frames)},
            args.warmup + args.repeats, skip=args.warmup,
        )  # fmt: skip
    med = fps_table(runs)
    frame = 640 * 480 * 4
    print(
        f"bytes copied per output frame in user space, by design: shared memory 2 x {frame} "
        "(into the ring, out of it); socket: ZeroMQ's (kernel send and receive)"
    )
    ratio = med["shared memory"] / med["relay (uint8 in, one hop)"]
    print("targets:")
    print(f"  shared memory / relay >= 0.5: {ratio:.2f} {'met' if ratio >= 0.5 else 'MISSED'}")
    print(f"  (shared memory / socket: {med['shared memory'] / med['socket']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
