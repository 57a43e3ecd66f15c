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

from streamconv.capture.role import capture_main, derive_stream
from streamconv.capture.sources import open_source, sample_clip
from streamconv.client.monitor import Monitor, PreviewWriter
from streamconv.client.subscriber import Subscriber
from streamconv.config import CaptureSettings, Settings
from streamconv.errors import StartupError, StreamconvError
from streamconv.layers import Output
from streamconv.logs import configure as configure_logging
from streamconv.model import build_model, input_channels
from streamconv.worker.pixels import frame_to_chw

log = logging.getLogger(__name__)

IDLE_AFTER_CAPTURE_S = 30.0  # outputs still missing this long after the capture ended
VERIFY_MAX_BYTES = 2**30  # outputs kept for the offline comparison, at most
# Relative to the largest offline value: float32 is exact to rounding; float16 rounds to
# ~1e-3; uint8 to half a step of each frame's range (at most 1/255 of the largest value).
VERIFY_TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "uint8": 1 / 255 + 1e-5}


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def worker_main(settings: Settings, level: int) -> None:
    """Child process entry: run a worker until SIGTERM."""
    from streamconv.worker.role import Worker

    configure_logging(level)
    Worker(settings).run()


def resolve_sample(source: str, out: Path) -> str:
    """'sample' is the built-in clip, written into the output folder for the user to see."""
    return str(sample_clip(out / "sample.mp4")) if source == "sample" else source


def run_pipeline(
    settings: Settings, capture: CaptureSettings, out: Path, *, verify: bool = True
) -> int:
    level = logging.getLogger().getEffectiveLevel()
    stream = capture.stream or derive_stream(capture.source)
    capture = capture.model_copy(update={"source": resolve_sample(capture.source, out)})
    # Open the source here first: a bad spec is a clear error before any process starts.
    open_source(capture.source, resize=capture.resize, gray=capture.gray).close()
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
    producer = spawn.Process(target=capture_main, args=(capture, level), name="capture")
    try:
        with Subscriber(endpoints["output"], stream=stream, timeout_s=60) as sub:
            _wait_ready(sub, endpoints["input"], worker)
            producer.start()
            ended: set[str] = set()
            last_output = time.monotonic()
            done = kept = 0
            while ended != set(layers):
                try:
                    header, frame = sub.recv(timeout_s=1.0)
                except TimeoutError:
                    _check_children(worker, producer, time.monotonic() - last_output)
                    continue
                last_output = time.monotonic()
                if frame is None:
                    ended.add(header["layer"])
                    continue
                monitor.add(header)
                preview.add(header, frame)
                done += header["layer"] == layers[-1]
                _progress(done)
                kept += frame.nbytes
                if kept <= VERIFY_MAX_BYTES:
                    received[header["layer"]].append(frame)
                elif any(received.values()):  # too much to verify: free what was kept
                    received = {name: [] for name in layers}
            producer.join(30)
            gaps = sum(sub.gaps.values())
    finally:
        _stop(producer, worker)
    print(file=sys.stderr)
    print(monitor.table())
    print(f"subscriber gaps (outputs lost between worker and subscriber): {gaps}")
    for path in preview.close():
        print(f"preview: {path}")
    if not verify or capture.loop:
        return 0
    if gaps or kept > VERIFY_MAX_BYTES:
        why = f"{gaps} outputs were lost on the way" if gaps else "the outputs exceed 1 GiB"
        print(f"offline comparison skipped: {why}")
        return 0
    return _verify(settings, capture, received)


def _check_children(worker: Any, producer: Any, idle_s: float) -> None:
    """Fail, naming the culprit, when a child died or outputs stopped coming."""
    if not worker.is_alive():
        msg = f"the worker process exited (code {worker.exitcode}); see its log above"
        raise StreamconvError(msg)
    if producer.exitcode not in (None, 0):
        msg = f"the capture process failed (code {producer.exitcode}); see its log above"
        raise StreamconvError(msg)
    if producer.exitcode == 0 and idle_s > IDLE_AFTER_CAPTURE_S:
        msg = f"no output for {idle_s:.0f} s after the capture ended"
        raise StreamconvError(msg)


def _stop(producer: Any, worker: Any) -> None:
    """SIGTERM both children (the worker finishes in-hand chunks), then kill stragglers."""
    for proc in (producer, worker):
        if proc.pid is not None and proc.is_alive():
            proc.terminate()
    for proc in (producer, worker):
        if proc.pid is not None:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


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
    ok = worst < VERIFY_TOLERANCE[settings.worker.output_dtype]
    print(
        f"streamed == offline whole-video pipeline: max relative error {worst:.2e} "
        f"over {len(frames)} frames x {len(received)} layers ({'OK' if ok else 'MISMATCH'})"
    )
    return 0 if ok else 1
