"""Record and replay (issue 20): what keeping every input frame costs, measured side by side.

1. Worker throughput with recording on against off: two workers on the default preset, one
   with [record] dir set, fed the same 640x480 gray frames in alternating runs. Target: at
   most 10% slower with recording on.
2. The archive: bytes per frame against raw, and the writer's cost per frame (compress and
   write a 64-frame segment), at 640x480 gray and 1280x720 BGR (the synthetic pattern, and
   the built-in sample clip: real video compresses differently).
3. Replay speed: frames/s read from the archive (the replay's source), against the worker's
   own rate from 1. Target: at least the worker's.

A benchmark, never a test: medians, with the machine printed. `--quick`: a smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pipeline_procs as procs
from machine import cpu_line
from pipeline_runs import side_by_side

from streamconv.archive.format import segments, write_segment
from streamconv.capture.sources import open_source, synthetic_frame
from streamconv.capture.sources.archive import ArchiveSource, choose
from streamconv.config import load_settings

SEGMENT = 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600, help="640x480 gray frames per run")
    p.add_argument("--repeats", type=int, default=7, help="runs per variant (medians)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.repeats, args.warmup = 128, 2, 1
    return args


def throughput(args: argparse.Namespace, archive: Path) -> dict[str, float]:
    settings = {}
    for name, record in (("recording off", None), ("recording on", str(archive))):
        ports = {"input": procs.free_endpoint(), "output": procs.free_endpoint()}
        overrides = {"worker": {**ports, "http": "off", "device": "cpu"},
                     "record": {"dir": record}}  # fmt: skip
        settings[name] = load_settings("default", overrides)
    return side_by_side(settings, args.frames, args.warmup, args.repeats,
                        "worker, default preset")  # fmt: skip


def archive_costs(folder: Path) -> None:
    sample = [f for _, f in zip(range(SEGMENT), open_source("sample"), strict=False)]
    clips = {
        "640x480 gray, synthetic": [synthetic_frame(i, 640, 480, channels=1)
                                    for i in range(SEGMENT)],
        "1280x720 BGR, synthetic": [synthetic_frame(i, 1280, 720, channels=3)
                                    for i in range(SEGMENT)],
        f"{sample[0].shape[1]}x{sample[0].shape[0]} sample clip": sample,
    }  # fmt: skip
    print(
        "| frames | zstd level | raw bytes/frame | archive bytes/frame | ratio | write ms/frame |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, frames in clips.items():
        stack = np.stack(frames)
        seqs = np.arange(len(frames))
        for level in (0, 1):
            times, nbytes = [], 0
            for rep in range(3):
                start = time.perf_counter()
                where = folder / f"{label[:4]}{level}{rep}"
                _, nbytes = write_segment(where, "b", "s" * 32, stack, seqs, seqs, None, level)
                times.append((time.perf_counter() - start) * 1000 / len(frames))
            raw, per = stack[0].nbytes, nbytes / len(frames)
            print(f"| {label} | {level or 'off'} | {raw} | {per:.0f} | {per / raw:.2f} "
                  f"| {statistics.median(times):.2f} |")  # fmt: skip


def replay_rate(archive: Path) -> float:
    found = segments(archive, procs.STREAM)
    interval = choose(found, None, None, None, None, None, 0)
    source = ArchiveSource(archive, procs.STREAM, interval)
    start = time.perf_counter()
    n = sum(1 for _ in source)
    rate = n / (time.perf_counter() - start)
    print(f"replay source: {n} frames read from the archive at {rate:.0f} frames/s")
    return rate


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        med = throughput(args, archive)
        archive_costs(Path(tmp) / "costs")
        rate = replay_rate(archive)
    ratio = med["recording on"] / med["recording off"]
    print("targets:")
    print(f"  recording on / off >= 0.90: {ratio:.3f} {'met' if ratio >= 0.9 else 'MISSED'}")
    worker = med["recording off"]
    print(f"  replay frames/s >= the worker's ({worker:.0f}): {rate:.0f} "
          f"{'met' if rate >= worker else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
