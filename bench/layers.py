"""Per-frame cost of `MemoryConv3d` streamed in chunks, beside an offline conv and co.Conv3d.

A benchmark, never a test: it prints medians and ratios measured side by side in one run.
Run `python bench/layers.py --help`; `--quick` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from machine import cpu_line

from streamconv.layers import MemoryConv3d
from streamconv.layers.conv import causal_history, spatial_pads

try:  # Optional: only this benchmark uses it, so it is not a project dependency.
    import continual as co
except ImportError:
    co = None

DEFAULT_SHAPES = (
    "1-1-5x5x5@128x128",
    "1-1-5x5x5@320x240",
    "3-8-3x3x3@320x240",
    "1-4-9x7x7@160x120",
)
RTOL = 1e-5  # float32 max error relative to max |offline|; above it a row is not exact.


@dataclass(frozen=True)
class Shape:
    cin: int
    cout: int
    kernel: tuple[int, int, int]
    width: int
    height: int

    @classmethod
    def parse(cls, spec: str) -> Shape:
        """'CIN-COUT-KTxKHxKW@WxH', e.g. '3-8-3x3x3@320x240'."""
        try:
            layer, res = spec.split("@")
            cin, cout, kernel = layer.split("-")
            kt, kh, kw = (int(k) for k in kernel.split("x"))
            w, h = (int(v) for v in res.split("x"))
            return cls(int(cin), int(cout), (kt, kh, kw), w, h)
        except ValueError as e:
            msg = f"shape must look like 3-8-3x3x3@320x240 (CIN-COUT-KTxKHxKW@WxH), got {spec!r}"
            raise argparse.ArgumentTypeError(msg) from e

    @property
    def label(self) -> str:
        return f"{self.cin}->{self.cout} k{'x'.join(map(str, self.kernel))}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", action="append", type=Shape.parse, help="repeatable; see DEFAULT")
    p.add_argument("--frames", type=int, default=64, help="frames in the clip (default 64)")
    p.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="smoke run: 16 frames, 1 repeat")
    args = p.parse_args(argv)
    args.shape = args.shape or [Shape.parse(s) for s in DEFAULT_SHAPES]
    if args.quick:
        args.frames, args.repeats, args.warmup = 16, 1, 1
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def machine(device: torch.device) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    ci = co.__version__ if co is not None else "not installed"
    return (
        f"{cpu_line()}\n"
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, "
        f"gpu: {gpu}\ncontinual-inference: {ci}"
    )


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """One helper for every variant: seconds for one call, synchronised on CUDA."""

    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return run


def chunks(x: torch.Tensor, dt: int) -> list[torch.Tensor]:
    # Views made before timing, so that slicing costs the same in every variant.
    return [x[:, :, s : s + dt] for s in range(0, x.shape[2], dt)]


def make_co(layer: MemoryConv3d) -> torch.nn.Module | None:
    """co.Conv3d with the layer's weights, configured to give the layer's outputs.

    Its defaults (padding 0, temporal_fill 'zeros') delay the output by kt-1 frames; a
    temporal padding of kt-1 with 'replicate' fill makes it causal with first-frame fill.
    """
    kt, kh, kw = layer.kernel_size
    if co is None or kh % 2 == 0 or kw % 2 == 0:  # co pads symmetrically: odd kernels only
        return None
    c = co.Conv3d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        padding=(kt - 1, kh // 2, kw // 2),
        padding_mode=layer.padding_mode,
        temporal_fill="replicate",
        bias=False,
        device=layer.weight.device,
    )
    c.weight.copy_(layer.weight)
    return c.eval()


def co_run(c: torch.nn.Module, pieces: list[torch.Tensor]) -> torch.Tensor:
    c.clean_state()
    if pieces[0].shape[2] == 1:
        return torch.stack([c.forward_step(p[:, :, 0]) for p in pieces], dim=2)
    return torch.cat([c.forward_steps(p) for p in pieces], dim=2)


def stream_run(layer: MemoryConv3d, pieces: list[torch.Tensor]) -> torch.Tensor:
    layer.reset()
    return torch.cat([layer(p) for p in pieces], dim=2)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def bench_shape(shape: Shape, args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    layer = MemoryConv3d(shape.cin, shape.cout, shape.kernel, device=device).eval()
    x = torch.rand(1, shape.cin, args.frames, shape.height, shape.width, device=device)
    # The offline baseline is the bare F.conv3d: time fill and spatial padding happen here,
    # outside the clock, exactly as MemoryConv3d.conv would pad the whole clip.
    _, kh, kw = shape.kernel
    full = torch.cat([causal_history(x, layer.memory, layer.temporal_fill), x], dim=2)
    padded = F.pad(full, (*spatial_pads(kh, kw, 1, 1), 0, 0), mode=layer.padding_mode)
    weight = layer.weight.detach()
    cmod = make_co(layer)

    variants: dict[str, Callable[[], torch.Tensor]] = {"offline": lambda: F.conv3d(padded, weight)}
    for dt in args.chunks:
        pieces = chunks(x, dt)
        variants[f"stream{dt}"] = lambda p=pieces: stream_run(layer, p)
        if cmod is not None:
            variants[f"co{dt}"] = lambda p=pieces: co_run(cmod, p)

    ref = variants["offline"]()
    errs = {name: rel_err(fn(), ref) for name, fn in variants.items() if name != "offline"}
    print(f"{shape.label} @{shape.width}x{shape.height}: max rel error vs offline: ", end="")
    print(", ".join(f"{k} {v:.1e}" for k, v in errs.items()))

    clock, names = timer(device), list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.repeats):
        # Rotate the order every repeat so that drift on a shared machine hits all variants.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds = clock(variants[name])
            if r >= args.warmup:
                times[name].append(seconds * 1e3 / args.frames)

    med = {n: statistics.median(t) for n, t in times.items()}
    rows = []
    for dt in args.chunks:
        if errs[f"stream{dt}"] > RTOL:
            print(f"  chunk {dt}: streaming is not exact ({errs[f'stream{dt}']:.1e}); row dropped")
            continue
        s, o, c = med[f"stream{dt}"], med["offline"], med.get(f"co{dt}")
        rows.append({"shape": shape, "chunk": dt, "stream": s, "offline": o, "co": c})
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| shape | resolution | chunk | streaming ms/frame | offline ms/frame "
        "| streaming/offline | co.Conv3d ms/frame | co/streaming |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        sh, c = r["shape"], r["co"]
        co_cells = f"{c:.3f} | {c / r['stream']:.2f}" if c is not None else "skipped | -"
        lines.append(
            f"| {sh.label} | {sh.width}x{sh.height} | {r['chunk']} | {r['stream']:.3f} "
            f"| {r['offline']:.3f} | {r['stream'] / r['offline']:.2f} | {co_cells} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict], device: torch.device) -> str:
    out = ["targets:"]
    for r in (r for r in rows if r["chunk"] == 16):
        where = f"{r['shape'].label} @{r['shape'].width}x{r['shape'].height}"
        ratio = r["stream"] / r["offline"]
        out.append(
            f"  chunk 16 streaming/offline <= 1.10: {ratio:.2f} {where} "
            f"{'met' if ratio <= 1.10 else 'MISSED'}"
        )
        if r["co"] is not None:
            speed = r["co"] / r["stream"]
            verdict = (
                ("met" if speed >= 4 else "MISSED") if device.type == "cuda" else "CPU: report only"
            )
            out.append(f"  co/streaming >= 4 on GPU: {speed:.2f} {where} {verdict}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    print(machine(device))
    print(f"frames {args.frames}, warm-up {args.warmup}, repeats {args.repeats} (medians)")
    if co is None:
        print("continual-inference not installed: column skipped")
    rows = []
    with torch.inference_mode():
        for shape in args.shape:
            rows += bench_shape(shape, args, device)
    print()
    print(table(rows))
    print(
        "\nstreaming: MemoryConv3d called on each chunk (causal fill, spatial pad, F.conv3d).\n"
        "offline: one F.conv3d over the whole clip pre-filled and pre-padded (padding untimed).\n"
        "co.Conv3d: forward_step per frame at chunk 1, forward_steps per chunk otherwise; "
        "padding=(kt-1, kh//2, kw//2), temporal_fill='replicate' so that its outputs equal "
        "the layer's (checked above); its defaults (padding 0) would delay outputs by kt-1."
    )
    print(targets(rows, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
