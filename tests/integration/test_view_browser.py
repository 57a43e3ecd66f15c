"""The view page in a real headless Chromium (driven by playwright), fed by a real worker.

Skips, saying why, where playwright or a Chromium binary is missing: `apt-get install chromium`
(Debian/Ubuntu) or STREAMCONV_CHROMIUM=/path/to/chrome provides one (see README, Tests).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamconv.capture.sources import synthetic_frame
from streamconv.wire import protocol, transport
from streamconv.wire.curve import generate
from streamconv.wire.protocol import INPUT
from tests.helpers import DEFAULT, preset_layers
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

LAYERS = preset_layers(DEFAULT)


def chromium() -> str:
    found = os.environ.get("STREAMCONV_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if not found:
        pytest.skip("no Chromium here: apt-get install chromium, or set STREAMCONV_CHROMIUM")
    return found


@pytest.fixture
def feed(start_worker: Callable[..., WorkerProc]) -> Iterator[WorkerProc]:
    """A worker fed two streams at about 30 frames/s until the test ends."""
    worker = start_worker()
    stop = threading.Event()

    def run() -> None:
        ctx = transport.context()
        push = transport.push_socket(ctx, worker.input, linger_ms=0)
        sessions = {"left": protocol.new_session(), "right": protocol.new_session()}
        seq = 0
        while not stop.wait(1 / 30):
            for stream, session in sessions.items():
                frame = synthetic_frame(seq, 160, 120, channels=1)
                transport.send(push, protocol.encode_frame(stream, session, seq, frame, fps=30.0),
                               block=False)  # fmt: skip
            seq += 1
        transport.close(push, 0)
        ctx.term()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield worker
    stop.set()
    thread.join(5)


def test_the_page_shows_every_layer_moving(
    feed: WorkerProc, start_view: Callable[..., WorkerProc]
) -> None:
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    view = start_view(feed.output)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(view.http + "/")
            for stream in ("left", "right"):
                figures = f'section.stream[data-stream="{stream}"] figure.layer'
                page.wait_for_function(
                    f"document.querySelectorAll('{figures} img.frame[src]').length === 4",
                    timeout=30_000,
                )
                names = page.eval_on_selector_all(figures, "els => els.map(e => e.dataset.layer)")
                assert names == [INPUT, *LAYERS]  # the input first, then the pipeline's order
                first = f"{figures}:first-child"
                assert page.inner_text(f"{first} .name") == "input"
                assert not page.is_visible(f"{first} .bar")  # a picture: no colour map
            assert page.inner_text("#worker") == "connected"
            left = 'section.stream[data-stream="left"]'
            assert page.inner_text(f"{left} .stream-status") == "live"
            images = f"{left} figure:not(.input) img.frame"  # the layers change with time
            before = page.eval_on_selector_all(images, "els => els.map(e => e.dataset.image)")
            page.wait_for_function(
                f"""(before) => [...document.querySelectorAll('{images}')]
                    .every((e, i) => e.dataset.image !== before[i])""",
                arg=before,
                timeout=15_000,
            )
            for fps_text in page.eval_on_selector_all(
                f"{left} .fps", "els => els.map(e => e.textContent)"
            ):
                assert float(fps_text.split()[0]) > 0, fps_text
            assert page.inner_text(f'{left} figure[data-layer="smooth"] .size').startswith("160")
            page.select_option("#scaling", "running")
            page.select_option("#plot", "pixel")
            time.sleep(1.0)  # a few updates with both options
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    picture = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None
    assert picture.shape[1] == 1280
    assert picture.std() > 20, "the screenshot is (nearly) uniform"
    colours = np.unique(picture.reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: no images drawn?"


def test_an_ended_stream_greys_its_colour_bars_with_its_images(
    start_worker: Callable[..., WorkerProc], start_view: Callable[..., WorkerProc]
) -> None:
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    worker = start_worker()
    view = start_view(worker.output)
    ctx = transport.context()
    push = transport.push_socket(ctx, worker.input, linger_ms=0)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(view.http + "/")
            page.wait_for_function("document.querySelector('#worker').textContent === 'connected'",
                                   timeout=30_000)  # fmt: skip
            session = protocol.new_session()
            for seq in range(10):
                frame = synthetic_frame(seq, 64, 48, channels=1)
                transport.send(push, protocol.encode_frame("done", session, seq, frame))
            stream = 'section.stream[data-stream="done"]'
            page.wait_for_function(
                f"document.querySelectorAll('{stream} img.frame[src]').length === 4",
                timeout=30_000,
            )
            bars = f"{stream} .colorbar"
            style = "els => els.map(e => getComputedStyle(e).filter)"
            assert set(page.eval_on_selector_all(bars, style)) == {"none"}  # live: in colour
            transport.send(push, protocol.encode_eos("done", session, 10))
            page.wait_for_selector(f'{stream}[data-status="ended"]', timeout=20_000)
            page.wait_for_timeout(500)  # the filter's transition
            assert set(page.eval_on_selector_all(bars, style)) == {"grayscale(1)"}
            images = page.eval_on_selector_all(f"{stream} img.frame", style)
            assert set(images) == {"grayscale(1)"}  # the input too
        finally:
            browser.close()
            transport.close(push, 0)
            ctx.term()


def test_a_refused_view_says_why(
    start_worker: Callable[..., WorkerProc], start_view: Callable[..., WorkerProc],
    tmp_path: Path,
) -> None:  # fmt: skip
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    worker_key, worker_secret = generate(tmp_path, "worker")
    generate(tmp_path / "clients", "allowed")
    _, stranger = generate(tmp_path / "others", "stranger")
    worker = start_worker(env={
        "STREAMCONV_WORKER__OUTPUT__CURVE_SECRET": str(worker_secret),
        "STREAMCONV_WORKER__OUTPUT__CURVE_CLIENTS": str(tmp_path / "clients"),
    })  # fmt: skip
    view = start_view(worker.output, "--curve-secret", str(stranger),
                      "--curve-server", str(worker_key))  # fmt: skip
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(view.http + "/")
            page.wait_for_function(
                "document.querySelector('#worker-banner').dataset.refused === 'yes'",
                timeout=30_000,
            )
            text = page.inner_text("#worker-banner")
            assert "the worker refused the view" in text
            assert "not in the worker's curve_clients" in text
            assert worker.output in text
        finally:
            browser.close()
