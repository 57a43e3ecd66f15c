"""Your own model in the daemon (issue 19): what it costs, measured side by side in one run.

1. A Python layer against a built-in one with the same math, served by a worker: the
   built-in `highpass` (config/bench/own_builtin.toml) and the same high pass written as a
   plain Layer of one's own (config/bench/own_python.toml, own_layer.py). Both workers run
   at once; runs alternate between them. Target: the Python layer at most 5% slower.
2. Start-up: `streamconv worker --config PRESET` from process start to "worker ready", with
   the quick exactness check and without ([worker] startup_check). Target: at most 1 s more.

A benchmark, never a test: medians and ratios, with the machine printed. `--quick`: a smoke
run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pipeline_procs as procs
from machine import cpu_line
from pipeline_runs import interleave, side_by_side

from streamconv.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "config" / "bench"
VARIANTS = {"built-in highpass": "own_builtin.toml", "python highpass": "own_python.toml"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600, help="640x480 gray frames per run")
    p.add_argument("--repeats", type=int, default=7, help="runs per variant (medians)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--starts", type=int, default=5, help="worker starts per variant")
    p.add_argument("--quick", action="store_true", help="smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.repeats, args.warmup, args.starts = 100, 2, 1, 2
    return args


def served(args: argparse.Namespace) -> dict[str, float]:
    settings = {}
    for name, file in VARIANTS.items():
        ports = {"input": procs.free_endpoint(), "output": procs.free_endpoint()}
        overrides = {"worker": {**ports, "http": "off", "device": "cpu"}}
        settings[name] = load_settings(CONFIGS / file, overrides)
    return side_by_side(settings, args.frames, args.warmup, args.repeats)


def start_once(preset: str, check: bool) -> float:
    """Seconds from process start to the worker's ready line."""
    env = {**os.environ, "STREAMCONV_WORKER__STARTUP_CHECK": "true" if check else "false"}
    cmd = [sys.executable, "-m", "streamconv", "worker", "--config", preset, "--device", "cpu",
           "--http", "off", "--input", procs.free_endpoint(),
           "--output", procs.free_endpoint()]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "worker ready" in line:
                return time.monotonic() - start
        raise SystemExit(f"the worker exited ({proc.wait()}) before it was ready")
    finally:
        proc.terminate()
        proc.wait(30)


def startup(args: argparse.Namespace) -> dict[str, float]:
    print("| preset | start-up s, check on (median) | check off | difference |")
    print("|---|---:|---:|---:|")
    worst = {}
    for preset in ("default", "retina"):
        times = interleave({"on": lambda p=preset: start_once(p, True),
                            "off": lambda p=preset: start_once(p, False)},
                           args.starts)  # fmt: skip
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        worst[preset] = on - off
        print(f"| {preset} | {on:.2f} | {off:.2f} | {on - off:+.2f} |")
    return worst


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    print(cpu_line())
    print(f"torch {torch.__version__}; {args.frames} frames of 640x480 gray per run, "
          f"{args.warmup} warm-up + {args.repeats} runs per variant")  # fmt: skip
    med = served(args)
    ratio = med["python highpass"] / med["built-in highpass"]
    more = startup(args)
    print("targets:")
    print(
        f"  python / built-in frames/s >= 0.95: {ratio:.3f} {'met' if ratio >= 0.95 else 'MISSED'}"
    )
    for preset, extra in more.items():
        print(f"  start-up with the check, {preset}: {extra:+.2f} s <= 1 s "
              f"{'met' if extra <= 1 else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
