"""Pass-through against the raw two-hop Python floor, over tcp:// and ipc://.

streamconv's identity pipeline (capture -> worker -> subscriber, float32 out; bench/pipeline.py's
'pass f32') beside the least any three-process Python relay of the same frames pays: a sender
PUSHes uint8 frames, a middle process divides them by 255 into float32 and PUBlishes them, a
SUB receives every one (bench/floor.py). 640x480 gray and 1280x720 BGR (3 channels kept),
lossless, every process real, every socket real. frames/s: first to last frame received.

A benchmark, never a test: variants are interleaved, the order rotated every repeat, and the
medians and ratios come from one run. Run `python bench/passthrough.py --help`; `--quick` is a
smoke run.
"""

from __future__ import annotations

import argparse
import platform
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path
from typing import Any

import floor
import numpy as np
import pipeline_procs as procs
import zmq
from floor import RECV_TIMEOUT_S, FloorVariant, Run
from machine import cpu_line
from pipeline_runs import interleave

from streamconv.client.subscriber import Subscriber
from streamconv.config import load_settings

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "bench"
FORMATS = {"640x480 gray": (640, 480, 1), "1280x720 BGR": (1280, 720, 3)}  # (W, H, C)
TARGETS = {"640x480 gray": 1.0, "1280x720 BGR": 0.9}  # streamconv / floor, from the issue
COLOR: dict[int, dict[str, Any]] = {1: {"color": "gray"}, 3: {"color": "as-is", "in_channels": 3}}
TRANSPORTS = ("tcp", "ipc")
Size = tuple[int, int, int]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1500, help="frames per 640x480 gray run")
    p.add_argument("--bgr-frames", type=int, default=300, help="frames per 1280x720 BGR run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    p.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    p.add_argument("--pipelined", action="store_true",
                   help="also the worker as three threads ([worker] pipeline = on)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run, about 10-20 s")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.bgr_frames, args.repeats, args.warmup = 300, 60, 1, 0
    return args


