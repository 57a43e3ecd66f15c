"""argv -> settings -> role.run(). The only place that exits: 0 ok, 1 runtime, 2 usage or
config, 3 startup (e.g. a port already in use)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from streamconv.config import capture_settings, load_settings
from streamconv.errors import ConfigError, SourceError, StartupError, StreamconvError
from streamconv.logs import configure as configure_logging

log = logging.getLogger("streamconv")
DEFAULT_CONFIG = "default"  # a preset name or a file


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        msg = f"size must look like 320x240, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from e
    return w, h


def _capture_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="video file, webcam index (0), URL, image folder/glob, "
        "'synthetic[:WxH[:FRAMES]]' or 'sample'",
    )
    p.add_argument("--stream", help="stream id (default: from the source name)")
    p.add_argument(
        "--mode",
        choices=["auto", "lossless", "live"],
        default="auto",
        help="lossless waits for the worker; live drops (and counts) frames",
    )
    p.add_argument("--resize", type=_size, help="resize frames to WxH")
    p.add_argument("--gray", action="store_true", help="convert to gray before sending")
    p.add_argument("--limit", type=int, help="stop after this many frames")
    p.add_argument("--loop", action="store_true", help="replay a file or folder forever")
    p.add_argument("--realtime", action="store_true", help="pace frames at the source fps")
    p.add_argument("--queue", type=int, help="frames queued before wait/drop (8 lossless, 2 live)")


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help="TOML config file, or a preset: default, retina"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override [worker] device")
    p.add_argument("--chunk", type=int, help="override [worker] chunk (frames per pass)")
    p.add_argument("--max-wait-ms", type=float, help="override [worker] max_wait_ms")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="streamconv", description=__doc__)
    root.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = root.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run the worker: PULL frames, PUB layer outputs")
    _worker_args(w)
    w.add_argument("--input", help="override [worker] input endpoint (PULL, bind)")
    w.add_argument("--output", help="override [worker] output endpoint (PUB, bind)")

    c = sub.add_parser("capture", help="read a source and push its frames to a worker")
    _capture_args(c)
    c.add_argument("--connect", default="tcp://127.0.0.1:5555", help="worker input endpoint")

    s = sub.add_parser("subscribe", help="print per-layer frames/s and latency; save outputs")
    s.add_argument("--connect", default="tcp://127.0.0.1:5556", help="worker output endpoint")
    s.add_argument("--stream", help="only this stream")
    s.add_argument("--layer", action="append", help="only this layer (repeatable)")
    s.add_argument("--save", type=Path, help="write a preview .mp4 per layer into this folder")
    s.add_argument("--npy", type=Path, help="write every output frame as .npy into this folder")
    s.add_argument("--count", type=int, help="stop after this many output messages")
    s.add_argument(
        "--timeout", type=float, default=0, help="stop after this many idle s (0: never)"
    )

    r = sub.add_parser("run", help="capture + worker + subscriber in one command")
    _capture_args(r)
    _worker_args(r)
    r.add_argument("--out", type=Path, default=Path("out"), help="folder for previews")
    r.add_argument("--no-verify", action="store_true", help="skip the offline comparison")
    return root


def _worker_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("device", "chunk", "max_wait_ms", "input", "output")
    worker = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    return {"worker": worker} if worker else {}


def _capture(args: argparse.Namespace, connect: str) -> Any:
    return capture_settings(
        source=args.source, stream=args.stream, connect=connect, mode=args.mode,
        resize=args.resize, gray=args.gray, limit=args.limit, loop=args.loop,
        realtime=args.realtime, queue=args.queue,
    )  # fmt: skip


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "worker":
        from streamconv.worker.role import Worker

        Worker(load_settings(args.config, _worker_overrides(args))).run()
        return 0
    if args.command == "capture":
        from streamconv.capture.role import Capture, capture_kwargs

        settings = _capture(args, args.connect)
        stats = Capture(**capture_kwargs(settings, progress=True)).run()
        log.info("capture done: %d sent, %d dropped", stats.sent, stats.dropped)
        return 0
    if args.command == "subscribe":
        from streamconv.client.subscribe import subscribe

        return subscribe(args)
    from streamconv.run import run_pipeline

    settings = load_settings(args.config, _worker_overrides(args))
    return run_pipeline(
        settings, _capture(args, "tcp://127.0.0.1:5555"), args.out, verify=not args.no_verify
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return dispatch(args)
    except (ConfigError, SourceError) as e:
        print(f"streamconv: {e}", file=sys.stderr)
        return 2
    except StartupError as e:
        print(f"streamconv: {e}", file=sys.stderr)
        return 3
    except StreamconvError as e:
        print(f"streamconv: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
