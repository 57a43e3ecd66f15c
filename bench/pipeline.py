"""End-to-end frames/s and live latency of capture -> worker -> subscriber, beside plain ZeroMQ.

A benchmark, never a test: it prints medians and ratios measured side by side in one run.
Frames are 640x480 gray uint8 from an in-memory source (decoded once, before any clock), so
no variant pays for decoding. Run `python bench/pipeline.py --help`; `--quick` is a smoke run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pipeline_procs as procs
import zmq
from machine import cpu_line
from pipeline_runs import PipelineVariant, Run, imagezmq_run, interleave, relay_run

from streamconv.config import load_settings

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "bench"
# name -> (config, worker overrides, what it is)
PIPELINES: dict[str, tuple[str, dict[str, Any], str]] = {
    "pass f32": ("passthrough", {"output_dtype": "float32"}, "identity, float32 out (4x input)"),
    "pass f16": ("passthrough", {"output_dtype": "float16"}, "identity, float16 out (2x input)"),
    "pass u8": ("passthrough", {"output_dtype": "uint8"}, "identity, uint8 out (min-max scaled)"),
    "light": ("light", {}, "conv gauss s1 7x7 x exp 3-tap, float32 out"),
}
LIVE = {"chunk": 1, "max_wait_ms": 0}
OUT_BYTES = {"pass f32": 4, "pass f16": 2, "pass u8": 1, "light": 4, "relay": 1, "imagezmq": 1}

try:  # Optional: only this benchmark uses it, so it is not a project dependency.
    import imagezmq
except ImportError:
    imagezmq = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1500, help="frames per throughput run")
    p.add_argument("--light-frames", type=int, default=200, help="frames per 'light' run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--live-frames", type=int, default=150, help="frames per live run")
    p.add_argument("--live-repeats", type=int, default=2, help="live runs per variant, pooled")
    p.add_argument("--fps", type=float, default=30.0, help="live pacing")
    p.add_argument("--quick", action="store_true", help="smoke run, about 20-30 s")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.light_frames, args.repeats, args.warmup = 300, 60, 1, 0
        args.live_frames, args.live_repeats = 45, 1
    return args


def machine() -> str:
    import torch

    izmq = imagezmq.__version__ if imagezmq is not None else "not installed"
    return (
        f"{cpu_line()}\n"
        f"python {platform.python_version()}, pyzmq {zmq.__version__}, libzmq "
        f"{zmq.zmq_version()}, torch {torch.__version__} (threads {torch.get_num_threads()}), "
        f"numpy {np.__version__}, imagezmq {izmq}"
    )


def settings_for(name: str, live: bool = False) -> Any:
    config, worker, _ = PIPELINES[name]
    ports = {"input": procs.free_endpoint(), "output": procs.free_endpoint()}
    overrides = {"worker": {**worker, **ports, "http": "off", **(LIVE if live else {})}}
    return load_settings(CONFIGS / f"{config}.toml", overrides)


def ms(values: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(values) / 1e6, q))


def throughput_table(runs: dict[str, list[Run]]) -> tuple[str, dict[str, float]]:
    med = {n: statistics.median(r.fps for r in rs) for n, rs in runs.items()}
    relay, izmq = med["relay"], med.get("imagezmq")
    lines = [
        "| variant | frames/s (median) | min-max | MB/s out | lost | /relay | /imagezmq |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, rs in runs.items():
        fps = [r.fps for r in rs]
        mbs = med[n] * procs.WIDTH * procs.HEIGHT * OUT_BYTES[n] / 1e6
        vs_izmq = f"{med[n] / izmq:.2f}" if izmq else "-"
        lines.append(
            f"| {n} | {med[n]:.0f} | {min(fps):.0f}-{max(fps):.0f} | {mbs:.0f} "
            f"| {sum(r.lost for r in rs)} | {med[n] / relay:.2f} | {vs_izmq} |"
        )
    return "\n".join(lines), med


def latency_table(runs: dict[str, list[Run]]) -> tuple[str, dict[str, list[int]]]:
    pooled = {n: [v for r in rs for v in r.latencies_ns] for n, rs in runs.items()}
    lines = [
        "| variant | received/sent | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for n, lat in pooled.items():
        sent = sum(r.sent for r in runs[n])
        lines.append(
            f"| {n} | {len(lat)}/{sent} | {ms(lat, 50):.2f} | {ms(lat, 99):.2f} "
            f"| {max(lat) / 1e6:.2f} |"
        )
    return "\n".join(lines), pooled


def verdicts(med: dict[str, float], lat: dict[str, list[int]]) -> str:
    def line(label: str, value: float, ok: bool, unit: str = "") -> str:
        return f"  {label}: {value:.2f}{unit} {'met' if ok else 'MISSED'}"

    out = ["targets:"]
    for n in ("pass f32", "pass f16", "pass u8"):
        out.append(line(f"{n} / relay >= 0.5", med[n] / med["relay"], med[n] >= 0.5 * med["relay"]))
        if "imagezmq" in med:
            r = med[n] / med["imagezmq"]
            out.append(line(f"{n} / imagezmq >= 1.0", r, r >= 1.0))
    p99, relay_p99 = ms(lat["pass live"], 99), ms(lat["relay live"], 99)
    out.append(line("live pass-through p99 latency < 5 ms", p99, p99 < 5, " ms"))
    out.append(
        f"  (pipeline minus one-hop relay: p50 "
        f"{ms(lat['pass live'], 50) - ms(lat['relay live'], 50):+.2f} ms, "
        f"p99 {p99 - relay_p99:+.2f} ms)"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(machine())
    print(
        f"640x480 gray uint8 frames from memory; lossless: {args.frames} frames per run "
        f"({args.light_frames} for light), {args.warmup} warm-up + {args.repeats} repeats "
        f"(medians); live: {args.live_repeats} x {args.live_frames} frames at {args.fps:g} fps"
    )
    if imagezmq is None:
        print("imagezmq not installed: column skipped")
    with ExitStack() as stack:  # every worker and subscriber is closed on the way out
        pipes = {n: PipelineVariant(stack, settings_for(n), n) for n in PIPELINES}
        live = PipelineVariant(stack, settings_for("pass f32", live=True), "pass live")
        for p in [*pipes.values(), live]:
            p.wait_ready()
        runs: dict[str, Callable[[], Run]] = {
            n: (lambda p=p, k=args.light_frames if n == "light" else args.frames: p.run(k))
            for n, p in pipes.items()
        }
        runs["relay"] = lambda: relay_run(args.frames)
        if imagezmq is not None:
            runs["imagezmq"] = lambda: imagezmq_run(args.frames)
        throughput = interleave(runs, args.warmup + args.repeats, skip=args.warmup)
        latency = interleave(
            {
                "pass live": lambda: live.run(args.live_frames, live=True, fps=args.fps),
                "relay live": lambda: relay_run(args.live_frames, fps=args.fps),
            },
            args.live_repeats,
        )
    table, med = throughput_table(throughput)
    lat_table, lat = latency_table(latency)
    print(f"\nlossless throughput, first frame sent -> last output received\n{table}")
    print(f"\nlive at {args.fps:g} fps, pipeline chunk 1, max_wait_ms 0; latency = arrival - t_ns")
    print(lat_table)
    print(verdicts(med, lat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
