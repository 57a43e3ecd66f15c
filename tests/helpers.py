"""Helpers the tests share, written once: the shipped presets and their layer names, a role's
HTTP pages, waiting for a condition, test videos, free consecutive ports, and the offline
oracle (a whole clip through the model in one pass, which streaming must equal).

Torch is imported inside `offline` only: most tests that use these helpers never need it.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import pytest

from streamconv.capture.sources import open_source, synthetic_frame
from streamconv.config import load_settings
from streamconv.worker.pixels import frame_to_chw
from tests.conftest import PRESETS

DEFAULT = PRESETS / "default.toml"
RETINA = PRESETS / "retina.toml"


def preset_layers(config: str | Path) -> tuple[str, ...]:
    """The layer names of a config (a file or a preset's name), in order, as it spells them."""
    return tuple(spec.name for spec in load_settings(config, environ={}).layers)


class Served(Protocol):
    http: str  # e.g. http://127.0.0.1:40123


def get(role: Served, path: str) -> str:
    """A page of a role's HTTP server (/status, /metrics, ...), as text."""
    with urllib.request.urlopen(role.http + path, timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def status(role: Served) -> dict[str, Any]:
    """The role's /status, read from its real HTTP endpoint."""
    result: dict[str, Any] = json.loads(get(role, "/status"))
    return result


def until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait until `check()` holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def write_video(path: Path, frames: int, offset: int = 0, fps: float = 30.0) -> Path:
    """An mp4 of `frames` synthetic 64x48 frames, starting at synthetic frame `offset`."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for i in range(frames):
        writer.write(synthetic_frame(i + offset, 64, 48))
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    """The decoded frames of a file, as the capture reads them."""
    source = open_source(str(path))
    frames = list(source)
    source.close()
    return frames


def two_ports() -> tuple[int, int]:
    """Free consecutive ports (the capture finds the output at its input port + 1), below the
    ephemeral range: a client reconnecting to a dead port from an ephemeral port can connect
    to itself on loopback, and that port is then taken."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port, port + 1
    pytest.skip("no two consecutive free ports")


def port_pairs(n: int) -> list[int]:
    """The first ports of `n` pairs like two_ports', no port in two pairs (two calls of
    two_ports may hand out overlapping pairs: one's p + 1 the other's p)."""
    firsts: list[int] = []
    while len(firsts) < n:
        port = two_ports()[0]
        if all(abs(port - other) > 1 for other in firsts):
            firsts.append(port)
    return firsts


def offline(
    frames: Sequence[np.ndarray], config: str | Path = RETINA, color: str = "gray"
) -> dict[str, np.ndarray]:
    """Every layer's output over the whole clip in one pass, (T, C, H, W) per layer: frames
    through the worker's colour step, then the model of `config` on the CPU."""
    import torch

    from streamconv.layers import Output
    from streamconv.model import build_model

    settings = load_settings(config, environ={})
    chw = [frame_to_chw(f, color, settings.worker.in_channels) for f in frames]
    model = build_model(settings, torch.device("cpu"))
    with torch.inference_mode():
        out = model.run(np.stack(chw, axis=1)[None])
    assert isinstance(out, Output)
    return {name: out[name][0].transpose(0, 1).numpy() for name in out.keys()}


def table_counts(stdout: str) -> dict[str, int]:
    """frames per 'stream/layer' row of the last table `subscribe` or `run` printed."""
    last = stdout.rsplit("stream/layer", 1)
    assert len(last) == 2, f"no table in:\n{stdout}"
    rows = re.findall(r"^(\S+/\S+)\s+(\d+)\s", last[1], flags=re.MULTILINE)
    return {name: int(frames) for name, frames in rows}


# A worker inside the test's own process: no HTTP, the CPU, ports the OS picks.
IN_PROCESS = {"http": "off", "device": "cpu", "input": "tcp://127.0.0.1:*",
              "output": "tcp://127.0.0.1:*"}  # fmt: skip


@contextmanager
def running(worker: Any) -> Iterator[tuple[str, str]]:
    """Run `worker` (a streamconv.worker.Worker) in a thread for the block; yields its input
    and output as bound; stops it after, and fails if its thread does not end."""
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert worker.ready.wait(60), "the worker never became ready"
        assert worker.endpoints is not None
        yield worker.endpoints
    finally:
        worker.stop()
        thread.join(15)
    assert not thread.is_alive(), "the worker's thread did not end"
