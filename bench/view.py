"""`streamconv view`: its cost per displayed frame, and what attaching it costs the worker.

A benchmark, never a test: it prints medians and ratios measured side by side in one run.
1. Per displayed 640x480 frame: colourise + JPEG q85 (what the view ships) beside PNG and raw
   RGBA, in ms and bytes; then image messages delivered over the real WebSocket of a real
   `View` (in its own process) to one local client, per payload.
2. A retina worker (4 layers, float32 out, cpu) fed 4 lossless streams of 640x480 gray, with a
   subscriber of every output (the user): its frames/s with no view, with a view and 1 page
   (offering permessage-deflate like a browser, and not), with a view and no page, and with a
   view and 16 stalled pages; the view's CPU share (by thread) and memory.
Run `python bench/view.py --help`; `--quick` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pipeline_procs as procs
import zmq
from machine import cpu_line

REPO = Path(__file__).resolve().parent.parent
STREAMS = ("s0", "s1", "s2", "s3")
JPEG_QUALITY = 85  # ViewSettings.quality's default: what the view ships
PAGE_FPS = 15.0  # ViewSettings.fps's default: page updates per second
SEND_FPS = 120.0  # the highest fps a view takes: the send measurement ticks at it
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARM_FRAMES = 32  # per stream, before every timed worker run
WARM_PAUSE_S = 1.0
TIMEOUT_S = 60.0  # a hung run is a failed run, never a hung benchmark


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100, help="frames per stream per worker run")
    p.add_argument("--repeats", type=int, default=4, help="worker rounds (every variant once each)")
    p.add_argument("--warmup", type=int, default=0, help="worker rounds not counted")
    p.add_argument("--stalled", type=int, default=16, help="stalled pages in the last variant")
    p.add_argument("--encode-repeats", type=int, default=25, help="encodes per layer and format")
    p.add_argument("--send-s", type=float, default=3.0, help="seconds counted per send run")
    p.add_argument("--quick", action="store_true", help="smoke run, about 45 s")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.repeats, args.warmup = 30, 1, 0
        args.encode_repeats, args.send_s = 5, 1.0
    return args


def machine() -> str:
    import torch
    import websockets

    return (
        f"{cpu_line()}\n"
        f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, "
        f"pyzmq {zmq.__version__}, torch {torch.__version__}, websockets {websockets.__version__}"
    )


# -- /proc: CPU time and memory of a process --------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of the man page


def threads_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Per thread of a process: (name, utime + stime in seconds). libzmq names its I/O
    threads 'ZMQbg/IO/N'; the main thread's id is the process id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def split_cpu(
    pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds between two samples by group: 'zmq' (I/O threads), 'main', 'other'."""
    out = {"zmq": 0.0, "main": 0.0, "other": 0.0}
    for tid, (name, secs) in after.items():
        group = "zmq" if name.startswith("ZMQbg") else "main" if tid == pid else "other"
        out[group] += secs - before.get(tid, (name, 0.0))[1]
    return out


def machine_busy_s() -> float:
    """Seconds of CPU time the whole machine has spent busy (not idle or iowait), all cores."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM): resident memory now and its peak, in MB."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(line.split()[1]) / 1024
    return found.get("VmRSS", float("nan")), found.get("VmHWM", float("nan"))


# -- the displayed planes: real retina outputs ------------------------------------------------


def retina_planes(frames: int = 16) -> dict[str, np.ndarray]:
    """The last of `frames` synthetic-pattern frames through the retina preset, per layer:
    (480, 640) float32 planes with the content the view really shows."""
    import torch

    from streamconv.capture.sources import synthetic_frame
    from streamconv.config import load_settings
    from streamconv.model import build_model

    torch.set_num_threads(1)
    settings = load_settings("retina", {"worker": {"device": "cpu", "http": "off"}})
    model = build_model(settings, torch.device("cpu"))
    clip = np.stack([synthetic_frame(i, procs.WIDTH, procs.HEIGHT, 1) for i in range(frames)])
    x = torch.from_numpy(clip.astype(np.float32) / 255.0)[None, None]
    with torch.inference_mode():
        out, _ = model.step(x, None)
    return {name: out[name][0, 0, -1].numpy().copy() for name in model.stage_names()}


def colour(plane: np.ndarray) -> np.ndarray:
    """What the view does to a plane on screen at 'frame' scaling: the BGR image."""
    from streamconv.client.view.render import choose_colormap, colourise, display_range

    lo, hi = float(plane.min()), float(plane.max())
    colormap = choose_colormap(lo)
    return colourise(plane, colormap, *display_range(colormap, (lo, hi)))


def encode_png(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_rgba(bgr: np.ndarray) -> bytes:
    """No encoding: the RGBA pixels a canvas takes as they are."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA).tobytes()


