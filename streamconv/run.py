"""`streamconv run`: capture, worker and a subscriber in one command on one machine.

The worker and the capture run as child processes (see supervisor); this process subscribes,
shows progress, writes a preview video per layer and, for finite files, checks that the
streamed outputs equal the offline pipeline. SIGINT/SIGTERM stop it early: the children shut
down cleanly and the summary is printed (the offline check is skipped).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from streamconv.capture.role import derive_stream
from streamconv.capture.sources import open_source, sample_clip
from streamconv.client import Subscriber
from streamconv.client.sinks import Monitor, PreviewWriter, Sinks
from streamconv.config import CaptureSettings, Settings, parse_http
from streamconv.errors import ConfigError, StartupError, StreamconvError
from streamconv.layers import Output
from streamconv.model import build_model, input_channels, layer_names
from streamconv.signals import on_stop
from streamconv.supervisor import Supervisor, capture_main, view_main, worker_main
from streamconv.wire.curve import generate
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


def resolve_sample(source: str, out: Path) -> str:
    """'sample' is the built-in clip, written into the output folder for the user to see."""
    return str(sample_clip(out / "sample.mp4")) if source == "sample" else source


def run_pipeline(
    settings: Settings, out: Path, *, verify: bool = True, view: bool = False, curve: bool = False
) -> int:
    """Run the pipeline on `settings.capture.source`; with `view`, serve the live page too,
    start the capture once a page is open (paced in real time), and keep the page up after
    the stream has ended until SIGINT/SIGTERM. With `curve`, every socket uses CURVE with
    key pairs made for this run (in a temporary folder, removed afterwards)."""
    stop = threading.Event()
    restore = on_stop(lambda signum: stop.set())
    viewer = Supervisor()  # apart from the pipeline's children: the page outlives them
    keys = tempfile.TemporaryDirectory(prefix="streamconv-keys-") if curve else None
    if keys is not None:
        settings = with_curve(settings, Path(keys.name))
    try:
        url, output = _start_view(viewer, settings) if view else (None, free_endpoint())
        page = None if url is None else (lambda: wait_for_page(str(url), viewer, stop))
        code = _run(settings, out, verify, stop, output, page)
        if url is not None and not stop.is_set():
            print(f"the view stays at {url} until Ctrl-C", flush=True)
            while not stop.wait(0.5) and viewer.failed() is None:
                pass
        return code
    finally:
        viewer.stop()
        restore()
        if keys is not None:
            keys.cleanup()


def with_curve(settings: Settings, folder: Path) -> Settings:
    """`settings` with a worker key pair and one client key pair (made in `folder`) on every
    socket: the worker's two, the capture's, the view's (and, via the capture, run's own)."""
    server_public, server_secret = generate(folder, "worker")
    client_public, client_secret = generate(folder / "clients", "client")
    server = {"curve_secret": server_secret, "curve_clients": client_public.parent}
    client = {"curve_secret": client_secret, "curve_server": server_public}
    w, c, v = settings.worker, settings.capture, settings.view
    return settings.model_copy(update={
        "worker": w.model_copy(update={"input": w.input.model_copy(update=server),
                                       "output": w.output.model_copy(update=server)}),
        "capture": c.model_copy(update={"connect": c.connect.model_copy(update=client)}),
        "view": v.model_copy(update={"connect": v.connect.model_copy(update=client)}),
    })  # fmt: skip


def _run(
    settings: Settings,
    out: Path,
    verify: bool,
    stop: threading.Event,
    output: str,
    wait_page: Callable[[], None] | None,
) -> int:
    capture = settings.capture
    if capture.source is None:
        msg = "run needs a source"
        raise ConfigError(msg)
    stream = capture.stream or derive_stream(capture.source)
    source = resolve_sample(capture.source, out)
    capture = capture.model_copy(update={"source": source})
    # Open the source here first: a bad spec is a clear error before any process starts.
    open_source(source, resize=capture.resize, gray=capture.gray).close()
    endpoints = {"input": free_endpoint(), "output": output}
    if wait_page is not None:
        capture = capture.model_copy(update={"realtime": True})  # watchable, not a blur
    w = settings.worker
    sockets = {
        "input": w.input.model_copy(update={"endpoint": endpoints["input"]}),
        "output": w.output.model_copy(update={"endpoint": endpoints["output"]}),
    }
    worker_settings = w.model_copy(update=sockets | {"http": "off"})
    settings = settings.model_copy(update={"worker": worker_settings})
    connect = capture.connect.model_copy(update={"endpoint": endpoints["input"]})
    capture = capture.model_copy(
        update={"connect": connect, "stream": stream, "output": endpoints["output"]}
    )
    layers = layer_names(settings)
    children = Supervisor()
    children.start("worker", worker_main, settings)
    monitor = Monitor()
    sinks = Sinks({"monitor": monitor, "preview": PreviewWriter(out)})
    received: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    gaps = kept = 0
    try:
        # Lossless: a subscriber slower than the worker (writing previews) holds the capture
        # back instead of losing outputs, so the offline comparison always runs.
        with Subscriber(endpoints["output"], stream=stream, timeout_s=60, lossless=True,
                        inputs=[endpoints["input"]], **connect.client_keys()) as sub:  # fmt: skip
            wait_worker_ready(sub, endpoints["input"], children.children["worker"], stop)
            if wait_page is not None:
                wait_page()
            children.start("capture", capture_main, capture, settings.log.level,
                           settings.log.format)  # fmt: skip
            ended: set[str] = set()
            last_output = time.monotonic()
            done = 0
            while ended != set(layers) and not stop.is_set():
                try:
                    header, frame = sub.recv(timeout_s=0.5)
                except TimeoutError:
                    _check_children(children, time.monotonic() - last_output)
                    continue
                last_output = time.monotonic()
                if frame is None:
                    ended.add(header["layer"])
                    continue
                sinks.add(header, frame)
                done += header["layer"] == layers[-1]
                _progress(done)
                kept += frame.nbytes
                if kept <= VERIFY_MAX_BYTES:
                    received[header["layer"]].append(frame)
                elif any(received.values()):  # too much to verify: free what was kept
                    received = {name: [] for name in layers}
            gaps = sub.losses.missed()
    finally:
        children.stop()
    print(file=sys.stderr)
    print(monitor.table())
    print(f"subscriber gaps (outputs lost between worker and subscriber): {gaps}")
    for line in sinks.close():
        print(line)
    if stop.is_set():
        print("stopped by a signal: the offline comparison is skipped")
        return 0
    if not verify or capture.loop:
        return 0
    if gaps or kept > VERIFY_MAX_BYTES:
        why = f"{gaps} outputs were lost on the way" if gaps else "the outputs exceed 1 GiB"
        print(f"offline comparison skipped: {why}")
        return 0
    return _verify(settings, capture, received)


def check_listen(host: str, port: int) -> None:
    """StartupError, in one line, if `host:port` cannot be listened on: the view's child would
    fail on it only after the pipeline started (and the URL of the other program printed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the view's server binds
        try:
            s.bind((host, port))
        except OSError as e:
            why = "address in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            msg = f"cannot listen on {host}:{port}: {why}; pick another --listen"
            raise StartupError(msg) from e


def _start_view(viewer: Supervisor, settings: Settings) -> tuple[str, str]:
    """Start `streamconv view` on a free output endpoint: (the page's URL, that endpoint)."""
    host, port = parse_http(settings.view.listen) or ("127.0.0.1", 0)
    if port == 0:  # the child binds it: pick it here so that the URL is known
        port = int(free_endpoint().rsplit(":", 1)[1])
    check_listen(host, port)
    output = free_endpoint()
    connect = settings.view.connect.model_copy(update={"endpoint": output})
    view = settings.view.model_copy(update={"listen": f"{host}:{port}", "connect": connect})
    viewer.start("view", view_main, view, settings.log.level, settings.log.format)
    return f"http://{host}:{port}/", output


def wait_for_page(url: str, viewer: Supervisor, stop: threading.Event) -> None:
    """Block until a browser has opened the page (the view's /status counts pages). The URL
    is printed once the view answers on it, so a view that failed never has its URL shown."""
    told = False
    while not stop.wait(0.25):
        failed = viewer.failed()
        if failed:
            raise StartupError(failed)
        try:
            with urllib.request.urlopen(url + "status", timeout=2) as reply:
                pages = json.load(reply).get("pages_total", 0)
        except (OSError, ValueError):
            continue  # not listening yet
        if not told:
            told = True
            print(f"view: open {url} in a browser; the capture starts when the page is open "
                  "(Ctrl-C to stop)", flush=True)  # fmt: skip
        if pages > 0:
            return


def _check_children(children: Supervisor, idle_s: float) -> None:
    """Fail, naming the culprit, when a child died or outputs stopped coming."""
    worker = children.children["worker"]
    if not worker.is_alive():
        msg = f"the worker process exited (code {worker.exitcode}); see its log above"
        raise StreamconvError(msg)
    failed = children.failed()
    if failed:
        raise StreamconvError(failed)
    capture = children.children.get("capture")
    if capture is not None and capture.exitcode == 0 and idle_s > IDLE_AFTER_CAPTURE_S:
        msg = f"no output for {idle_s:.0f} s after the capture ended"
        raise StreamconvError(msg)


class Process(Protocol):
    """A worker's process as multiprocessing.Process shows it."""

    @property
    def exitcode(self) -> int | None: ...

    def is_alive(self) -> bool: ...


def wait_worker_ready(
    sub: Subscriber, endpoint: str, worker: Process, stop: threading.Event | None = None,
    timeout_s: float = 120,
) -> None:  # fmt: skip
    """Wait until the worker at input `endpoint` answers `sub`'s probes (torch import and
    model build take seconds), failing fast if its process `worker` has died; TimeoutError
    after `timeout_s`. Returns early once `stop` is set."""
    deadline = time.monotonic() + timeout_s
    while stop is None or not stop.is_set():
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
        str(capture.source), resize=capture.resize, gray=capture.gray, limit=capture.limit
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
    if not received:
        msg = "the model published no layer: nothing to compare"
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
