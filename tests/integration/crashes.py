"""Seeded kill schedules over real processes: issue 16's defining property of crash safety.

A schedule (drawn from its seed) picks a chunk size (1, 5, 8), a checkpoint interval (1, 10,
64 frames), one to three lossless file captures (paced in real time or at full speed), a
lossless subscriber that takes 0, 0.5 or 2 ms per output (the captures wait for it), and
one to three kills of the worker (SIGKILL) of these kinds: at a random moment, right after a
checkpoint was written, during a resend (soon after a restart), twice in quick succession,
and while the captures are blocked by back-pressure (the worker stopped with SIGSTOP first).
A schedule may also stop it cleanly ("sigterm", never drawn: chosen by a test), which must
exit 0.
After each kill the worker is started again with the same command. Every run must end with
one output per frame per layer, no gap, a discontinuity only at a stream's first output,
equal to the offline pipeline (float32, relative error < 1e-5), the subscriber reporting no
loss and the last worker no missing frame. `run_schedule` returns what happened, with the
seed in every failure message.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamconv.client import Subscriber
from tests.conftest import REPO
from tests.helpers import RETINA, offline, preset_layers, read_video, two_ports, write_video

LAYERS = preset_layers(RETINA)
KINDS = ("random", "after_checkpoint", "during_resend", "double", "blocked")
FPS = 30.0
READY_S = 60.0


@dataclass
class Schedule:
    seed: int
    chunk: int
    every: int
    streams: int
    frames: int
    realtime: bool
    kills: list[str]
    waits: list[float]  # per kill: seconds before it (its kind decides what they mean)
    slow_s: float = 0.0  # the lossless subscriber's time per output

    @classmethod
    def draw(cls, seed: int) -> Schedule:
        rng = random.Random(seed)
        kills = rng.choices(KINDS, k=rng.randint(1, 3))
        return cls(seed, rng.choice((1, 5, 8)), rng.choice((1, 10, 64)), rng.randint(1, 3),
                   rng.randint(90, 180), rng.random() < 0.5, kills,
                   [rng.uniform(0.0, 1.0) for _ in kills],
                   rng.choice((0.0, 0.0005, 0.002)))  # fmt: skip


@dataclass
class Outcome:
    schedule: Schedule
    kills: int = 0
    seconds: float = 0.0
    resent: int = 0  # frames the captures sent again
    duplicates: int = 0  # outputs the subscriber already had
    problems: list[str] = field(default_factory=list)
    disorder: list[str] = field(default_factory=list)  # non-replay outputs that went back

    def line(self) -> str:
        return json.dumps(asdict(self))


class Worker:
    """`streamconv worker` as a child process, started again with the same command."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.env, self.log_path = cmd, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = ""

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL)  # fmt: skip
        start, size = time.monotonic(), self.log_path.stat().st_size
        while time.monotonic() - start < READY_S:
            text = self.log_path.read_text(errors="replace")
            if "worker ready" in text[size:]:
                found = re.findall(r"http on (http://\S+)", text)
                self.http = found[-1] if found else ""
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited at start:\n{self.tail()}")
            time.sleep(0.02)
        raise RuntimeError(f"the worker was not ready within {READY_S} s:\n{self.tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def term(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (`docker stop`); its exit code, None if it did not exit in time."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.http + "/status", timeout=5) as reply:
            return dict(json.load(reply))

    def checkpoints(self) -> int:
        try:
            return int(self.status()["counts"].get("checkpoints", 0))
        except OSError:
            return 0

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Collector:
    """One lossless subscriber to every stream, on its own thread, taking `slow_s` per output
    (the captures wait for it)."""

    def __init__(self, output: str, input: str, streams: list[str], slow_s: float) -> None:
        self.sub = Subscriber(output, timeout_s=5, lossless=True, inputs=[input])
        self.slow_s = slow_s
        self.want = {(s, layer) for s in streams for layer in LAYERS}
        self.got: dict[tuple[str, str], dict[int, tuple[dict[str, Any], np.ndarray]]]
        self.got = defaultdict(dict)
        self.ended: set[tuple[str, str]] = set()
        self.errors: list[str] = []
        self.last: dict[tuple[str, str], int] = {}  # the newest non-replay seq per key
        self.disorder: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._collect, daemon=True)

    def _collect(self) -> None:
        try:
            while not self._stop.is_set() and self.ended != self.want:
                got = self.sub.poll(0.2)
                if got is None:
                    continue
                head, array = got
                key = (head["stream"], head["layer"])
                if array is None:
                    self.ended.add(key)
                elif head["seq"] in self.got[key] and not head.get("replay"):
                    self.errors.append(f"{key} seq {head['seq']} arrived twice, not a replay")
                else:
                    self.got[key].setdefault(head["seq"], (head, array))
                    self._order(key, head)
                    time.sleep(self.slow_s)
        except Exception as e:  # reported by the caller
            self.errors.append(repr(e))

    def _order(self, key: tuple[str, str], head: dict[str, Any]) -> None:
        if head.get("replay"):  # a frame resent after a restart: its output comes again
            return
        last = self.last.get(key, -1)
        if head["seq"] <= last:
            self.disorder.append(f"{key} seq {head['seq']} after {last}")
        self.last[key] = head["seq"]

    def close(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)
        self._stop.set()
        self.thread.join(5)
        self.sub.close()


