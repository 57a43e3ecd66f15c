"""`streamconv view` with a real worker: what a page receives over the real WebSocket, stalled
pages, a worker that is not there yet or goes away, the defaults, and `run --view`."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from streamconv.capture.sources import synthetic_frame
from streamconv.wire import protocol, transport
from streamconv.wire.curve import generate
from streamconv.wire.protocol import INPUT
from tests.conftest import REPO
from tests.helpers import DEFAULT, preset_layers, status
from tests.integration.conftest import WorkerProc
from tests.integration.pages import PageClient, rss_mb, stalled_page

pytestmark = pytest.mark.integration

LAYERS = preset_layers(DEFAULT)

Start = Callable[..., WorkerProc]


def send(push: transport.Socket, stream: str, session: str, seqs: range, w: int, h: int) -> None:
    for seq in seqs:
        frame = synthetic_frame(seq, w, h, channels=1)
        transport.send(push, protocol.encode_frame(stream, session, seq, frame, fps=30.0))


def frames_seen(page: PageClient, stream: str, n: int) -> Callable[[], bool]:
    def done() -> bool:
        layers = [page.layer(stream, name) for name in LAYERS]
        return all(x is not None and x["frames"] >= n for x in layers)

    return done


@pytest.mark.parametrize("flags", [[], ["--full"]], ids=["previews", "full"])
def test_a_page_sees_every_layer_of_every_stream(
    start_worker: Start, start_view: Start, zmq_ctx: transport.Context, flags: list[str]
) -> None:
    worker = start_worker()
    view = start_view(worker.output, *flags)
    page = PageClient(view.http)
    assert len(page.hello["colormaps"]["diverging"]) == 256
    page.until(lambda: page.state.get("worker") == "connected", what="the worker connected")
    push = transport.push_socket(zmq_ctx, worker.input)
    a, b = protocol.new_session(), protocol.new_session()
    send(push, "a", a, range(15), 40, 30)
    send(push, "b", b, range(5), 64, 48)
    page.until(frames_seen(page, "a", 15), what="15 frames of a")
    page.until(lambda: all(("a", n) in page.images for n in LAYERS), what="an image per layer")
    first = {n: page.images[("a", n)][0] for n in LAYERS}
    for name in LAYERS:
        assert page.image("a", name).shape == (30, 40, 3)
    # The input comes first, as the worker's preview of it (full or not), gray as it is.
    page.until(lambda: ("a", INPUT) in page.images, what="the input's image")
    listed = (page.stream("a") or {}).get("layers", [])
    assert [x["layer"] for x in listed] == [INPUT, *LAYERS]
    assert listed[0]["input"] is True
    shown = page.image("a", INPUT).astype(int)
    assert shown.shape == (30, 40, 3)
    assert np.abs(shown[..., 0] - shown[..., 2]).max() <= 8  # gray: no colour map
    send(push, "a", a, range(15, 30), 40, 30)
    transport.send(push, protocol.encode_eos("a", a, 30))
    page.until(lambda: (page.stream("a") or {}).get("status") == "ended", what="a ended")
    page.until(lambda: all(page.images[("a", n)][0] > first[n] for n in LAYERS), what="new images")
    for name in LAYERS:
        layer = page.layer("a", name)
        assert layer is not None
        # A stream's first start is no reset.
        assert (layer["frames"], layer["lost"], layer["resets"], layer["seq"]) == (30, 0, 0, 29)
        assert (layer["width"], layer["height"], layer["channels"]) == (40, 30, 1)
        assert layer["min"] <= layer["max"]
    change = page.layer("a", "change")
    assert change is not None
    assert change["colormap"] == "diverging"
    assert change["lo"] == -change["hi"]
    page.until(frames_seen(page, "b", 5), what="stream b")
    page.until(lambda: ("b", "motion") in page.images, what="b's image")  # after the state
    assert page.image("b", "motion").shape == (48, 64, 3)
    assert status(view)["pages"] == 1
    page.close()
    assert view.stop() == 0


def test_stalled_pages_cost_bounded_memory_and_do_not_slow_others(
    start_worker: Start, start_view: Start, zmq_ctx: transport.Context
) -> None:
    worker = start_worker()
    view = start_view(worker.output)
    page = PageClient(view.http)
    page.until(lambda: page.state.get("worker") == "connected", what="the worker connected")
    push = transport.push_socket(zmq_ctx, worker.input)
    session = protocol.new_session()
    send(push, "big", session, range(20), 640, 480)  # warm up: every buffer allocated
    page.until(frames_seen(page, "big", 20), timeout_s=60, what="warm-up frames")
    before = rss_mb(view.proc.pid)
    stalled = [stalled_page(view.http) for _ in range(16)]
    try:
        deadline = time.monotonic() + 10
        while status(view)["pages"] != 17:
            assert time.monotonic() < deadline, status(view)
            time.sleep(0.1)
        version = page.images[("big", "motion")][0]
        send(push, "big", session, range(20, 200), 640, 480)
        page.until(frames_seen(page, "big", 200), timeout_s=120, what="200 frames")
        page.until(lambda: page.images[("big", "motion")][0] > version + 10, what="new images")
        grown = rss_mb(view.proc.pid) - before
        assert grown < 100, f"16 stalled pages grew the view by {grown:.0f} MB"
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + 10
    while status(view)["pages"] != 1:  # closed pages are gone
        assert time.monotonic() < deadline, status(view)
        time.sleep(0.1)


def test_view_before_its_worker_and_after_it_goes_away(
    start_worker: Start, start_view: Start, free_endpoint: Callable[[], str],
    zmq_ctx: transport.Context,
) -> None:  # fmt: skip
    output = free_endpoint()
    view = start_view(output)  # no worker yet
    page = PageClient(view.http)
    page.until(lambda: page.state.get("worker") == "disconnected", what="disconnected")
    worker = start_worker(DEFAULT, "--output", output)
    page.until(lambda: page.state.get("worker") == "connected", what="connected", timeout_s=30)
    push = transport.push_socket(zmq_ctx, worker.input, linger_ms=0)
    send(push, "cam", protocol.new_session(), range(10), 32, 24)
    page.until(frames_seen(page, "cam", 10), what="10 frames")
    assert worker.stop() == 0
    page.until(lambda: page.state.get("worker") == "disconnected", what="the worker gone")
    page.until(lambda: (page.stream("cam") or {}).get("status") == "stale", what="stale")
    worker = start_worker(DEFAULT, "--output", output)
    page.until(lambda: page.state.get("worker") == "connected", what="back", timeout_s=30)
    push = transport.push_socket(zmq_ctx, worker.input, linger_ms=0)
    again = protocol.new_session()
    send(push, "cam", again, range(10), 32, 24)
    page.until(lambda: (page.stream("cam") or {}).get("session") == again, what="new session")
    page.until(frames_seen(page, "cam", 10), what="frames after the restart")
    assert (page.stream("cam") or {}).get("status") == "live"
    smooth = page.layer("cam", "smooth")
    assert smooth is not None
    assert smooth["resets"] == 1  # the restart; the stream's first start was none
    assert smooth["lost"] == 0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_view_with_no_flags_serves_its_page_on_8080(python_env: dict[str, str]) -> None:
    if not _port_free(8080):
        pytest.skip("port 8080 is taken on this machine")
    proc = subprocess.Popen([sys.executable, "-m", "streamconv", "view"], cwd=REPO,
                            env=python_env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        deadline = time.monotonic() + 30
        while "view on" not in line and time.monotonic() < deadline and line:
            line = proc.stderr.readline()
        assert "view on http://127.0.0.1:8080 (previews from tcp://127.0.0.1:5556)" in line
        with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5) as reply:
            html = reply.read().decode()
        assert '<script src="/static/view.js"' in html
        for asset in ("view.js", "view.css"):
            with urllib.request.urlopen(f"http://127.0.0.1:8080/static/{asset}", timeout=5) as r:
                assert r.status == 200
                assert len(r.read()) > 500
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_a_taken_listen_port_is_a_startup_error(python_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "streamconv", "view", "--listen", f"127.0.0.1:{port}"],
            cwd=REPO, env=python_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in done.stderr
    assert "--listen" in done.stderr


def test_run_view_starts_the_capture_once_a_page_is_open(
    python_env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "streamconv", "run", "synthetic:64x48:45", "--device", "cpu",
           "--view", "--listen", f"127.0.0.1:{port}", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=python_env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(line.rstrip() for line in proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_line(text: str, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hit = next((x for x in lines if text in x), None)
            if hit is not None:
                return hit
            assert proc.poll() is None, f"run exited ({proc.returncode}): {lines}"
            time.sleep(0.05)
        pytest.fail(f"no line with {text!r}: {lines}")

    try:
        url = f"http://127.0.0.1:{port}/"
        assert url in wait_line("view: open ")
        time.sleep(1.0)
        with urllib.request.urlopen(url + "status", timeout=5) as reply:
            assert json.load(reply)["received"] == 0  # no page yet: the capture waits
        page = PageClient(url.rstrip("/"))
        page.until(lambda: (page.stream("synthetic") or {}).get("status") == "ended",
                   timeout_s=60, what="the stream ended")  # fmt: skip
        assert "(OK)" in wait_line("streamed == offline")
        wait_line("the view stays at")
        layer = page.layer("synthetic", "motion")
        assert layer is not None
        assert layer["frames"] == 45
        assert 10 < layer["fps"] <= 45  # paced at the source's 30 frames/s
        page.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_uint8_outputs_are_shown_too(
    start_worker: Start, start_view: Start, zmq_ctx: transport.Context
) -> None:
    worker = start_worker(DEFAULT,
                          env={"STREAMCONV_WORKER__OUTPUT_DTYPE": "uint8"})  # fmt: skip
    view = start_view(worker.output)
    page = PageClient(view.http)
    page.until(lambda: page.state.get("worker") == "connected", what="connected")
    push = transport.push_socket(zmq_ctx, worker.input)
    send(push, "q", protocol.new_session(), range(6), 50, 40)
    page.until(frames_seen(page, "q", 6), what="6 frames")
    page.until(lambda: ("q", "smooth") in page.images, what="an image")
    assert page.image("q", "smooth").shape == (40, 50, 3)
    assert np.ptp(page.image("q", "smooth")) > 0  # not a flat picture


def test_run_view_on_a_taken_port_says_so_in_one_line(
    python_env: dict[str, str], tmp_path: Path
) -> None:
    """Not the child's traceback, not the URL of the other program's port: one line, exit 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "streamconv", "run", "synthetic:64x48:45", "--device", "cpu",
             "--view", "--listen", f"127.0.0.1:{port}", "--out", str(tmp_path)],
            cwd=REPO, env=python_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 3, (done.stdout, done.stderr)
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    expected = f"cannot listen on 127.0.0.1:{port}: address in use; pick another --listen"
    assert len(said) == 1, said
    assert expected in said[0]


