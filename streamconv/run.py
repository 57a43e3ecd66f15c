"""`streamconv run`: capture, worker and a subscriber in one command on one machine.

The worker and the capture run as child processes (spawn context: forking after torch or
CUDA started is unsafe); this process subscribes, shows progress, writes a preview video per
layer and, for finite files, checks that the streamed outputs equal the offline pipeline.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamconv.capture import capture_main, derive_stream
from streamconv.client import Subscriber
from streamconv.config import CaptureSettings, Settings
from streamconv.errors import StartupError, StreamconvError
from streamconv.layers import Output
from streamconv.model import build_model, input_channels
from streamconv.monitor import Monitor, PreviewWriter
from streamconv.pixels import frame_to_chw
from streamconv.sources import open_source, write_sample_video

log = logging.getLogger(__name__)


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def worker_main(settings: Settings, level: int) -> None:
    """Child process entry: run a worker until SIGTERM."""
    from streamconv.worker import Worker

    _configure_logging(level)
    Worker(settings).run()


def resolve_sample(source: str, out: Path) -> str:
    """'sample' is the built-in clip: a synthetic pattern written to an .mp4 once."""
    if source != "sample":
        return source
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sample.mp4"
    if not path.exists():
        write_sample_video(path, frames=120, size=(160, 120), fps=30.0)
    return str(path)


def run_pipeline(
    settings: Settings, capture: CaptureSettings, out: Path, *, verify: bool = True
) -> int:
    level = logging.getLogger().getEffectiveLevel()
    capture = capture.model_copy(update={"source": resolve_sample(capture.source, out)})
    stream = capture.stream or derive_stream(capture.source)
    endpoints = {"input": free_endpoint(), "output": free_endpoint()}
    worker_settings = settings.worker.model_copy(update=endpoints)
    settings = settings.model_copy(update={"worker": worker_settings})
    capture = capture.model_copy(update={"connect": endpoints["input"], "stream": stream})
    layers = [spec.name for spec in settings.layers if spec.publish]
    spawn = multiprocessing.get_context("spawn")
    worker = spawn.Process(target=worker_main, args=(settings, level), name="worker")
    worker.start()
    monitor, preview = Monitor(), PreviewWriter(out)
    received: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    try:
        with Subscriber(endpoints["output"], stream=stream, timeout_s=60) as sub:
            _wait_ready(sub, endpoints["input"], worker)
            producer = spawn.Process(target=capture_main, args=(capture, level), name="capture")
            producer.start()
            ended: set[str] = set()
            while ended != set(layers):
                header, frame = sub.recv()
                if frame is None:
                    ended.add(header["layer"])
                    continue
                monitor.add(header)
                preview.add(header, frame)
                received[header["layer"]].append(frame)
                _progress(len(received[layers[-1]]))
            producer.join(30)
            gaps = sum(sub.gaps.values())
    finally:
        worker.terminate()  # SIGTERM: the worker finishes in-hand chunks and exits 0
        worker.join(15)
        if worker.is_alive():
            worker.kill()
    print(file=sys.stderr)
    print(monitor.table())
    print(f"subscriber gaps (outputs lost between worker and subscriber): {gaps}")
    for path in preview.close():
        print(f"preview: {path}")
    if verify and not capture.loop:
        return _verify(settings, capture, received)
    return 0


def _wait_ready(sub: Subscriber, endpoint: str, worker: Any, timeout_s: float = 120) -> None:
    """Wait for the worker to answer, failing fast if its process has died."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not worker.is_alive():
            msg = f"the worker process exited (code {worker.exitcode}) before it was ready"
            raise StartupError(msg)
        try:
            sub.wait_ready(endpoint, timeout_s=1.0)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def _progress(done: int) -> None:
    if sys.stderr.isatty():
        print(f"\rprocessed {done} frames", end="", file=sys.stderr, flush=True)


def _verify(settings: Settings, capture: CaptureSettings, received: dict[str, list[Any]]) -> int:
    """Offline: the whole decoded video through the pipeline in one pass, on the CPU."""
    source = open_source(
        capture.source, resize=capture.resize, gray=capture.gray, limit=capture.limit
    )
    if source.live:
        return 0
    channels = input_channels(settings.worker)
    frames = [frame_to_chw(f, settings.worker.color, channels) for f in source]
    source.close()
    model = build_model(settings, torch.device("cpu"))
    with torch.inference_mode():
        offline = model.run(np.stack(frames, axis=1)[None])
    if not isinstance(offline, Output):
        msg = "the pipeline must return every stage"
        raise StreamconvError(msg)
    worst = 0.0
    for name, outs in received.items():
        expected = offline[name][0].transpose(0, 1).numpy()
        if len(outs) != len(expected):
            msg = f"layer {name}: {len(outs)} frames streamed, {len(expected)} offline"
            raise StreamconvError(msg)
        got = np.stack(outs)
        err = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-30))
        worst = max(worst, err)
    ok = worst < 1e-5
    print(
        f"streamed == offline whole-video pipeline: max relative error {worst:.2e} "
        f"over {len(frames)} frames x {len(received)} layers ({'OK' if ok else 'MISMATCH'})"
    )
    return 0 if ok else 1
