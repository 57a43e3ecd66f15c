"""The paths a newcomer takes: every command with its defaults, the package installed outside
the checkout, `--version`, `presets`, Ctrl-C on `run`, a GPU asked for where there is none."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streamconv.config import load_settings
from tests.conftest import REPO

pytestmark = pytest.mark.integration

DEFAULT_PORTS = (5555, 5556, 5557)


def streamconv(
    *args: str, cwd: Path, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamconv", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_version_and_presets(python_env: dict[str, str], tmp_path: Path) -> None:
    done = streamconv("--version", cwd=tmp_path, env=python_env)
    assert done.returncode == 0
    assert done.stdout.startswith("streamconv ")
    listed = streamconv("presets", cwd=tmp_path, env=python_env)
    assert listed.stdout.split() == ["default", "retina"]
    printed = streamconv("presets", "retina", cwd=tmp_path, env=python_env)
    path = tmp_path / "mine.toml"
    path.write_text(printed.stdout)
    assert load_settings(path, environ={}).layers[0].name == "opl"
    missing = streamconv("presets", "nope", cwd=tmp_path, env=python_env)
    assert missing.returncode == 2
    assert "no preset 'nope' (presets: default, retina)" in missing.stderr


def test_a_gpu_that_is_not_there_is_a_clear_config_error(
    python_env: dict[str, str], tmp_path: Path
) -> None:
    done = streamconv("worker", "--device", "cuda:1", "--http", "off", "--input",
                      "tcp://127.0.0.1:*", "--output", "tcp://127.0.0.1:*", cwd=tmp_path,
                      env=python_env)  # fmt: skip
    if "sees 1 GPU" not in done.stderr and "no CUDA GPU" not in done.stderr:
        pytest.skip("this machine has two or more GPUs")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def test_the_installed_package_runs_outside_the_checkout(
    python_env: dict[str, str], tmp_path: Path
) -> None:
    # Build the wheel, install it (no dependencies: they are in this environment) into a
    # folder of its own, and run it from elsewhere with the checkout off the path.
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, timeout=300, capture_output=True)  # fmt: skip
    [wheel] = wheels.glob("streamconv-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300, capture_output=True)  # fmt: skip
    env = {**python_env, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import streamconv; print(streamconv.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert where.stdout.startswith(str(target)), where.stdout
    assert streamconv("presets", cwd=work, env=env).stdout.split() == ["default", "retina"]
    assets = subprocess.run(  # the view's page is package data too
        [sys.executable, "-c", "from streamconv.client.view.server import app, Served; "
         "from streamconv.client.view.hub import Hub; from streamconv.client.view.page import "
         "Encoder; app(Served(Hub(), Encoder(80), 'tcp://x', 15.0, 5.0)); print('ok')"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert assets.stdout.strip() == "ok", assets.stderr
    # The proxy from the installed package: up, then `docker stop` (SIGTERM) exits 0.
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        shard, listen = (f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in (a, b))
    proxy = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "proxy", "--shards", shard, "--listen", listen],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proxy.stderr is not None
        line = proxy.stderr.readline()  # its first line says where it listens
        assert f"proxy on {listen}" in line, line
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(15) == 0
    finally:
        if proxy.poll() is None:
            proxy.kill()
        proxy.communicate(timeout=10)
    done = streamconv("run", "sample", "--config", "retina", "--device", "cpu", cwd=work,
                      env=env, timeout_s=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "streamed == offline" in done.stdout
    assert "(OK)" in done.stdout


def _ports_free() -> bool:
    for port in DEFAULT_PORTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_every_role_with_its_defaults(python_env: dict[str, str], tmp_path: Path) -> None:
    """worker, subscribe and capture with no flags at all, as the README's first steps."""
    if not _ports_free():
        pytest.skip(f"the default ports {DEFAULT_PORTS} are in use on this machine")
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamconv", *args], cwd=tmp_path, env=python_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        return proc

    try:
        worker = start("worker")
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:5557/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "worker never became ready"
            time.sleep(0.2)
        subscriber = start("subscribe")  # everything, until stopped
        capture = subprocess.run(
            [sys.executable, "-m", "streamconv", "capture", "sample", "--wait-subscriber"],
            cwd=tmp_path, env=python_env, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        assert capture.returncode == 0, capture.stderr
        with urllib.request.urlopen("http://127.0.0.1:5557/status", timeout=5) as r:
            status = json.load(r)
        deadline = time.monotonic() + 30
        while status["streams"].get("sample", {}).get("state") != "eos":
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
            with urllib.request.urlopen("http://127.0.0.1:5557/status", timeout=5) as r:
                status = json.load(r)
        time.sleep(0.5)  # the last outputs are on their way to the subscriber
        subscriber.send_signal(signal.SIGTERM)
        out, err = subscriber.communicate(timeout=15)
        assert subscriber.returncode == 0, err
        rows = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
                if line.startswith("sample/")}  # fmt: skip
        assert set(rows) == {"sample/smooth", "sample/change", "sample/motion"}, out
        assert set(rows.values()) == {120}, out
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_run_prints_the_summary(
    python_env: dict[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "run", "synthetic:64x48:100000", "--realtime",
         "--device", "cpu", "--out", str(tmp_path)],
        cwd=tmp_path, env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(8)  # started, and some outputs went through
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stream/layer" in out, out
    assert "stopped by a signal" in out
    assert "Traceback" not in err, err


def test_sigterm_during_startup_exits_cleanly(python_env: dict[str, str], tmp_path: Path) -> None:
    # `docker stop` right after `docker run`: the signal lands while torch is still importing.
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "worker", "--http", "off", "--input",
         "tcp://127.0.0.1:*", "--output", "tcp://127.0.0.1:*"],
        cwd=tmp_path, env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
