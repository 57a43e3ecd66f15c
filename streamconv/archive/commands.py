"""`streamconv archive ls DIR` and `streamconv replay DIR --stream ID ...`."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from pathlib import Path

from streamconv.archive.format import Segment, partial, segments
from streamconv.config import Settings
from streamconv.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

AUTO_MAX = 128  # frames --warmup auto sends at most (check.HORIZON: how far it looks)


def when(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / 1e9, UTC).isoformat(timespec="milliseconds")


def ns(text: str) -> int:
    """ISO 8601 time (UTC unless it says otherwise) -> ns since the epoch."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError as e:
        msg = f"{text!r} is not an ISO 8601 time (e.g. 2026-12-06T14:02:00)"
        raise ConfigError(msg) from e
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1e9)


def ls(root: Path) -> int:
    """Print every stream and session the archive holds; exit 2 if it is no archive."""
    if not root.is_dir():
        raise SourceError(f"no archive at {root}")
    found = segments(root)
    print(f"{'stream':<16} {'session':<10} {'seqs':>15} {'frames':>7} {'from (UTC)':<24} "
          f"{'to (UTC)':<24} {'bytes':>12} {'segments':>8}")  # fmt: skip
    groups: dict[tuple[str, str], list[Segment]] = {}
    for s in found:  # by stream, then time: segments() sorts them so
        groups.setdefault((s.stream, s.session), []).append(s)
    for (stream, session), mine in groups.items():
        seqs = f"{min(s.first_seq for s in mine)}..{max(s.last_seq for s in mine)}"
        print(f"{stream:<16} {session[:8]:<10} {seqs:>15} {sum(s.frames for s in mine):>7} "
              f"{when(min(s.first_t_ns for s in mine)):<24} "
              f"{when(max(s.last_t_ns for s in mine)):<24} "
              f"{sum(s.nbytes for s in mine):>12} {len(mine):>8}{_lossy(mine)}")  # fmt: skip
    cut = partial(root)
    if cut:
        print(f"{len(cut)} partial segment(s), cut while open (a crash): not listed, not "
              f"replayed: {', '.join(str(p.relative_to(root)) for p in cut)}")  # fmt: skip
    return 0


def _lossy(mine: list[Segment]) -> str:
    codecs = sorted({s.codec for s in mine if s.lossy})
    return f"  lossy ({', '.join(codecs)}): a replay is not exact" if codecs else ""


def warmup_frames(text: str, settings: Settings) -> int:
    """--warmup FRAMES, or `auto`: how far back the model in `settings` remembers."""
    if text != "auto":
        try:
            frames = int(text)
        except ValueError as e:
            raise ConfigError(f"--warmup takes a frame count or 'auto', got {text!r}") from e
        if frames < 0:
            raise ConfigError(f"--warmup must be >= 0 frames, got {frames}")
        return frames
    import torch

    from streamconv.model import build_model, input_channels
    from streamconv.worker.check import describe

    model = build_model(settings, torch.device("cpu"))
    reach = [info.memory for info in describe(model, input_channels(settings.worker))]
    if any(r.startswith(">") for r in reach):
        print(f"--warmup auto: a layer remembers more than {AUTO_MAX - 1} frames (a recursive "
              f"filter): {AUTO_MAX} frames of warm-up; the first outputs of the interval may "
              "differ from the live ones by what it still remembered beyond them")  # fmt: skip
        return AUTO_MAX
    frames = max((int(r) for r in reach), default=0)
    print(f"--warmup auto: the model remembers {frames} frames (impulse response above 1e-6 "
          f"of its peak): {frames} frames of warm-up")  # fmt: skip
    return frames


def replay(args: argparse.Namespace, settings: Settings) -> int:
    """Send the interval (and its warm-up) as a new stream, lossless, with the original
    capture times; prints how the new seqs map to the recorded ones."""
    from streamconv.capture.role import Capture
    from streamconv.capture.sources.archive import ArchiveSource, choose

    warmup = warmup_frames(args.warmup, settings)
    if not args.archive.is_dir():
        raise SourceError(f"no archive at {args.archive}")
    if args.stream is None:
        streams = sorted({s.stream for s in segments(args.archive)})
        if len(streams) != 1:
            held = ", ".join(streams) or "none"
            raise ConfigError(f"{args.archive} holds streams {held}: name one with --stream")
        args.stream = streams[0]
    found = segments(args.archive, args.stream)
    if not found:
        raise SourceError(f"{args.archive}: no recorded segment of stream {args.stream!r}")
    interval = choose(found, args.session, args.from_seq, args.to_seq,
                      ns(args.from_time) if args.from_time else None,
                      ns(args.to_time) if args.to_time else None, warmup)  # fmt: skip
    recorded = next((s.fps for s in found if s.fps), None)
    fps = recorded * args.speed if args.speed and recorded else None
    source = ArchiveSource(args.archive, args.stream, interval, fps=fps)
    lossy = _lossy([s for s in found if s.session == interval.session])
    if lossy:
        print(f"replay:{lossy}: the frames were kept as JPEG, so the outputs only "
              "approximate the live ones")  # fmt: skip
    name = args.as_stream or f"{args.stream}-replay"
    capture = settings.capture.model_copy(update={  # the frames as recorded: no source options
        "source": None, "stream": name, "mode": "lossless", "resize": None, "gray": False,
        "limit": None, "loop": False, "realtime": bool(args.realtime or args.speed)})  # fmt: skip
    print(f"replay of {args.stream} session {interval.session[:8]}, recorded seqs "
          f"{interval.first}..{interval.end}, as stream {name}: its seq k is recorded seq "
          f"{interval.first} + k; the interval asked for starts at its seq {interval.warmup} "
          f"(after {interval.warmup} warm-up frames)")  # fmt: skip
    stats = Capture(capture, source=source).run()
    print(f"replay: sent {stats.sent} frames")
    return 0
