"""The local simulation of a sharded site: three workers, six streams routed by the capture's
rendezvous hashing, outputs fanned in (through `streamconv proxy`, or one subscriber
connected to every shard). Each stream lands on its owner only and equals the offline
pipeline; a shard killed and started again resumes its streams from their checkpoints while
the other shards' streams never pause."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamconv.client import Subscriber
from streamconv.wire.shards import owner
from tests.conftest import REPO
from tests.helpers import (
    RETINA,
    offline,
    port_pairs,
    preset_layers,
    read_video,
    status,
    two_ports,
    write_video,
)
from tests.integration.conftest import WorkerProc, launch

pytestmark = pytest.mark.integration

LAYERS = preset_layers(RETINA)
STREAMS = [f"cam{i}" for i in range(6)]


class Collector:
    """Every output of every stream, with its arrival time, from one subscriber (a thread)."""

    def __init__(self, sub: Subscriber, streams: list[str]) -> None:
        self.sub, self.streams = sub, streams
        self.got: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        self.heads: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        self.arrivals: dict[str, list[float]] = {s: [] for s in streams}
        self.ended: set[tuple[str, str]] = set()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while len(self.ended) < len(self.streams) * len(LAYERS):
                got = self.sub.poll(90)
                assert got is not None, "no output for 90 s"
                head, array = got
                key = (head["stream"], head["layer"])
                if array is None:
                    self.ended.add(key)
                    continue
                self.got.setdefault(key, {}).setdefault(head["seq"], array)
                self.heads.setdefault(key, {}).setdefault(head["seq"], head)
                self.arrivals[head["stream"]].append(time.monotonic())
        except BaseException as e:  # reported by the test thread
            self.errors.append(e)

    def check(self, videos: dict[str, Path], frames: int) -> None:
        self.thread.join(150)
        assert not self.thread.is_alive(), f"ended: {sorted(self.ended)}"
        assert not self.errors, self.errors
        for stream, video in videos.items():
            expected = offline(read_video(video))
            for layer in LAYERS:
                seqs = sorted(self.got[(stream, layer)])
                assert seqs == list(range(frames)), (stream, layer)
                heads = self.heads[(stream, layer)]
                resets = [s for s in seqs if heads[s].get("discontinuity")]
                assert resets == [0], (stream, layer, resets)
                stacked = np.stack([self.got[(stream, layer)][s] for s in seqs])
                err = np.abs(stacked - expected[layer]).max() / np.abs(expected[layer]).max()
                assert err < 1e-5, (stream, layer, err)


def start_shards(
    start_worker: Callable[..., WorkerProc], n: int, *flags: str, ports: list[int] | None = None
) -> tuple[list[WorkerProc], list[int]]:
    ports = ports or port_pairs(n)
    workers = [
        start_worker(RETINA, "--input", f"tcp://127.0.0.1:{p}", "--output",
                     f"tcp://127.0.0.1:{p + 1}", *flags, wait=False)
        for p in ports
    ]  # fmt: skip
    for w in workers:
        w.wait_for_line("worker ready", 60)
        line = next(x for x in w.lines if "http on " in x)
        w.http = line.split("http on ")[1].split()[0]
    return workers, ports


def captures(
    videos: dict[str, Path], shards: str, env: dict[str, str], *extra: str
) -> dict[str, subprocess.Popen[str]]:
    procs = {}
    for stream, video in videos.items():
        cmd = [sys.executable, "-m", "streamconv", "capture", str(video), "--stream", stream,
               "--shards", shards, "--wait-subscriber", "--wait", "60", *extra]  # fmt: skip
        procs[stream] = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    return procs


def finish(procs: dict[str, subprocess.Popen[str]]) -> dict[str, str]:
    logs = {}
    for stream, proc in procs.items():
        try:
            _, logs[stream] = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        assert proc.returncode == 0, (stream, logs.get(stream))
    return logs


def test_streams_land_on_their_owner_and_come_back_exact_through_the_proxy(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str], tmp_path: Path
) -> None:
    frames = 40
    videos = {
        s: write_video(tmp_path / f"{s}.mp4", frames, offset=11 * i) for i, s in enumerate(STREAMS)
    }
    *pairs, free = port_pairs(4)
    workers, ports = start_shards(start_worker, 3, ports=pairs)
    inputs = [f"tcp://127.0.0.1:{p}" for p in ports]
    listen = f"tcp://127.0.0.1:{free}"
    proxy = launch([sys.executable, "-m", "streamconv", "proxy", "--listen", listen, "--shards",
                    ",".join(f"tcp://127.0.0.1:{p + 1}" for p in ports)], python_env)  # fmt: skip
    try:
        proxy.wait_for_line("proxy on", 30)
        sub = Subscriber(listen, hwm=100_000, timeout_s=90)
        collector = Collector(sub, STREAMS)
        try:
            finish(captures(videos, ",".join(inputs), python_env))
            collector.check(videos, frames)
        finally:
            sub.close()
        for worker, endpoint in zip(workers, inputs, strict=True):
            held = set(status(worker)["streams"])
            mine = {s for s in STREAMS if owner(s, inputs) == endpoint}
            assert held == mine, (endpoint, held, mine)
        assert proxy.stop() == 0
        assert "messages forwarded" in proxy.log()
    finally:
        proxy.reap()


def test_a_shard_killed_and_restarted_resumes_its_streams_while_the_others_go_on(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str], tmp_path: Path
) -> None:
    frames = 150  # 5 s at 30 frames/s
    videos = {
        s: write_video(tmp_path / f"{s}.mp4", frames, offset=7 * i) for i, s in enumerate(STREAMS)
    }
    while True:  # ports that leave some stream off the victim (1 in 243 would not)
        ports = port_pairs(3)
        inputs = [f"tcp://127.0.0.1:{p}" for p in ports]
        victim = owner(STREAMS[0], inputs)
        if any(owner(s, inputs) != victim for s in STREAMS):
            break
    index = inputs.index(victim)
    flags = ("--checkpoint-every", "8")

    def shard_flags(i: int) -> tuple[str, ...]:
        return (*flags, "--checkpoint-dir", str(tmp_path / f"ckpt{i}"))

    workers = [start_shards(start_worker, 1, *shard_flags(i), ports=[p])[0][0]
               for i, p in enumerate(ports)]  # fmt: skip
    outputs = [f"tcp://127.0.0.1:{p + 1}" for p in ports]
    sub = Subscriber(outputs, hwm=100_000, timeout_s=90)  # one socket, every shard
    collector = Collector(sub, STREAMS)
    try:
        procs = captures(videos, ",".join(inputs), python_env, "--realtime")
        deadline = time.monotonic() + 60
        while status(workers[index])["counts"].get("checkpoints", 0) < 1:
            assert time.monotonic() < deadline, "the victim wrote no checkpoint"
            time.sleep(0.01)
        time.sleep(0.5)
        killed_at = time.monotonic()
        workers[index].stop(signal.SIGKILL)
        time.sleep(1.0)
        start_shards(start_worker, 1, *shard_flags(index), ports=[ports[index]])
        back_at = time.monotonic()
        logs = finish(procs)
        collector.check(videos, frames)
    finally:
        sub.close()
    moved = [s for s in STREAMS if owner(s, inputs) == victim]
    assert any("frames again" in logs[s] for s in moved)  # resent from the last checkpoint
    others = [s for s in STREAMS if s not in moved]
    assert others, "every stream on one shard: pick other stream names"
    for stream in others:  # never paused: outputs kept coming while the victim was down
        during = [t for t in collector.arrivals[stream] if killed_at <= t <= back_at]
        gaps = [b - a for a, b in itertools.pairwise([killed_at, *during, back_at])]
        assert max(gaps) < 1.0, (stream, gaps)


def test_a_capture_on_dns_shards_reroutes_when_its_owner_never_answers(
    start_worker: Callable[..., WorkerProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `dns://` shard list that changes while the first owner stays silent: the capture
    resolves again after REROUTE_S and sends the whole stream to the new owner."""
    from streamconv.capture.role import Capture
    from streamconv.client import routing

    worker = start_worker()
    dead = f"tcp://127.0.0.1:{two_ports()[0]}"  # nobody listens there
    stream = next(
        f"cam{i}" for i in range(100) if owner(f"cam{i}", [dead, worker.input]) == worker.input
    )
    answers = iter([[dead], [dead, worker.input]])  # the service gains a ready pod
    calls: list[list[str]] = []

    def fake_resolve(shards: list[str]) -> list[str]:
        assert shards == ["dns://streamconv-worker:5555"]
        calls.append(next(answers, [dead, worker.input]))
        return calls[-1]

    monkeypatch.setattr(routing, "resolve", fake_resolve)
    monkeypatch.setattr(routing, "REROUTE_S", 0.5)
    capture = Capture("synthetic:32x24:10", stream=stream, shards=["dns://streamconv-worker:5555"],
                      wait_s=30, resume=False)  # fmt: skip
    assert capture.endpoint == dead
    stats = capture.run()
    assert capture.endpoint == worker.input
    assert len(calls) >= 2
    assert (stats.sent, stats.dropped) == (10, 0)
    deadline = time.monotonic() + 10
    while status(worker)["streams"].get(stream, {}).get("frames_processed") != 10:
        assert time.monotonic() < deadline, status(worker)["streams"]
        time.sleep(0.05)