class StreamconvVariant:
    """A `streamconv worker` process (kept up across repeats) and this process's Subscriber."""

    def __init__(
        self, stack: ExitStack, inp: str, out: str, size: Size, pipeline: str = "auto"
    ) -> None:
        worker = {"input": inp, "output": out, "http": "off", "output_dtype": "float32",
                  "pipeline": pipeline}  # fmt: skip
        settings = load_settings(
            CONFIGS / "passthrough.toml", {"worker": worker | COLOR[size[2]]}, environ={}
        )
        self.input, self.output, self.size = inp, out, size
        self.threads = settings.worker.threads
        self.worker = stack.enter_context(procs.child(procs.worker_entry, settings, name="worker"))
        self.sub = stack.enter_context(
            Subscriber(
                out,
                stream=floor.STREAM,
                layers=[settings.layers[-1].name],
                timeout_s=RECV_TIMEOUT_S,
            )
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Probes through the worker until one comes back (torch import takes seconds)."""
        procs.wait_worker_ready(self.worker, self.sub, self.input, timeout_s)

    def run(self, n: int) -> Run:
        out = Run()
        args = (self.input, self.output, n, *self.size)
        with procs.child(floor.capture_entry, *args, name="capture") as cap:
            while True:
                header, frame = self.sub.recv()
                if frame is None:  # eos: its seq is the number of frames the capture sent
                    out.sent = header["seq"]
                    break
                out.add(frame)
            cap.join(RECV_TIMEOUT_S)
        return out


def correct(run: Run, size: Size, chw: bool) -> bool:
    """The first output equals frame 0 / 255 in float32: both did the same work."""
    w, h, c = size
    want = floor.expected(w, h, c)
    if chw:  # streamconv's outputs are (C, H, W); the floor keeps the frame's (H, W[, C])
        want = want.reshape(h, w, c).transpose(2, 0, 1)
    return run.first is not None and np.array_equal(run.first, want)


def runner(variant: StreamconvVariant | FloorVariant, n: int) -> Callable[[], Run]:
    return lambda: variant.run(n)


def machine(threads: int) -> str:
    return (
        f"{cpu_line()}\npython {platform.python_version()}, pyzmq {zmq.__version__}, libzmq "
        f"{zmq.zmq_version()}, numpy {np.__version__}, torch {version('torch')} "
        f"(worker threads {threads})"
    )


def report(runs: dict[str, list[Run]], ok: dict[str, bool], transports: list[str]) -> str:
    med = {k: statistics.median(r.fps for r in rs) for k, rs in runs.items()}
    lines = [
        "| format | transport | streamconv frames/s | min-max | MB/s out | floor frames/s "
        "| min-max | streamconv/floor | lost (sc/floor) | outputs = frame/255 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts, ipc = ["targets (issue): streamconv/floor"], ["ipc:// / tcp:// (same variant)"]
    for fmt, (w, h, c) in FORMATS.items():
        for t in transports:
            sc, fl = f"{fmt} {t} streamconv", f"{fmt} {t} floor"
            lo = {k: [r.fps for r in runs[k]] for k in (sc, fl)}
            ratio = med[sc] / med[fl]
            lost = f"{sum(r.lost for r in runs[sc])}/{sum(r.lost for r in runs[fl])}"
            lines.append(
                f"| {fmt} | {t} | {med[sc]:.0f} | {min(lo[sc]):.0f}-{max(lo[sc]):.0f} "
                f"| {med[sc] * w * h * c * 4 / 1e6:.0f} | {med[fl]:.0f} "
                f"| {min(lo[fl]):.0f}-{max(lo[fl]):.0f} | {ratio:.2f} | {lost} "
                f"| {'yes' if ok[sc] and ok[fl] else 'NO'} |"
            )
            met = "met" if ratio >= TARGETS[fmt] else "MISSED"
            verdicts.append(f"  {fmt} {t}: {ratio:.2f} >= {TARGETS[fmt]:.1f} {met}")
        if set(TRANSPORTS) <= set(transports):
            gain = {
                v: med[f"{fmt} ipc {v}"] / med[f"{fmt} tcp {v}"] for v in ("streamconv", "floor")
            }
            ipc.append(f"  {fmt}: streamconv {gain['streamconv']:.2f}x, floor {gain['floor']:.2f}x")
    serial = ["pipeline = on / the default (auto: one thread on a CPU), same run"]
    for fmt in FORMATS:
        for t in transports:
            three = f"{fmt} {t} pipelined"
            if three in med:
                default, fl = med[f"{fmt} {t} streamconv"], med[f"{fmt} {t} floor"]
                line = f"  {fmt} {t}: {med[three] / default:.2f} ({med[three]:.0f} frames/s, "
                serial.append(line + f"{med[three] / fl:.2f} of the floor)")
    extra = [*(ipc if len(ipc) > 1 else []), *(serial if len(serial) > 1 else [])]
    return "\n".join([*lines, "", *verdicts, *extra])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every child is stopped
    counts = {"640x480 gray": args.frames, "1280x720 BGR": args.bgr_frames}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sc-bench-")))
        started: dict[str, StreamconvVariant | FloorVariant] = {}
        n_of: dict[str, int] = {}
        for i, (fmt, size) in enumerate(FORMATS.items()):
            for t in args.transports:
                for kind in ("streamconv", "floor", *(["pipelined"] if args.pipelined else [])):
                    if t == "tcp":
                        inp, out = procs.free_endpoint(), procs.free_endpoint()
                    else:
                        folder = f"ipc://{tmp}/{i}-{kind.replace(' ', '-')}"
                        inp, out = f"{folder}-in", f"{folder}-out"
                    if kind == "floor":
                        started[f"{fmt} {t} {kind}"] = FloorVariant(stack, inp, out, size)
                    else:
                        on = "on" if kind == "pipelined" else "auto"
                        started[f"{fmt} {t} {kind}"] = StreamconvVariant(stack, inp, out, size, on)
                    n_of[f"{fmt} {t} {kind}"] = counts[fmt]
        threads = next(v.threads for v in started.values() if isinstance(v, StreamconvVariant))
        print(machine(threads))
        print(
            f"lossless, uint8 frames from memory: {args.frames} per 640x480 gray run, "
            f"{args.bgr_frames} per 1280x720 BGR run; {args.warmup} warm-up + {args.repeats} "
            f"repeats (medians); streamconv: config/bench/passthrough.toml, float32 out"
        )
        for v in started.values():
            v.wait_ready()
        variants = {k: runner(v, n_of[k]) for k, v in started.items()}
        runs = interleave(variants, args.warmup + args.repeats, skip=args.warmup)
    ok = {
        k: all(correct(r, started[k].size, isinstance(started[k], StreamconvVariant)) for r in rs)
        for k, rs in runs.items()
    }
    print("\nframes/s, first to last frame received by the subscriber")
    print(report(runs, ok, args.transports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
