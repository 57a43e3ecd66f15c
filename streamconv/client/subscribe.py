"""`streamconv subscribe`: print per-layer frames/s and latency; save previews or .npy files.

It runs until SIGINT or SIGTERM (both end it cleanly: files finalised, summary printed, exit 0),
until `--timeout` idle seconds, until `--count` outputs of every layer, or, with `--stream`,
until that stream's eos has arrived on every layer.

Its summary counts every output missed (client/losses.py). With `--stream` it exits with
LOST_EXIT when that stream missed outputs or did not end before `--timeout` (`--allow-loss`:
exit 0 all the same, e.g. for a live camera).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterable

from streamconv.client.sinks import Monitor, Sinks, open_sinks
from streamconv.client.subscriber import Subscriber
from streamconv.config import SubscribeSettings
from streamconv.signals import on_stop
from streamconv.wire.shards import parse_shards

REPORT_EVERY_S = 2.0
POLL_S = 0.2  # how soon a stop signal is noticed
LOST_EXIT = 4  # the followed stream lost outputs, or did not end in time


def subscribe(
    settings: SubscribeSettings, stop: threading.Event | None = None, expect: Iterable[str] = ()
) -> int:
    """Run the subscriber `settings` describe; `stop` ends it from another thread. The first
    table waits for every layer in `expect` (or REPORT_EVERY_S after the first output)."""
    stop = threading.Event() if stop is None else stop
    restore = on_stop(lambda signum: stop.set())  # SIGINT, SIGTERM
    try:
        return _run(settings, stop, set(expect))
    finally:
        restore()


def _run(args: SubscribeSettings, stop: threading.Event, expect: set[str]) -> int:
    monitor = Monitor()
    files = {"preview": args.save, "npy": args.npy, "record": args.record}
    sinks = Sinks({"monitor": monitor, **open_sinks(files)})
    idle_s = args.timeout_s if args.timeout_s > 0 else math.inf  # 0: no limit
    counts: Counter[tuple[str, str]] = Counter()  # outputs taken, per (stream, layer)
    endpoints = parse_shards(args.endpoints)
    # At once: a subscriber of a worker that is not there yet would otherwise print nothing.
    which = f"stream {args.stream!r}" if args.stream else "every stream"
    layers = f", layers {', '.join(args.layers)}" if args.layers else ""
    print(f"subscribing to {which}{layers} on {', '.join(endpoints)}", flush=True)
    first_at: float | None = None  # when the first output came
    try:
        writes = bool(args.save or args.npy or args.record) and not args.shm
        lossless = args.lossless if args.lossless is not None else writes
        inputs = parse_shards(args.inputs) if args.inputs else None
        keys = args.connect.client_keys()
        with Subscriber(endpoints, stream=args.stream, layers=args.layers, lossless=lossless,
                        inputs=inputs, shm=args.shm, **keys) as sub:  # fmt: skip
            last_message = time.monotonic()
            last_report: float | None = None
            while not stop.is_set() and not _enough(counts, args.count, args.layers):
                got = sub.poll(POLL_S)
                now = time.monotonic()
                if got is None:
                    if now - last_message >= idle_s:
                        break
                    continue
                last_message = now
                header, frame = got
                if frame is None:
                    print(f"eos: {header['stream']}/{header['layer']} after {header['seq']} frames")
                    if sub.ended:  # only with --stream: every layer of it has ended
                        break
                    continue
                key = (header["stream"], header["layer"])
                if args.count is not None and counts[key] >= args.count:
                    continue  # this layer has its frames; others are still coming
                counts[key] += 1
                sinks.add(header, frame)
                first_at = first_at or now
                if _table_due(counts, expect, first_at, last_report, now):
                    print(monitor.table(), flush=True)
                    last_report = now
        _summary(sub, monitor, endpoints if not counts else None)
        return _verdict(sub, args, timed_out=not stop.is_set() and not sub.ended and
                        not _enough(counts, args.count, args.layers))  # fmt: skip
    finally:  # an mp4 that is not released does not play
        for line in sinks.close():
            print(line)


def _summary(sub: Subscriber, monitor: Monitor, silent: list[str] | None) -> None:
    """The closing table, and what was skipped or lost; `silent`: no output came from these."""
    if silent is not None:
        print(f"no output received from {', '.join(silent)}")
    print(monitor.table())
    if sub.bad_messages:
        print(f"bad messages skipped: {sub.bad_messages}")
    for line in sub.losses.report():
        print(f"lost: {line}")
    if sub.duplicates:
        print(f"outputs recomputed after a worker restart, already received: {sub.duplicates}")


def _verdict(sub: Subscriber, args: SubscribeSettings, timed_out: bool) -> int:
    """LOST_EXIT if the followed stream lost outputs or never ended; 0 otherwise."""
    if args.stream is None:
        return 0
    missed = sub.losses.missed(args.stream)
    if not missed and not timed_out:
        return 0
    why = f"{missed} outputs lost" if missed else "it did not end"
    if args.allow_loss:
        print(f"stream {args.stream}: {why} (allowed by --allow-loss)")
        return 0
    print(f"stream {args.stream}: {why}; exit code {LOST_EXIT} (--allow-loss to accept it)")
    return LOST_EXIT


def _table_due(
    counts: Counter[tuple[str, str]],
    expect: set[str],
    first_at: float,
    last_report: float | None,
    now: float,
) -> bool:
    """Every REPORT_EVERY_S; the first once every expected layer has reported (a table of one
    layer's first frame says little), or REPORT_EVERY_S after the first output."""
    if last_report is not None:
        return now - last_report > REPORT_EVERY_S
    ready = bool(expect) and expect <= {layer for _, layer in counts}
    return ready or now - first_at >= REPORT_EVERY_S


def _enough(counts: Counter[tuple[str, str]], n: int | None, layers: Iterable[str] | None) -> bool:
    """`n` outputs of every layer seen (and of every layer asked for)."""
    if n is None:
        return False
    if n <= 0:
        return True
    seen = {layer for _, layer in counts}
    return bool(counts) and set(layers or ()) <= seen and min(counts.values()) >= n
