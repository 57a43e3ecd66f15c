"""`streamconv subscribe`: print per-layer frames/s and latency; save previews or .npy files."""

from __future__ import annotations

import argparse
import time

from streamconv.client.monitor import Monitor, NpyWriter, PreviewWriter
from streamconv.client.subscriber import Subscriber

REPORT_EVERY_S = 2.0


def subscribe(args: argparse.Namespace) -> int:
    monitor = Monitor()
    preview = PreviewWriter(args.save) if args.save else None
    npy = NpyWriter(args.npy) if args.npy else None
    timeout = args.timeout if args.timeout > 0 else 3600.0 * 24 * 365
    received, last_report = 0, time.monotonic()
    with Subscriber(args.connect, stream=args.stream, layers=args.layer, timeout_s=timeout) as sub:
        try:
            while args.count is None or received < args.count:
                try:
                    header, frame = sub.recv()
                except TimeoutError:
                    break
                if frame is None:
                    print(f"eos: {header['stream']}/{header['layer']} after {header['seq']} frames")
                    continue
                received += 1
                monitor.add(header)
                if preview:
                    preview.add(header, frame)
                if npy:
                    npy.add(header, frame)
                if time.monotonic() - last_report > REPORT_EVERY_S:
                    print(monitor.table(), flush=True)
                    last_report = time.monotonic()
        except KeyboardInterrupt:
            pass
        if not received:
            print(f"no output received from {args.connect}")
        print(monitor.table())
        if sub.bad_messages:
            print(f"bad messages skipped: {sub.bad_messages}")
        if sum(sub.gaps.values()):
            print(f"lost outputs (seq gaps without discontinuity): {dict(sub.gaps)}")
    if preview:
        for path in preview.close():
            print(f"preview: {path}")
    return 0