def run_schedule(schedule: Schedule, work: Path, env: dict[str, str]) -> Outcome:
    """Run `schedule` in folder `work`; the outcome lists every problem found."""
    out, began = Outcome(schedule), time.monotonic()
    names = [f"s{i}" for i in range(schedule.streams)]
    videos = {n: write_video(work / f"{n}.mp4", schedule.frames, 97 * i, FPS)
              for i, n in enumerate(names)}  # fmt: skip
    inp, outp = two_ports()
    cmd = [sys.executable, "-m", "streamconv", "worker", "--config", str(RETINA), "--device",
           "cpu", "--input", f"tcp://127.0.0.1:{inp}", "--output", f"tcp://127.0.0.1:{outp}",
           "--http", "127.0.0.1:0", "--chunk", str(schedule.chunk), "--checkpoint-dir",
           str(work / "ckpt"), "--checkpoint-every", str(schedule.every)]  # fmt: skip
    worker = Worker(cmd, env, work / "worker.log")
    worker.start()
    collector = Collector(f"tcp://127.0.0.1:{outp}", f"tcp://127.0.0.1:{inp}", names,
                          schedule.slow_s)  # fmt: skip
    collector.sub.wait_ready(f"tcp://127.0.0.1:{inp}")
    collector.thread.start()
    captures = {n: _capture(videos[n], n, inp, schedule.realtime, env, work) for n in names}
    try:
        for kind, wait in zip(schedule.kills, schedule.waits, strict=True):
            if all(p.poll() is not None for p in captures.values()):
                break
            problem = _kill(kind, wait, worker, schedule)
            if problem:
                out.problems.append(f"seed {schedule.seed}: {problem}")
            out.kills += 2 if kind == "double" else 1
            worker.start()
        for name, proc in captures.items():
            try:
                proc.wait(180)
            except subprocess.TimeoutExpired:
                out.problems.append(f"capture {name} did not end within 180 s")
        collector.close(60)
    finally:
        for proc in captures.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        try:
            final = worker.status()
        except OSError:
            final = {}
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill()
    for name, proc in captures.items():
        text = (work / f"{name}.log").read_text(errors="replace")
        out.resent += sum(int(n) for n in re.findall(r"sent (\d+) frames again", text))
        if proc.returncode != 0:
            out.problems.append(f"capture {name} exited {proc.returncode}:\n{text[-2000:]}")
    out.problems += collector.errors
    out.duplicates = collector.sub.duplicates
    out.disorder = collector.disorder
    _check(out, collector, videos, final)
    out.seconds = round(time.monotonic() - began, 1)
    if out.problems:
        out.problems.append(f"worker log (last lines):\n{worker.tail()}")
    return out


def _capture(video: Path, name: str, port: int, realtime: bool, env: dict[str, str],
             work: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    cmd = [sys.executable, "-m", "streamconv", "capture", str(video), "--stream", name,
           "--connect", f"tcp://127.0.0.1:{port}", "--mode", "lossless", "--wait-subscriber",
           "--wait", "90", *(["--realtime"] if realtime else [])]  # fmt: skip
    with (work / f"{name}.log").open("wb") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)  # fmt: skip


def _kill(kind: str, wait: float, worker: Worker, schedule: Schedule) -> str | None:
    """Stop the worker as `kind` says (SIGKILL but for "sigterm"); what went wrong, if any."""
    duration = schedule.frames / FPS if schedule.realtime else 1.5
    if kind == "sigterm":  # a clean stop at a random moment: exit 0, nothing lost after it
        time.sleep(wait * duration * 0.8)
        code = worker.term()
        return None if code == 0 else f"SIGTERM: the worker exited {code}:\n{worker.tail()}"
    if kind == "random":
        time.sleep(wait * duration * 0.8)
    elif kind == "after_checkpoint":
        start, seen = time.monotonic(), worker.checkpoints()
        while worker.checkpoints() == seen and time.monotonic() - start < 10:
            time.sleep(0.002)
    elif kind == "during_resend":
        time.sleep(0.05 + 0.5 * wait)
    elif kind == "double":
        time.sleep(wait * duration * 0.5)
        worker.kill()
        worker.start()
        time.sleep(0.3 * wait)
    elif kind == "blocked":
        time.sleep(wait * duration * 0.5)
        worker.pause()  # its queue fills: the captures block on back-pressure
        time.sleep(0.5)
    worker.kill()
    return None


def _check(out: Outcome, collector: Collector, videos: dict[str, Path],
           final: dict[str, Any]) -> None:  # fmt: skip
    seed, frames = out.schedule.seed, out.schedule.frames
    for name, video in videos.items():
        expected = offline(read_video(video), RETINA)
        for layer in LAYERS:
            got = collector.got.get((name, layer), {})
            seqs = sorted(got)
            if seqs != list(range(frames)):
                missing = sorted(set(range(frames)) - set(seqs))
                out.problems.append(f"seed {seed}: {name}/{layer} missing {len(missing)} "
                                    f"outputs: {missing[:20]}")  # fmt: skip
                continue
            resets = [s for s in seqs if got[s][0].get("discontinuity")]
            if resets != [0]:
                out.problems.append(f"seed {seed}: {name}/{layer} discontinuities at {resets}")
            stacked = np.stack([got[s][1] for s in seqs])
            err = float(np.abs(stacked - expected[layer]).max() / np.abs(expected[layer]).max())
            if not err < 1e-5:
                out.problems.append(f"seed {seed}: {name}/{layer} relative error {err:.2e}")
    losses = collector.sub.losses
    if losses.missed() or losses.not_ended():
        out.problems.append(f"seed {seed}: the subscriber reports {losses.report()}")
    missing = final.get("counts", {}).get("frames_missing", 0)
    if missing:
        out.problems.append(f"seed {seed}: the last worker counts {missing} frames missing")
