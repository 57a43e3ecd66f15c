"""Take docs/view.png: the live page on the retina preset, fed the built-in sample clip.

    .venv/bin/python scripts/view_screenshot.py [OUT.png]

Needs Chromium (apt-get install chromium, or STREAMCONV_CHROMIUM) and playwright (the test
extra). Starts a worker, a view and a looping capture on free ports, waits a few seconds so
that the running ranges and plots fill, and saves a full-page screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(out: Path) -> None:
    chrome = os.environ.get("STREAMCONV_CHROMIUM") or shutil.which("chromium")
    if not chrome:
        sys.exit("no Chromium: apt-get install chromium, or set STREAMCONV_CHROMIUM")
    inp, outp, page_port = free_port(), free_port(), free_port()
    cli = [sys.executable, "-m", "streamconv"]
    tmp = Path(tempfile.mkdtemp())
    clip = tmp / "sample.mp4"
    from streamconv.capture.sources import sample_clip

    sample_clip(clip)
    procs = [
        subprocess.Popen([*cli, "worker", "--config", "retina", "--device", "cpu", "--http", "off",
                          "--input", f"tcp://127.0.0.1:{inp}",
                          "--output", f"tcp://127.0.0.1:{outp}"]),  # fmt: skip
        subprocess.Popen([*cli, "view", "--connect", f"tcp://127.0.0.1:{outp}",
                          "--listen", f"127.0.0.1:{page_port}"]),  # fmt: skip
    ]
    try:
        time.sleep(8)
        procs.append(subprocess.Popen([*cli, "capture", str(clip), "--stream", "sample",
                                       "--connect", f"tcp://127.0.0.1:{inp}",
                                       "--loop", "--realtime"]))  # fmt: skip
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chrome, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 700})
            page.goto(f"http://127.0.0.1:{page_port}/")
            page.wait_for_selector("figure.layer img.frame[src]", timeout=60_000)
            time.sleep(6)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
        print(f"wrote {out}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(20)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "view.png")