def test_the_input_is_shown_first_and_in_colour(
    start_worker: Start, start_view: Start, zmq_ctx: transport.Context
) -> None:
    worker = start_worker(env={"STREAMCONV_WORKER__COLOR": "rgb"})
    view = start_view(worker.output)
    page = PageClient(view.http)
    page.until(lambda: page.state.get("worker") == "connected", what="the worker connected")
    push = transport.push_socket(zmq_ctx, worker.input)
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[:, :32, 2] = 255  # red on the left, blue on the right (OpenCV's BGR)
    bgr[:, 32:, 0] = 255
    session = protocol.new_session()
    for seq in range(8):
        transport.send(push, protocol.encode_frame("rgb", session, seq, bgr, fps=30.0))
    page.until(lambda: ("rgb", INPUT) in page.images, what="the input's image")
    listed = (page.stream("rgb") or {}).get("layers", [])
    assert listed[0]["layer"] == INPUT
    assert (listed[0]["width"], listed[0]["height"], listed[0]["channels"]) == (64, 48, 3)
    shown = page.image("rgb", INPUT).astype(int)  # BGR, as OpenCV decodes it
    assert np.abs(shown[24, 8] - (0, 0, 255)).max() < 40  # red
    assert np.abs(shown[24, 56] - (255, 0, 0)).max() < 40  # blue
    page.close()


def test_a_curve_refusal_is_said_on_the_page(start_worker: Start, start_view: Start,
                                             tmp_path: Path) -> None:  # fmt: skip
    """Not only "worker disconnected": the page says the worker refused the view's key."""
    worker_key, worker_secret = generate(tmp_path, "worker")
    generate(tmp_path / "clients", "allowed")
    _, stranger = generate(tmp_path / "others", "stranger")
    env = {"STREAMCONV_WORKER__OUTPUT__CURVE_SECRET": str(worker_secret),
           "STREAMCONV_WORKER__OUTPUT__CURVE_CLIENTS": str(tmp_path / "clients")}  # fmt: skip
    worker = start_worker(env=env)
    view = start_view(worker.output, "--curve-secret", str(stranger),
                      "--curve-server", str(worker_key))  # fmt: skip
    page = PageClient(view.http)
    page.until(lambda: page.state.get("refused") is not None, what="the refusal", timeout_s=30)
    assert page.state["worker"] == "disconnected"
    assert "not in the worker's curve_clients" in page.state["refused"]
    page.close()
