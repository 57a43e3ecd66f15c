"""Frames/s of the shipped presets on the CPU: the working tree beside a baseline commit.

A benchmark, never a test: it prints medians and ratios measured side by side in one run.
The baseline (default a9787a9, where issue 10 started) is exported with `git archive` into a
temporary folder; each tree's model runs in its own child process (this file, `--child`),
with PYTHONPATH set to that tree, so that `import streamconv` is that tree's code and the
harness is the same for both. Runs alternate between the trees, in a rotated order, so that
drift on a shared machine hits both. Run `python bench/presets.py --help`; `--quick` is a
smoke run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from machine import cpu_line

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("default", "retina")
BASELINE = "a9787a9"
WIDTH, HEIGHT = 640, 480
SEED = 0
RTOL = 1e-4  # max |current - baseline| / max |baseline|, per stage; above it: not the same
TARGET = 3.0  # issue 10: at least 3x the frames/s of the starting commit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=BASELINE, help=f"commit to compare with ({BASELINE})")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), help="default: all shipped")
    p.add_argument("--frames", type=int, default=64, help="frames in the clip (default 64)")
    p.add_argument("--repeats", type=int, default=7, help="child runs per tree (default 7)")
    p.add_argument("--passes", type=int, default=5, help="timed passes per child (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes per child (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (worker default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 frames, 2x2 passes")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: JSON job for one tree
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.repeats, args.passes, args.warmup = 32, 2, 2, 1
    return args


# --- child: one tree, every preset ---------------------------------------------------------


def make_clip(frames: int, height: int, width: int) -> torch.Tensor:
    """(1, 1, T, H, W) float32 in [0, 1]: a drifting grating, a moving square, fixed noise."""
    g = torch.Generator().manual_seed(SEED)
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    yy = torch.arange(height, dtype=torch.float32)[None, :, None]
    xx = torch.arange(width, dtype=torch.float32)[None, None, :]
    grating = 0.5 + 0.25 * torch.sin(2 * math.pi * (xx + 3 * t) / 64 + yy / 40)
    square = ((xx - 4 * t - 100).abs() < 40) & ((yy - 2 * t - 150).abs() < 40)
    noise = 0.05 * torch.rand(frames, height, width, generator=g)
    return (grating + 0.3 * square + noise).clamp(0, 1)[None, None]


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Times every preset on this process's `streamconv`; saves the last chunk's outputs."""
    # Only this tree's code and presets: an editable install of the checkout would supply what
    # the tree lacks (the presets, config/presets beside the package since issue 18).
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in f.__module__]
    import streamconv  # here, not at the top: PYTHONPATH picks which tree this is
    from streamconv.config.load import load_settings
    from streamconv.layers.base import Output
    from streamconv.model import DTYPES, build_model

    root, where = Path(job["root"]).resolve(), Path(streamconv.__file__).resolve()
    if not where.is_relative_to(root):
        msg = f"imported streamconv from {where}, expected under {root}: check PYTHONPATH"
        raise SystemExit(msg)
    torch.set_num_threads(job["threads"])
    clip = make_clip(job["frames"], HEIGHT, WIDTH)
    result: dict[str, Any] = {"file": str(where), "torch": torch.__version__, "presets": {}}
    for name in job["presets"]:
        settings = load_settings(name, {"worker": {"device": "cpu"}}, environ={})
        model = build_model(settings, torch.device("cpu"))
        dtype = DTYPES[settings.worker.dtype]
        dt = settings.worker.chunk
        pieces = [
            clip[:, :, s : s + dt].to(dtype).contiguous() for s in range(0, clip.shape[2], dt)
        ]
        if len(pieces) < 2:
            raise SystemExit(f"--frames must cover at least two chunks of {dt}")
        timed_frames = sum(p.shape[2] for p in pieces[1:])
        ms: list[float] = []
        with torch.inference_mode():
            for i in range(job["warmup"] + job["passes"]):
                # The first chunk (a fresh stream's fill) is untimed: the clock measures the
                # steady state a long stream runs in.
                out, state = model.step(pieces[0], None)
                start = time.perf_counter()
                for piece in pieces[1:]:
                    out, state = model.step(piece, state)
                if i >= job["warmup"]:
                    ms.append((time.perf_counter() - start) * 1e3 / timed_frames)
        stages = out.items() if isinstance(out, Output) else [("output", out)]
        if job["save"]:
            torch.save({k: v.float().clone() for k, v in stages}, f"{job['save']}-{name}.pt")
        result["presets"][name] = {"ms": ms, "chunk": dt, "stages": [k for k, _ in stages]}
    return result


# --- parent: both trees, interleaved -------------------------------------------------------