def encoders() -> dict[str, Callable[[np.ndarray], bytes]]:
    from streamconv.client.view.render import encode_jpeg

    return {
        f"JPEG q{JPEG_QUALITY} (shipped)": lambda p: encode_jpeg(colour(p), JPEG_QUALITY),
        "PNG (cv2 default level)": lambda p: encode_png(colour(p)),
        "raw RGBA (no encode)": lambda p: encode_rgba(colour(p)),
        "colourise only": lambda p: colour(p).tobytes(),
    }


def encode_table(planes: dict[str, np.ndarray], repeats: int) -> tuple[str, str]:
    """ms per frame (median over every layer and repeat) and bytes per frame, per format."""
    encs = encoders()
    times: dict[str, list[float]] = {n: [] for n in encs}
    sizes: dict[str, dict[str, int]] = {n: {} for n in encs}
    names = list(encs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for layer, plane in planes.items():
                t0 = time.perf_counter_ns()
                data = encs[name](plane)
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
                sizes[name][layer] = len(data)
    jpeg = statistics.median(times[names[0]])
    lines = [
        "| format | ms/frame (median) | p90 ms | KB/frame (median of layers) | /JPEG ms "
        "| /JPEG bytes | MB/s for 16 layers at 15 fps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    jpeg_kb = statistics.median(sizes[names[0]].values()) / 1e3
    for name in names:
        med, kb = statistics.median(times[name]), statistics.median(sizes[name].values()) / 1e3
        p90 = float(np.percentile(times[name], 90))
        lines.append(
            f"| {name} | {med:.2f} | {p90:.2f} | {kb:.1f} | {med / jpeg:.2f} "
            f"| {kb / jpeg_kb:.1f} | {kb * 16 * PAGE_FPS / 1e3:.1f} |"
        )
    per_layer = [
        "| layer | colour map | JPEG KB | PNG KB | raw RGBA KB |",
        "|---|---|---:|---:|---:|",
    ]
    from streamconv.client.view.render import choose_colormap

    for layer, plane in planes.items():
        kb = [sizes[n][layer] / 1e3 for n in names[:3]]
        per_layer.append(
            f"| {layer} | {choose_colormap(float(plane.min()))} | {kb[0]:.1f} | {kb[1]:.1f} "
            f"| {kb[2]:.1f} |"
        )
    return "\n".join(lines), "\n".join(per_layer)


# -- a page over the real WebSocket ------------------------------------------------------------


Events = list[tuple[int, int]]  # (time.time_ns(), image bytes; -1 for a state message)


def read_page(url: str, done: Callable[[], bool], deflate: bool = True) -> Events:
    """Open a page and read every message until `done()`: when each came, and its size.

    `deflate`: offer permessage-deflate, as browsers and the websockets client do by default;
    the view's server (uvicorn) accepts it, and then deflates every message it sends.
    """
    from websockets.sync.client import connect

    events: Events = []
    ws_url = url.replace("http://", "ws://") + "/ws"
    compression = "deflate" if deflate else None
    with connect(ws_url, open_timeout=10, max_size=None, compression=compression) as ws:
        hello = json.loads(ws.recv(timeout=10))
        if hello.get("type") != "hello":
            raise RuntimeError(f"the view said {hello!r} first")
        while not done():
            try:
                message = ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            if isinstance(message, bytes):
                (n,) = struct.unpack("<I", message[:4])
                events.append((time.time_ns(), len(message) - 4 - n))
            else:
                events.append((time.time_ns(), -1))
    return events


def window(events: Events, t0_ns: int, t1_ns: int) -> tuple[int, int, int]:
    """(images, image bytes, states) that arrived between t0 and t1."""
    inside = [size for t, size in events if t0_ns <= t <= t1_ns]
    images = [size for size in inside if size >= 0]
    return len(images), sum(images), len(inside) - len(images)


def page_entry(url: str, deflate: bool, ready: Any, stop: Any, results: Any) -> None:
    """A page in its own process (a browser is one): reads everything until `stop`."""

    def done() -> bool:
        ready.set()
        return bool(stop.is_set())

    results.put(read_page(url, done, deflate))


def stalled_page(url: str) -> socket.socket:
    """A page that finishes the WebSocket handshake and never reads (a tiny receive buffer)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    if sock.recv(12) != b"HTTP/1.1 101":
        raise RuntimeError("the view refused a WebSocket")
    return sock


# -- 1b. the send: a real View serving fixed or freshly encoded images ------------------------


def send_view_entry(payload: str, planes: dict[str, np.ndarray], urls: Any) -> None:
    """A View (fps 120, no worker) whose 4 streams x 4 layers get a new version every ms.

    payload 'encode': the shipped Encoder (colourise + JPEG per new version); otherwise every
    image is the same precomputed bytes of that format ('jpeg', 'png', 'rgba'): the send alone.
    """
    from streamconv.client.view.page import Encoder
    from streamconv.client.view.render import encode_jpeg
    from streamconv.client.view.role import View
    from streamconv.config import ViewSettings

    class FixedEncoder(Encoder):
        def __init__(self, data: dict[str, bytes]) -> None:
            super().__init__(JPEG_QUALITY)
            self.data = data

        def jpeg(self, key: Any, scaling: Any, shown: Any) -> bytes:
            self.encoded += 1
            return self.data[key[1]]

    settings = ViewSettings(connect=procs.free_endpoint(), listen="127.0.0.1:0", fps=SEND_FPS)
    view = View(settings)
    if payload != "encode":
        make = {
            "jpeg": lambda p: encode_jpeg(colour(p), JPEG_QUALITY),
            "png": lambda p: encode_png(colour(p)),
            "rgba": lambda p: encode_rgba(colour(p)),
        }[payload]
        view.served.encoder = FixedEncoder({layer: make(p) for layer, p in planes.items()})

    def feed() -> None:
        view.ready.wait(TIMEOUT_S)
        hub = view.hub
        for stream in STREAMS:
            for layer, plane in planes.items():
                header = {"stream": stream, "layer": layer, "session": "bench", "seq": 0,
                          "t_ns": time.time_ns()}  # fmt: skip
                hub.take(header, plane[None], display=True)
        urls.put(view.url)
        while not view.stop_event.is_set():  # every layer has a newer image on every tick
            with hub.lock:
                for sv in hub.streams.values():
                    for lv in sv.layers.values():
                        lv.version += 1
            time.sleep(0.001)

    threading.Thread(target=feed, daemon=True).start()
    view.run()


@dataclass
class Send:
    payload: str
    deflate: bool
    images: int
    image_bytes: int
    states: int
    seconds: float
    view_cores: float

    @property
    def per_s(self) -> float:
        return self.images / self.seconds

    @property
    def busy_ms(self) -> float:
        """Server time per image message: the run less the ticks' waits (1/fps each)."""
        waits = self.states / SEND_FPS
        return max(self.seconds - waits, 0.0) / max(self.images, 1) * 1e3


def read_counted(url: str, pid: int, seconds: float, deflate: bool) -> tuple[Events, dict]:
    """A page read for 1 s of warm-up and then `seconds`; the marks of the counted window."""
    marks: dict[str, float] = {}

    def done() -> bool:
        now = time.time_ns()
        marks.setdefault("start", now)
        if "t0" not in marks and now >= marks["start"] + 1e9:
            marks["t0"], marks["cpu0"] = now, cpu_s(pid)
        if "t0" in marks and now >= marks["t0"] + seconds * 1e9:
            marks["t1"], marks["cpu1"] = now, cpu_s(pid)
            return True
        return False

    return read_page(url, done, deflate), marks


def send_runs(
    payload: str, planes: dict[str, np.ndarray], seconds: float, deflates: tuple[bool, ...]
) -> list[Send]:
    """One send View; a page read (1 s warm-up + `seconds` counted) per deflate setting."""
    urls = procs.SPAWN.Queue()
    out = []
    with procs.child(send_view_entry, payload, planes, urls, name=f"view-{payload}") as proc:
        url, pid = urls.get(timeout=TIMEOUT_S), proc.pid
        assert pid is not None
        for deflate in deflates:
            events, marks = read_counted(url, pid, seconds, deflate)
            wall = (marks["t1"] - marks["t0"]) / 1e9
            images, image_bytes, states = window(events, int(marks["t0"]), int(marks["t1"]))
            cores = (marks["cpu1"] - marks["cpu0"]) / wall
            out.append(Send(payload, deflate, images, image_bytes, states, wall, cores))
    return out


# payload -> (what it is, deflate settings read)
SEND_PAYLOADS: dict[str, tuple[str, tuple[bool, ...]]] = {
    "encode": (f"JPEG q{JPEG_QUALITY}, encoded per image (shipped)", (True, False)),
    "jpeg": (f"JPEG q{JPEG_QUALITY}, same bytes (send only)", (True, False)),
    "png": ("PNG, same bytes (send only)", (False,)),
    "rgba": ("raw RGBA, same bytes (send only)", (True, False)),
}


def send_table(runs: list[Send]) -> str:
    lines = [
        "| payload | permessage-deflate | KB/image | images/s | ticks/s | ms/image (busy) "
        "| MB/s | view cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in runs:
        kb = s.image_bytes / max(s.images, 1) / 1e3
        lines.append(
            f"| {SEND_PAYLOADS[s.payload][0]} | {'on' if s.deflate else 'off'} | {kb:.1f} "
            f"| {s.per_s:.0f} | {s.states / s.seconds:.0f} | {s.busy_ms:.2f} "
            f"| {s.image_bytes / s.seconds / 1e6:.1f} | {s.view_cores:.2f} |"
        )
    return "\n".join(lines)


# -- 2. the worker with and without a view -----------------------------------------------------


def sender_entry(endpoint: str, stream: str, n: int, commands: Any, replies: Any) -> None:
    """One capture client, kept up across runs: each ('go', k) sends k <= n frames losslessly
    (a new session, then eos) through the reference Capture over an in-memory source."""
    from streamconv.capture.role import Capture
    from streamconv.capture.sources import ArraySource

    frames = procs.bench_frames(n)
    replies.put(("ready", stream))
    while (command := commands.get())[0] == "go":
        source = ArraySource(frames[: command[1]])
        Capture(source, stream=stream, endpoint=endpoint, mode="lossless").run()
        replies.put(("done", stream))


class ViewProc:
    """`python -m streamconv view` (the CLI, defaults: fps 15, JPEG q85) on a free port."""

    def __init__(self, connect: str) -> None:
        cmd = [sys.executable, "-m", "streamconv", "view", "--connect", connect,
               "--listen", "127.0.0.1:0"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if "view on http://" in line:
                self.url = line.split("view on ")[1].split()[0]
                break
        while self.status()["worker"] != "connected":
            if time.monotonic() > deadline:
                raise TimeoutError("the view never connected to the worker")
            time.sleep(0.05)
        time.sleep(0.5)  # the subscription reaches the worker's XPUB

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/status", timeout=5) as reply:
            return dict(json.load(reply))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Throughput:
    frames: int = 0  # final-layer outputs received: input frames fully processed
    outputs: int = 0
    first_t_ns: int = 0
    last_ns: int = 0
    lost: int = 0
    worker_cores: float = 0.0
    worker_zmq: float = 0.0  # of which the worker's ZeroMQ I/O threads
    machine_cores: float = 0.0  # every process on the machine, this run's included
    view_cores: float = float("nan")
    view_split: dict[str, float] = field(default_factory=dict)  # cores by thread group
    view_rss_mb: float = float("nan")
    view_peak_mb: float = float("nan")
    view_received: float = float("nan")  # share of the outputs the view took
    page_images_s: float = float("nan")

    @property
    def fps(self) -> float:
        return self.frames / max(self.last_ns - self.first_t_ns, 1) * 1e9


class Bench:
    """The worker, its 4 capture clients and the user's subscriber, up for the whole run."""

    def __init__(self, stack: ExitStack, n: int) -> None:
        from streamconv.client.subscriber import Subscriber
        from streamconv.config import load_settings

        ports = {"input": procs.free_endpoint(), "output": procs.free_endpoint()}
        overrides = {"worker": {**ports, "http": "off", "device": "cpu"}}
        self.settings = load_settings("retina", overrides)
        self.layers = [spec.name for spec in self.settings.layers]
        self.input, self.output, self.n = ports["input"], ports["output"], n
        self.worker = stack.enter_context(
            procs.child(procs.worker_entry, self.settings, name="worker")
        )
        self.sub = stack.enter_context(Subscriber(self.output, timeout_s=TIMEOUT_S))
        procs.wait_worker_ready(self.worker, self.sub, self.input, 120)
        self.replies = procs.SPAWN.Queue()
        self.commands = []
        for stream in STREAMS:
            commands = procs.SPAWN.Queue()
            args = (self.input, stream, max(n, WARM_FRAMES), commands, self.replies)
            stack.enter_context(procs.child(sender_entry, *args, name=f"capture-{stream}"))
            stack.callback(commands.put, ("quit", 0))
            self.commands.append(commands)
        for _ in STREAMS:
            self.replies.get(timeout=TIMEOUT_S)

    def run(self, variant: str, stalled: int) -> Throughput:
        out = Throughput()
        with ExitStack() as stack:
            view = page = None
            if variant != "no view":
                view = ViewProc(self.output)
                stack.callback(view.stop)
            if variant.startswith("view + 1 page"):
                assert view is not None
                page = PageProc(stack, view.url, deflate="no deflate" not in variant)
            elif variant.endswith("stalled pages") and view is not None:
                for _ in range(stalled):
                    stack.callback(stalled_page(view.url).close)
            # Every variant alike: a short send first, so the view has every layer and stalled
            # pages have filled their socket buffers (a one-off burst) before the clock starts.
            self._go(WARM_FRAMES, Throughput())
            time.sleep(WARM_PAUSE_S)
            pids = {"worker": self.worker.pid} | ({"view": view.proc.pid} if view else {})
            cpu0 = {k: (cpu_s(pid), threads_cpu_s(pid)) for k, pid in pids.items() if pid}
            busy0, t0 = machine_busy_s(), time.monotonic()
            self._go(self.n, out)
            wall = time.monotonic() - t0
            cpu1 = {k: (cpu_s(pid), threads_cpu_s(pid)) for k, pid in pids.items() if pid}
            out.machine_cores = (machine_busy_s() - busy0) / wall
            cores = {k: (cpu1[k][0] - cpu0[k][0]) / wall for k in cpu1}
            split = {
                k: {g: v / wall for g, v in split_cpu(pids[k], cpu0[k][1], cpu1[k][1]).items()}
                for k in cpu1
            }
            out.worker_cores, out.worker_zmq = cores["worker"], split["worker"]["zmq"]
            if view is not None:
                out.view_cores, out.view_split = cores["view"], split["view"]
                out.view_rss_mb, out.view_peak_mb = memory_mb(view.proc.pid)
                sent = self.n + 1 + WARM_FRAMES + 1  # outputs and eos, the warm-up's included
                published = sent * len(STREAMS) * len(self.layers)
                out.view_received = view.status()["received"] / published
            if page is not None:
                images, _, _ = window(page.finish(), out.first_t_ns, out.last_ns)
                out.page_images_s = images / max(out.last_ns - out.first_t_ns, 1) * 1e9
        return out

    def _go(self, n: int, out: Throughput) -> None:
        """Every capture sends `n` frames; count the outputs until every eos is in."""
        for commands in self.commands:
            commands.put(("go", n))
        self._count(out, n)
        for _ in STREAMS:
            self.replies.get(timeout=TIMEOUT_S)

    def _count(self, out: Throughput, n: int) -> None:
        """Every output until eos on every layer of every stream; the clock is the first
        output's capture time (its t_ns) to the last output's arrival."""
        ends, final = 0, self.layers[-1]
        while ends < len(STREAMS) * len(self.layers):
            header, frame = self.sub.recv()
            now = time.time_ns()
            if frame is None:
                ends += 1
                continue
            out.outputs += 1
            out.first_t_ns = min(out.first_t_ns or header["t_ns"], header["t_ns"])
            out.last_ns = now
            if header["layer"] == final:
                out.frames += 1
        out.lost = n * len(STREAMS) * len(self.layers) - out.outputs


class PageProc:
    """One page reading everything, in its own process, from before the run to after it."""

    def __init__(self, stack: ExitStack, url: str, deflate: bool) -> None:
        self.ready, self.stop = procs.SPAWN.Event(), procs.SPAWN.Event()
        self.results = procs.SPAWN.Queue()
        args = (url, deflate, self.ready, self.stop, self.results)
        self.proc = stack.enter_context(procs.child(page_entry, *args, name="page"))
        if not self.ready.wait(TIMEOUT_S):
            raise TimeoutError("the page never opened")

    def finish(self) -> Events:
        self.stop.set()
        events: Events = self.results.get(timeout=TIMEOUT_S)
        return events


# A page offers permessage-deflate as browsers do; the 'no deflate' page does not (see read_page).
VARIANTS = (
    "no view",
    "view, no page",
    "view + 1 page",
    "view + 1 page, no deflate",
    "view + {n} stalled pages",
)


def interleave(run: Callable[[str], Throughput], names: list[str], rounds: int, skip: int) -> Any:
    """Every variant once per round, the order rotated each round so drift hits them all."""
    runs: dict[str, list[Throughput]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            result = run(name)
            print(f"  round {r + 1}/{rounds} {name}: {result.fps:.0f} frames/s", flush=True)
            if r >= skip:
                runs[name].append(result)
    return runs


def med_of(values: list[float], fmt: str) -> str:
    """The median of the values that are not NaN, formatted; '-' if there are none."""
    values = [v for v in values if v == v]
    return format(statistics.median(values), fmt) if values else "-"


def worker_table(runs: dict[str, list[Throughput]]) -> tuple[str, dict[str, float]]:
    med = {n: statistics.median(r.fps for r in rs) for n, rs in runs.items()}
    base = med["no view"]
    lines = [
        "| variant | frames/s (median) | min-max | /no view | lost | worker cores "
        "| of which ZeroMQ I/O | view cores | machine busy cores (of 2) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, rs in runs.items():
        fps = [r.fps for r in rs]
        lines.append(
            f"| {n} | {med[n]:.1f} | {min(fps):.1f}-{max(fps):.1f} | {med[n] / base:.3f} "
            f"| {sum(r.lost for r in rs)} | {med_of([r.worker_cores for r in rs], '.2f')} "
            f"| {med_of([r.worker_zmq for r in rs], '.2f')} "
            f"| {med_of([r.view_cores for r in rs], '.2f')} "
            f"| {med_of([r.machine_cores for r in rs], '.2f')} |"
        )
    return "\n".join(lines), med


def view_table(runs: dict[str, list[Throughput]]) -> str:
    lines = [
        "| variant | view cores | ZeroMQ I/O thread | receive loop (main thread) "
        "| http + encode (other threads) | RSS MB (peak) | outputs the view took "
        "| page images/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, rs in runs.items():
        if n == "no view":
            continue

        def group(g: str, rs: list[Throughput] = rs) -> str:
            return med_of([r.view_split.get(g, float("nan")) for r in rs], ".2f")

        lines.append(
            f"| {n} | {med_of([r.view_cores for r in rs], '.2f')} | {group('zmq')} "
            f"| {group('main')} | {group('other')} "
            f"| {med_of([r.view_rss_mb for r in rs], '.0f')} "
            f"({med_of([r.view_peak_mb for r in rs], '.0f')}) "
            f"| {med_of([100 * r.view_received for r in rs], '.0f')}% "
            f"| {med_of([r.page_images_s for r in rs], '.0f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(machine(), flush=True)

    planes = retina_planes()
    print(
        "\n1. per displayed frame: 640x480 float32 retina outputs (synthetic pattern, frame 15, "
        f"one per layer), colourised as the view does; {args.encode_repeats} encodes per layer "
        "and format, interleaved; median over layers and repeats"
    )
    table, per_layer = encode_table(planes, args.encode_repeats)
    print(table)
    print(per_layer, flush=True)

    print(
        f"\nsend: a View process (fps {SEND_FPS:g}, no worker) with 4 streams x 4 layers, every "
        "layer newer on every tick, -> one local websockets client in this process; "
        f"{args.send_s:g} s counted after 1 s of warm-up. ms/image (busy) = (seconds - ticks "
        f"x 1/{SEND_FPS:g} s) / images: the server's time per image message, state included"
    )
    sends = [s for p, (_, d) in SEND_PAYLOADS.items() for s in send_runs(p, planes, args.send_s, d)]
    print(send_table(sends), flush=True)

    names = [v.format(n=args.stalled) for v in VARIANTS]
    print(
        f"\n2. retina worker (cpu, float32 out, chunk 8, 1 torch thread), {len(STREAMS)} "
        f"lossless streams x {args.frames} frames of 640x480 gray, a subscriber of all outputs "
        f"in this process; the view is the CLI (fps {PAGE_FPS:g}, JPEG q{JPEG_QUALITY}), started "
        f"per run; a page reads in its own process; every run first sends {WARM_FRAMES} frames per "
        f"stream and pauses {WARM_PAUSE_S:g} s (not timed); "
        f"{args.warmup} warm-up + {args.repeats} rounds, interleaved; "
        "frames/s = final-layer outputs / (last output's arrival - first output's capture t_ns)",
        flush=True,
    )
    with ExitStack() as stack:
        bench = Bench(stack, args.frames)
        runs = interleave(
            lambda name: bench.run(name, args.stalled),
            names,
            args.warmup + args.repeats,
            args.warmup,
        )
    table, med = worker_table(runs)
    print(table)
    print("the view process, by thread group (cores = CPU seconds / run seconds):")
    print(view_table(runs))
    print("target: attaching a view costs the worker < 5% throughput (ratio >= 0.95):")
    for name in names[1:]:
        ratio = med[name] / med["no view"]
        print(f"  {name}: {ratio:.3f} {'met' if ratio >= 0.95 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