def test_a_running_stream_moves_to_a_new_shard_and_continues_exactly(
    start_worker: Callable[..., WorkerProc], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Scaling from one shard to two with a shared checkpoint folder: the capture (dns://
    shards) follows its stream to the new owner when the old one stops, the new owner takes
    the stream over from the checkpoint the old one wrote at shutdown, and the subscriber
    sees every frame once, exact, with no discontinuity after the first."""
    from streamconv.capture.role import Capture
    from streamconv.client import routing

    frames = 150
    a, b = port_pairs(2)
    a_in, b_in = f"tcp://127.0.0.1:{a}", f"tcp://127.0.0.1:{b}"
    stream = next(f"cam{i}" for i in range(100) if owner(f"cam{i}", [a_in, b_in]) == b_in)
    video = write_video(tmp_path / "clip.mp4", frames, offset=3)
    folder = str(tmp_path / "shared")
    flags = ("--checkpoint-dir", folder, "--checkpoint-every", "8")

    def shard(port: int, shards: list[str]) -> WorkerProc:
        env = {"STREAMCONV_WORKER__SHARDS": ",".join(shards),
               "STREAMCONV_WORKER__SHARD": f"tcp://127.0.0.1:{port}"}  # fmt: skip
        ends = ("--input", f"tcp://127.0.0.1:{port}", "--output", f"tcp://127.0.0.1:{port + 1}")
        worker = start_worker(RETINA, *ends, *flags, env=env, wait=False)
        worker.wait_for_line("worker ready", 60)
        line = next(x for x in worker.lines if "http on " in x)
        worker.http = line.split("http on ")[1].split()[0]
        return worker

    old = shard(a, [a_in])
    dns = [[a_in]]  # what the service name resolves to, now
    monkeypatch.setattr(routing, "resolve", lambda shards: list(dns[-1]))
    sub = Subscriber([f"tcp://127.0.0.1:{a + 1}", f"tcp://127.0.0.1:{b + 1}"], hwm=100_000,
                     timeout_s=90)  # fmt: skip
    collector = Collector(sub, [stream])
    capture = Capture(str(video), stream=stream, shards=["dns://streamconv-worker:5555"],
                      realtime=True, wait_subscriber=True, wait_s=60)  # fmt: skip
    assert capture.endpoint == a_in
    result: list[object] = []
    runner = threading.Thread(target=lambda: result.append(capture.run()), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while status(old)["counts"].get("checkpoints", 0) < 2:
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
        new = shard(b, [a_in, b_in])  # scale up: the new pod, then the list, then the old one
        dns.append([a_in, b_in])
        assert old.stop(signal.SIGTERM) == 0  # writes the stream's checkpoint as it stops
        runner.join(120)
        assert not runner.is_alive(), "the capture never finished"
        collector.check({stream: video}, frames)
    finally:
        capture.stop()
        sub.close()
    assert capture.endpoint == b_in
    assert "taken over from another shard's checkpoint" in new.log(), new.log()
    assert result
    assert status(new)["streams"][stream]["frames_processed"] > 0