def git(*cmd: str) -> str:
    return subprocess.run(
        ["git", *cmd], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def export(rev: str, dest: Path) -> None:
    """The commit's streamconv/ (and config/presets/, where the presets live since issue 18)
    into `dest`, with no worktree metadata left in the repo."""
    paths = ["streamconv"]
    has_presets = subprocess.run(
        ["git", "cat-file", "-e", f"{rev}:config/presets"], cwd=ROOT, capture_output=True
    )
    if has_presets.returncode == 0:
        paths.append("config/presets")
    archive = subprocess.Popen(["git", "archive", rev, *paths], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {rev} failed")


def run_child(tree: Path, job: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCONV_")}
    env |= {
        "PYTHONPATH": str(tree),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": str(job["threads"]),
        "MKL_NUM_THREADS": str(job["threads"]),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    # cwd is the tree itself, so that nothing but that tree can hold a `streamconv` package.
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child for {tree} failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    if not Path(result["file"]).is_relative_to(tree.resolve()):
        raise SystemExit(f"child for {tree} imported {result['file']}")
    return result


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def compare(save: dict[str, str], presets: list[str]) -> dict[str, dict[str, float]]:
    """Per preset and stage: max relative error of the current tree's last chunk vs the
    baseline's (inf where a stage is missing from either or the shapes differ)."""
    errs: dict[str, dict[str, float]] = {}
    for name in presets:
        base = torch.load(f"{save['baseline']}-{name}.pt", weights_only=True)
        cur = torch.load(f"{save['current']}-{name}.pt", weights_only=True)
        errs[name] = {
            k: rel_err(cur[k], base[k]) if k in cur and cur[k].shape == base[k].shape else math.inf
            for k in base
        }
        errs[name] |= {k: math.inf for k in cur if k not in base}
    return errs


def describe_current() -> str:
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "streamconv")
    return f"working tree (HEAD {head}{', uncommitted changes in streamconv/' if dirty else ''})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    try:
        rev = git("rev-parse", "--verify", f"{args.baseline}^{{commit}}")
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"no commit {args.baseline!r}: {e.stderr.strip()}") from e
    print(cpu_line())
    print(f"torch {torch.__version__}, threads {args.threads}, device cpu")
    print(f"baseline: {args.baseline} ({rev[:12]}), exported with git archive")
    print(f"current: {describe_current()}")
    print(
        f"clip {WIDTH}x{HEIGHT} gray float32, {args.frames} frames in the preset's chunks; "
        f"{args.repeats} runs per tree x {args.passes} timed passes (+{args.warmup} warm-up)"
    )

    with tempfile.TemporaryDirectory(prefix="streamconv-bench-") as tmp:
        trees = {"baseline": Path(tmp) / "baseline", "current": ROOT}
        trees["baseline"].mkdir()
        export(rev, trees["baseline"])
        save = {tree: str(Path(tmp) / f"out-{tree}") for tree in trees}
        job = {k: getattr(args, k) for k in ("presets", "frames", "passes", "warmup", "threads")}
        # tree -> preset -> one median ms/frame per child run
        ms: dict[str, dict[str, list[float]]] = {t: {p: [] for p in args.presets} for t in trees}
        names = list(trees)
        started = time.perf_counter()
        for r in range(args.repeats):
            for tree in names[r % 2 :] + names[: r % 2]:
                run = dict(job, root=str(trees[tree]), save=save[tree] if r == 0 else "")
                result = run_child(trees[tree], run)
                for p, timing in result["presets"].items():
                    ms[tree][p].append(statistics.median(timing["ms"]))
                if r == 0:
                    print(f"{tree}: streamconv from {result['file']}")
        errs = compare(save, args.presets)
    print(f"({time.perf_counter() - started:.0f} s of runs)\n")

    same = True
    for p in args.presets:
        worst = max(errs[p].values())
        same &= worst <= RTOL
        cells = ", ".join(f"{k} {v:.1e}" for k, v in errs[p].items())
        verdict = "same" if worst <= RTOL else "DIFFERENT"
        print(f"{p}: last chunk, max rel error current vs baseline: {cells} ({verdict})")
    print()
    print(
        "| preset | baseline ms/frame | current ms/frame | baseline frames/s "
        "| current frames/s | current/baseline |\n|---|---:|---:|---:|---:|---:|"
    )
    ratios = {}
    for p in args.presets:
        b, c = statistics.median(ms["baseline"][p]), statistics.median(ms["current"][p])
        ratios[p] = b / c
        print(f"| {p} | {b:.2f} | {c:.2f} | {1e3 / b:.0f} | {1e3 / c:.0f} | {b / c:.2f} |")
    print(
        "\nms/frame: model.step on each chunk after the first (steady state), under "
        "inference_mode; medians over passes in a child, then over child runs."
    )
    print("spread (min-max of run medians, ms/frame):")
    for p in args.presets:
        spread = "; ".join(f"{t} {min(ms[t][p]):.2f}-{max(ms[t][p]):.2f}" for t in trees)
        print(f"  {p}: {spread}")
    print("targets:")
    for p, ratio in ratios.items():
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"  {p}: frames/s >= {TARGET:g}x baseline: {ratio:.2f}x {verdict}")
    if not same:
        print(f"outputs differ from the baseline by more than {RTOL:g}: the figures compare unlike")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
