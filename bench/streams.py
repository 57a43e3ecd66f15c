"""Many streams at once: aggregate frames/s and latency, batched against unbatched.

A benchmark, never a test: medians of interleaved rounds, printed with the machine. It
drives the worker's engine directly (no sockets: the transport is bench/passthrough.py's
subject) the way the worker's loop does when it falls behind: each read takes one frame of
every stream, then the chunks that read filled run (`run_ready`), batched up to
`max_batch` streams per forward pass, or one pass per stream with `max_batch = 1`.
Latency is from a frame's submit to the end of the pass that returned it. With
`--device cuda` it also prints the host-to-device and device-to-host bytes per frame and
the time per stage (upload, forward, copy back; measured with a device sync after each,
in a separate profiled round).

    python bench/streams.py                      # CPU, 640x480, retina, 1/8/32 streams
    python bench/streams.py --quick              # smoke run
    python bench/streams.py --device cuda --size 1920x1080 --streams 1 8 32
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from machine import cpu_line

from streamconv.config import load_settings
from streamconv.model import DTYPES, build_model, configure_torch, input_channels
from streamconv.wire.protocol import InputMessage
from streamconv.worker.engine import ChunkResult, Engine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="retina")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="640x480", help="WxH")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--frames", type=int, default=32, help="frames per stream per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--output-dtype", default="float32", choices=["float32", "float16", "uint8"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--quick", action="store_true", help="smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.rounds, args.streams = 16, 1, [1, 4]
    return args


def frames_for(n_streams: int, w: int, h: int) -> list[np.ndarray]:
    """A few distinct gray uint8 frames per stream (made once, outside any clock)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(4 + n_streams)]


def run_once(args: argparse.Namespace, model: Any, n: int, max_batch: int,
             profile: bool = False) -> dict[str, Any]:  # fmt: skip
    settings = args.settings
    w = settings.worker
    device = torch.device(args.device)
    engine = Engine.build(model, device=device, dtype=DTYPES[args.dtype], chunk=w.chunk,
                    max_wait_s=w.max_wait_ms / 1000, color=w.color,
                    in_channels=input_channels(w), max_streams=max(64, n),
                    output_dtype=args.output_dtype, max_batch=max_batch)  # fmt: skip
    engine.batcher.profile = profile
    width, height = map(int, args.size.split("x"))
    pool = frames_for(n, width, height)
    submitted: dict[tuple[str, int], float] = {}
    latencies: list[float] = []
    start = time.perf_counter()
    for seq in range(args.frames):
        for s in range(n):
            msg = InputMessage("frame", f"s{s}", "x", seq, 0, pool[(seq + s) % len(pool)])
            submitted[(msg.stream, seq)] = time.perf_counter()
            engine.submit(msg, 0.0)
        done = time.perf_counter()
        for r in engine.run_ready():
            if isinstance(r, ChunkResult):
                done = time.perf_counter()
                latencies += [done - submitted[(r.stream, q)] for q in r.seqs]
    results = engine.flush_all()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    frames = n * args.frames
    outs = sum(len(r.seqs) for r in results if isinstance(r, ChunkResult))
    b = engine.batcher
    return {
        "fps": frames / elapsed,
        "p50": np.percentile(latencies, 50) * 1e3 if latencies else float("nan"),
        "p99": np.percentile(latencies, 99) * 1e3 if latencies else float("nan"),
        "passes": b.passes,
        "up": b.bytes_up / frames,
        "down": b.bytes_down / frames,
        "stages": {k: v * 1e3 / frames for k, v in b.stage_s.items()},
        "flushed": outs,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    worker = {"device": args.device, "dtype": args.dtype, "http": "off"}
    args.settings = load_settings(args.preset, {"worker": worker}, environ={})
    configure_torch(args.settings.worker)
    model = build_model(args.settings, torch.device(args.device))
    print(f"{cpu_line()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(torch.device(args.device))}")
    print(f"{args.preset} preset, {args.size} gray uint8 in, {args.dtype} model, "
          f"{args.output_dtype} out, chunk {args.settings.worker.chunk}, {args.frames} frames "
          f"per stream, {args.rounds} interleaved rounds (medians)\n")  # fmt: skip
    modes = {"batched": args.max_batch, "unbatched": 1}
    run_once(args, model, 1, 1)  # warm-up: kernels, factor caches, allocator
    rows = []
    for n in args.streams:
        got: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                got[mode].append(run_once(args, model, n, modes[mode]))
        med = {m: {k: statistics.median(x[k] for x in got[m]) for k in ("fps", "p50", "p99")}
               for m in modes}  # fmt: skip
        last = got["batched"][-1]
        rows.append((n, med, last))
    print(
        "| streams | batched frames/s | unbatched frames/s | batched/unbatched "
        "| p50 ms b/u | p99 ms b/u | passes b/u per round | up B/frame | down B/frame |"
    )
    print("|---:|---:|---:|---:|---|---|---|---:|---:|")
    for n, med, last in rows:
        b, u = med["batched"], med["unbatched"]
        passes_u = n * -(-args.frames // args.settings.worker.chunk)
        ratio = b["fps"] / u["fps"]
        print(
            f"| {n} | {b['fps']:.0f} | {u['fps']:.0f} | {ratio:.2f} | "
            f"{b['p50']:.0f} / {u['p50']:.0f} | {b['p99']:.0f} / {u['p99']:.0f} | "
            f"{last['passes']} / {passes_u} | {last['up']:.0f} | {last['down']:.0f} |"
        )
    print("\ntime per stage (ms per frame; a profiled batched round, device synced per stage):")
    for n in args.streams:
        prof = run_once(args, model, n, args.max_batch, profile=True)
        stages = ", ".join(f"{k} {v:.3f}" for k, v in prof["stages"].items())
        print(f"  {n} streams: {stages}")


if __name__ == "__main__":
    main()
