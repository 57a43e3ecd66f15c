"""The pipelined worker (issue 21): the shipped presets end to end against the model alone,
and live latency, with the worker's three threads and with one (`pipeline = false`).

1. Frames/s: capture -> worker -> one subscriber on the preset's last layer, lossless, 640x480
   gray uint8 frames from memory, beside the preset's model alone stepping the same frames
   (already float32, chunked as the worker chunks them, from a fresh state) in a process of
   its own with the worker's torch threads. Target: end to end >= 0.9x the model alone.
2. Latency (arrival - the frame's t_ns) of a live capture at 30 frames/s, 1280x720 BGR, the
   retina preset as shipped: the pipelined worker, one thread, and the worker of a baseline
   commit (`--baseline`, default 005f375, before this work: exported with `git archive` and
   run as `python -m streamconv worker` on that tree), p50 and p99.

A benchmark, never a test: variants are interleaved in rotated order, medians and ratios
come from one run. `python bench/pipelined.py --help`; `--quick` is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from typing import Any

import pipeline_procs as procs
from machine import cpu_line
from pipeline_runs import RECV_TIMEOUT_S, PipelineVariant, Run, interleave

from streamconv.client.subscriber import Subscriber
from streamconv.config import load_settings

PRESETS = ("default", "retina")
TARGET = 0.9  # end to end / model alone
LIVE = (1280, 720, 3)
BASELINE = "005f375"  # the commit before issue 21's pipelined worker
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1200, help="frames per throughput run")
    p.add_argument("--live-frames", type=int, default=300, help="frames per live run (10 s)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument(
        "--baseline", default=BASELINE, help=f"commit for the latency (default {BASELINE})"
    )
    p.add_argument("--quick", action="store_true", help="smoke run, about a minute")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.live_frames, args.repeats, args.warmup = 200, 60, 1, 0
    return args


def settings_for(preset: str, pipeline: str, **worker: Any) -> Any:
    inp, out = procs.free_endpoint(), procs.free_endpoint()
    w = {"input": inp, "output": out, "http": "off", "device": "cpu", "pipeline": pipeline}
    return load_settings(preset, {"worker": w | worker}, environ={})


# --- the model alone, in a process of its own ----------------------------------------------
_MODELS: dict[str, Any] = {}


def model_fps(preset: str, n: int, colour: bool = False) -> float:
    """frames/s of the preset's model stepping n frames from a fresh state (pool process);
    `colour`: the uint8 frames' colour step (worker/pixels.py) inside the clock too."""
    import numpy as np
    import torch

    from streamconv.model import DTYPES, build_model, configure_torch
    from streamconv.worker.pixels import frame_to_chw

    settings = load_settings(preset, {"worker": {"device": "cpu"}}, environ={})
    w = settings.worker
    if preset not in _MODELS:
        configure_torch(w)
        _MODELS[preset] = build_model(settings, torch.device("cpu"))
    model = _MODELS[preset]
    raw = procs.bench_frames(n)

    def chunk_at(s: int) -> Any:
        frames = np.stack([frame_to_chw(f, w.color) for f in raw[s : s + w.chunk]])
        return torch.from_numpy(frames).transpose(0, 1)[None].to(DTYPES[w.dtype])

    chunks = [] if colour else [chunk_at(s) for s in range(0, n, w.chunk)]
    state = None
    with torch.inference_mode():
        start = time.perf_counter()
        for i, s in enumerate(range(0, n, w.chunk)):
            _out, state = model.step(chunk_at(s) if colour else chunks[i], state)
        return n / (time.perf_counter() - start)


def pct(values: list[int], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] / 1e6 if len(values) > 1 else 0.0


