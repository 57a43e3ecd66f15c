"""Issue 16's cases with real processes: nothing lost, or every loss counted where the user
looks (the subscriber's summary and exit code, the worker's /status)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from streamconv.client import Sender
from tests.conftest import REPO
from tests.helpers import status, until
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration


def readme_client_example() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("```python\nimport numpy as np\nfrom streamconv.client import Sender")
    return text[start + len("```python\n") : text.index("```", start + 10)]


def test_the_readme_client_example_receives_every_output(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    """Case 4: as written (only the endpoints changed), the example gets all 100 outputs."""
    worker = start_worker()
    code = readme_client_example()
    code = code.replace("tcp://127.0.0.1:5555", worker.input)
    code = code.replace("tcp://127.0.0.1:5556", worker.output)
    code = code.replace("        ...", "        n = locals().get('n', 0) + (frame is not None)")
    code += "print('received', n)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=python_env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "outputs missed: 0" in done.stdout
    assert "received 100" in done.stdout


def run_subscribe(env: dict[str, str], *flags: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "streamconv", "subscribe", *flags]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_subscribe_that_joined_late_reports_the_missed_outputs_and_exits_4(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    """A subscriber that joined after the first 30 frames: the summary names 30 outputs
    missed at the start of every layer, and the exit code says so (4; 0 with --allow-loss)."""
    worker = start_worker()
    with Sender(worker.input, stream="late", wait_s=30) as sender:
        for i in range(30):
            sender.send(np.full((24, 32), i, np.uint8))
        until(lambda: status(worker)["streams"].get("late", {}).get("frames_processed") == 30,
              "30 frames processed")  # fmt: skip
        flags = ("--connect", worker.output, "--stream", "late", "--timeout", "20")
        subs = [run_subscribe(python_env, *flags, *extra) for extra in ((), ("--allow-loss",))]
        until(lambda: sum(n for t, n in status(worker)["subscriptions"].items()
                          if t.startswith("late/")) == 2, "both subscribed")  # fmt: skip
        for i in range(30, 40):
            sender.send(np.full((24, 32), i, np.uint8))
    outs = [p.communicate(timeout=60) for p in subs]
    strict, relaxed = subs
    assert strict.returncode == 4, outs[0]
    assert relaxed.returncode == 0, outs[1]
    for out, _ in outs:
        assert "received 10 of 40, missed 30 (at the start 30, in gaps 0, at the end 0)" in out


def test_a_lossless_capture_says_at_once_that_it_cannot_resume(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    """Case 2: the worker's output is not at the input port + 1 and no --output is given:
    the capture says in one line, before any crash, that resume is off and how to fix it;
    with the right --output it does not, and waits for the worker to confirm the end."""
    worker = start_worker()
    cmd = [sys.executable, "-m", "streamconv", "capture", "synthetic", "--limit", "20",
           "--mode", "lossless", "--connect", worker.input]  # fmt: skip
    wrong = subprocess.run(cmd, cwd=REPO, env=python_env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert wrong.returncode == 0, wrong.stderr
    off = [x for x in wrong.stderr.splitlines() if "resume after a worker crash is OFF" in x]
    assert len(off) == 1, wrong.stderr
    assert "--output" in off[0]
    right = subprocess.run([*cmd, "--output", worker.output], cwd=REPO, env=python_env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert right.returncode == 0, right.stderr
    assert "is OFF" not in right.stderr
    assert "the worker confirmed it ran every frame" in right.stderr


def test_a_slow_lossless_subscriber_holds_the_capture_back_and_loses_nothing(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    """Case 3: a file captured at full speed, a subscriber that takes 2 ms per output. A plain
    subscriber (queues of 50 + 200 messages) loses outputs and says how many; a lossless one
    gets every output, because the worker holds the capture back: it never
    runs more than its credit window ahead of what the subscriber consumed."""
    from streamconv.client import Subscriber

    worker = start_worker(env={"STREAMCONV_WORKER__OUTPUT__HWM": "200"})
    layers = ["smooth", "change", "motion"]

    def take(sub: Subscriber) -> tuple[int, int]:
        """(outputs received, most frames the worker ran ahead of the one just consumed)"""
        got, ahead = 0, 0
        while not sub.ended and (message := sub.poll(5.0)) is not None:
            head, array = message
            if array is not None:
                got += 1
                if head["layer"] == "motion" and head["seq"] % 50 == 0:
                    processed = status(worker)["streams"][head["stream"]]["frames_processed"]
                    ahead = max(ahead, processed - head["seq"])
                time.sleep(0.002)
        return got, ahead

    for lossless in (False, True):
        name = "lossless" if lossless else "plain"
        with Subscriber(worker.output, stream=name, layers=layers, hwm=50, timeout_s=20,
                        lossless=lossless, inputs=[worker.input]) as sub:  # fmt: skip
            sub.wait_ready(worker.input)
            capture = subprocess.Popen(
                [sys.executable, "-m", "streamconv", "capture", "synthetic", "--limit", "300",
                 "--stream", name, "--resize", "160x120", "--mode", "lossless", "--connect",
                 worker.input, "--output", worker.output],
                cwd=REPO, env=python_env, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            got, ahead = take(sub)
            _, err = capture.communicate(timeout=120)
            assert capture.returncode == 0, err
            if lossless:
                assert got == 3 * 300
                assert sub.losses.missed() == 0
                assert ahead <= 32 + 8 + 16, ahead  # credit window + ack step + a chunk
            else:
                assert got < 3 * 300
                lost = sub.losses.missed(name)  # the eos may be lost too: then the end is unknown
                assert lost == 3 * 300 - got or sub.losses.not_ended()


@pytest.mark.parametrize(
    ("env", "reason"),
    [({"STREAMCONV_WORKER__MAX_MESSAGE_BYTES": "6000"}, "oversize"),
     ({"STREAMCONV_WORKER__MAX_STREAMS": "1"}, "too_many_streams")],
)  # fmt: skip
def test_a_capture_whose_stream_the_worker_drops_says_so_and_exits_5(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str], env: dict[str, str],
    reason: str,
) -> None:  # fmt: skip
    """Case 6: the worker drops every frame of the stream (too large; no room for another
    stream); the capture learns it from the worker, says why and exits 5, not 0."""
    worker = start_worker(env=env)
    with Sender(worker.input, stream="first", wait_s=30) as holder:
        holder.send(np.zeros((8, 8), np.uint8))  # holds the only stream slot (no eos yet)
        done = subprocess.run(
            [sys.executable, "-m", "streamconv", "capture", "synthetic", "--limit", "40",
             "--resize", "64x48", "--stream", "second", "--mode", "lossless", "--connect",
             worker.input, "--output", worker.output],
            cwd=REPO, env=python_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert "dropped frames of stream second" in done.stderr
    assert reason in done.stderr


def test_wait_subscriber_on_a_wrong_output_says_so_while_it_waits(
    start_worker: Callable[..., WorkerProc], python_env: dict[str, str]
) -> None:
    """Case 2: `--wait-subscriber` listening where no worker answers waited forever without a
    word; now it says, while it waits, that the endpoint may not be the worker's output."""
    worker = start_worker()
    capture = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "capture", "synthetic", "--limit", "5",
         "--connect", worker.input, "--output", "tcp://127.0.0.1:9", "--wait-subscriber",
         "--wait", "0"],
        cwd=REPO, env=python_env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert capture.stderr is not None
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = capture.stderr.readline()
            lines.append(line)
            if "is it the output endpoint of the worker" in line:
                break
        else:
            pytest.fail("no hint while waiting:\n" + "".join(lines))
        assert "--output" in lines[-1]
    finally:
        capture.kill()
        capture.communicate(timeout=10)