def throughput(args: argparse.Namespace, stack: ExitStack, pool: ProcessPoolExecutor) -> None:
    variants: dict[str, Any] = {}
    for preset in args.presets:
        for name, on in (("pipelined", "on"), ("one thread", "off")):
            v = PipelineVariant(stack, settings_for(preset, on), f"{preset} {name}")
            variants[f"{preset} {name}"] = v
    for v in variants.values():
        v.wait_ready()
    jobs: dict[str, Any] = {k: (lambda v=v: v.run(args.frames)) for k, v in variants.items()}
    for preset in args.presets:
        for label, colour in (("model alone", False), ("model + colour step", True)):
            jobs[f"{preset} {label}"] = lambda p=preset, c=colour: pool.submit(
                model_fps, p, args.frames, c
            ).result()
    runs = interleave(jobs, args.warmup + args.repeats, skip=args.warmup)
    fps = {k: [r.fps if isinstance(r, Run) else r for r in rs] for k, rs in runs.items()}
    med = {k: statistics.median(v) for k, v in fps.items()}
    lost = {k: sum(r.lost for r in rs if isinstance(r, Run)) for k, rs in runs.items()}
    print(f"\n1. frames/s, 640x480 gray, {args.frames} frames a run, medians of {args.repeats}")
    print("| preset | model alone | model + colour step | one thread (default) | pipelined "
          "| one thread / model | pipelined / model | pipelined / one thread | lost |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in args.presets:
        m, c = med[f"{p} model alone"], med[f"{p} model + colour step"]
        a, b = med[f"{p} pipelined"], med[f"{p} one thread"]
        print(f"| {p} | {m:.0f} | {c:.0f} | {b:.0f} | {a:.0f} | {b / m:.2f} | {a / m:.2f} "
              f"| {a / b:.2f} | {lost[f'{p} pipelined'] + lost[f'{p} one thread']} |")  # fmt: skip
    for p in args.presets:
        best = max(med[f"{p} pipelined"], med[f"{p} one thread"])
        ratio = best / med[f"{p} model alone"]
        print(f"  {p}: end to end (the faster schedule) / model alone {ratio:.2f} >= {TARGET} "
              f"{'met' if ratio >= TARGET else 'MISSED'}")  # fmt: skip
    for k, v in fps.items():
        print(f"  {k}: " + " ".join(f"{x:.0f}" for x in v))


class Popened:
    """A `streamconv worker` child of another tree, as wait_worker_ready sees a process."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def is_alive(self) -> bool:
        return self.proc.poll() is None


class BaselineVariant(PipelineVariant):
    """The worker of a `git archive` export of `rev`, with this tree's capture and subscriber
    (the protocol is the same), fed the same frames."""

    def __init__(self, stack: ExitStack, rev: str, preset: str) -> None:
        tree = stack.enter_context(tempfile.TemporaryDirectory(prefix="sc-base-"))
        archive = subprocess.Popen(["git", "archive", rev, "streamconv", "config"], cwd=ROOT,
                                   stdout=subprocess.PIPE)  # fmt: skip
        subprocess.run(["tar", "-x", "-C", tree], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit(f"git archive {rev} failed")
        self.input, out = procs.free_endpoint(), procs.free_endpoint()
        self.layer = load_settings(preset, environ={}).layers[-1].name
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCONV_")}
        cmd = [sys.executable, "-m", "streamconv", "worker", "--config", preset, "--input",
               self.input, "--output", out, "--http", "off", "--device", "cpu"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=tree, env=env | {"PYTHONPATH": tree},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        stack.callback(lambda: (proc.terminate(), proc.wait(30)))
        self.worker = Popened(proc)
        self.sub = stack.enter_context(
            Subscriber(out, stream=procs.STREAM, layers=[self.layer], timeout_s=RECV_TIMEOUT_S)
        )


def latency(args: argparse.Namespace, stack: ExitStack) -> None:
    variants: dict[str, PipelineVariant] = {
        name: PipelineVariant(stack, settings_for("retina", on), name)
        for name, on in (("pipelined", "on"), ("one thread", "off"))
    }
    variants[f"{args.baseline} (before)"] = BaselineVariant(stack, args.baseline, "retina")
    for v in variants.values():
        v.wait_ready()
    jobs = {k: (lambda v=v: v.run(args.live_frames, live=True, fps=30.0, size=LIVE))
            for k, v in variants.items()}  # fmt: skip
    runs = interleave(jobs, args.warmup + args.repeats, skip=args.warmup)
    print(f"\n2. live latency, retina, {LIVE[0]}x{LIVE[1]} BGR at 30 frames/s, "
          f"{args.live_frames} frames a run, {args.repeats} runs, latencies pooled")  # fmt: skip
    print("| worker | p50 ms | p99 ms | received/sent |")
    print("|---|---:|---:|---:|")
    for k, rs in runs.items():
        lat = [x for r in rs for x in r.latencies_ns]
        got, sent = sum(r.received for r in rs), sum(r.sent for r in rs)
        print(f"| {k} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | {got}/{sent} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(cpu_line())
    print(f"python {sys.version.split()[0]}; worker threads: the presets' (1 torch thread)")
    with ExitStack() as stack:
        if not args.skip_throughput:
            pool = stack.enter_context(
                ProcessPoolExecutor(1, mp_context=procs.SPAWN)  # the model alone, kept warm
            )
            throughput(args, stack, pool)
    if not args.skip_latency:
        with ExitStack() as stack:
            latency(args, stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
