"""Trust, with real processes and sockets: CURVE keys, allow lists, stream ownership, the
per-key quota, the memory limits, and the refusal to expose plaintext sockets."""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamconv.capture.sources import synthetic_frame
from streamconv.client import Sender, Subscriber
from streamconv.errors import AuthError, ConfigError
from streamconv.wire import protocol, transport
from streamconv.wire.curve import generate, load_public, load_secret
from tests.conftest import REPO
from tests.helpers import DEFAULT, offline, preset_layers, status
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration

LAYERS = preset_layers(DEFAULT)

Start = Callable[..., WorkerProc]


class Keys:
    """worker; alice and carol may send and read; reader may only read; mallory is unknown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        generate(root, "worker")
        for name in ("alice", "carol", "reader", "mallory"):
            generate(root / "all", name)
        for folder, names in (("senders", ("alice", "carol")),
                              ("readers", ("alice", "carol", "reader"))):  # fmt: skip
            (root / folder).mkdir()
            for name in names:
                (root / folder / f"{name}.key").write_bytes(
                    (root / "all" / f"{name}.key").read_bytes()
                )

    def client(self, name: str, server: str = "worker") -> dict[str, Any]:
        server_key = (
            self.root / f"{server}.key"
            if server == "worker"
            else self.root / "all" / f"{server}.key"
        )
        return {
            "curve_secret": self.root / "all" / f"{name}.key_secret",
            "curve_server": server_key,
        }

    def worker_env(self) -> dict[str, str]:
        return {
            "STREAMCONV_WORKER__INPUT__CURVE_SECRET": str(self.root / "worker.key_secret"),
            "STREAMCONV_WORKER__INPUT__CURVE_CLIENTS": str(self.root / "senders"),
            "STREAMCONV_WORKER__OUTPUT__CURVE_SECRET": str(self.root / "worker.key_secret"),
            "STREAMCONV_WORKER__OUTPUT__CURVE_CLIENTS": str(self.root / "readers"),
        }


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


def wait_drops(worker: WorkerProc, reason: str, n: int, timeout_s: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (st := status(worker))["drops"].get(reason, 0) < n:
        assert time.monotonic() < deadline, f"{reason} never reached {n}: {st['drops']}"
        time.sleep(0.05)
    return st


def frames(n: int, w: int = 32, h: int = 24) -> list[np.ndarray]:
    return [synthetic_frame(i, w, h, channels=1) for i in range(n)]


def collect(
    sub: Subscriber, timeout_s: float = 20
) -> dict[str, list[tuple[dict[str, Any], np.ndarray]]]:
    """One stream's outputs until its eos on every layer (sub has a `stream`)."""
    out: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {name: [] for name in LAYERS}
    for head, array in sub:
        if array is not None:
            out[head["layer"]].append((head, array))
    return out


def test_authorized_clients_are_exact_and_unknown_keys_get_nothing(
    start_worker: Start, keys: Keys
) -> None:
    worker = start_worker(DEFAULT, env=keys.worker_env())
    assert status(worker)["curve"] == {"input": True, "output": True}
    clip = frames(12)
    with (
        Subscriber(worker.output, stream="cam", timeout_s=20, **keys.client("reader")) as sub,
        Subscriber(worker.output, timeout_s=5, **keys.client("mallory")) as spy,
    ):
        with Sender({"endpoint": worker.input, **keys.client("alice")}, "cam", wait_s=10) as sender:
            assert sender.wait_subscriber(worker.output)  # the reader's subscription is in
            for f in clip:
                assert sender.send(f)
        got = collect(sub)
        with pytest.raises(AuthError, match="not in the worker's curve_clients"):
            spy.poll(5.0)  # refused: a clear error, not a silent timeout
    expected = offline(clip, DEFAULT)
    for name in LAYERS:
        assert [h["seq"] for h, _ in got[name]] == list(range(len(clip)))
        np.testing.assert_allclose(np.stack([a for _, a in got[name]]), expected[name],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_unknown_sender_and_wrong_server_key_fail_fast_and_clearly(
    start_worker: Start, keys: Keys, python_env: dict[str, str]
) -> None:
    worker = start_worker(DEFAULT, env=keys.worker_env())
    start = time.monotonic()
    cases = [
        ("mallory", "worker", "not in the worker's curve_clients"),
        ("alice", "carol", "wrong --curve-server"),  # carol's key posing as the worker's
        ("reader", "worker", "not in the worker's curve_clients"),
    ]  # a reader cannot send
    for client, server, why in cases:
        with (
            Sender(
                {"endpoint": worker.input, **keys.client(client, server)}, "x", wait_s=10
            ) as sender,
            pytest.raises(AuthError, match=why),
        ):
            sender.wait_worker()
    assert time.monotonic() - start < 10, "refusals must not wait out the timeout"
    assert status(worker)["counts"].get("frames_in", 0) == 0
    # The command line: exit code 3 and the reason.
    done = subprocess.run(
        [sys.executable, "-m", "streamconv", "capture", "synthetic:32x24:5", "--connect",
         worker.input, "--curve-secret", str(keys.root / "all/mallory.key_secret"),
         "--curve-server", str(keys.root / "worker.key")],
        cwd=REPO, env=python_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "did not let this capture in" in done.stderr
    refused = status(worker)["curve_refused"]
    assert refused >= 3, refused


def test_another_key_cannot_reset_feed_or_end_an_owned_stream(
    start_worker: Start, keys: Keys, zmq_ctx: transport.Context
) -> None:
    worker = start_worker(DEFAULT, env=keys.worker_env())
    clip = frames(20)
    alice = transport.push_socket(zmq_ctx, worker.input, **keys.client("alice"))
    carol = transport.push_socket(zmq_ctx, worker.input, **keys.client("carol"))
    with Subscriber(worker.output, stream="cam", timeout_s=20, **keys.client("alice")) as sub:
        sub.wait_ready(worker.input)  # alice may send, so her probes answer
        session = protocol.new_session()
        for seq in range(10):
            transport.send(alice, protocol.encode_frame("cam", session, seq, clip[seq]))
        head, _ = sub.recv()  # the outputs carry the session: carol can learn it
        assert head["session"] == session
        transport.send(carol, protocol.encode_frame("cam", protocol.new_session(), 0, clip[0]))
        transport.send(carol, protocol.encode_frame("cam", session, 10, clip[10]))
        transport.send(carol, protocol.encode_eos("cam", session, 10))
        wait_drops(worker, "not_owner", 3)
        for seq in range(10, 20):
            transport.send(alice, protocol.encode_frame("cam", session, seq, clip[seq]))
        transport.send(alice, protocol.encode_eos("cam", session, 20))
        got = {name: [] for name in LAYERS} | {head["layer"]: [(head, _)]}
        for h, a in sub:
            if a is not None:
                got[h["layer"]].append((h, a))
    expected = offline(clip, DEFAULT)
    for name in LAYERS:
        heads = [h for h, _ in got[name]]
        assert [h["seq"] for h in heads] == list(range(20)), name
        assert [bool(h.get("discontinuity")) for h in heads] == [True] + [False] * 19
        np.testing.assert_allclose(np.stack([a for _, a in got[name]]), expected[name],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    # The owner itself, with a new session, takes over (a restarted capture).
    fresh = protocol.new_session()
    transport.send(alice, protocol.encode_frame("cam", fresh, 0, clip[0]))
    transport.send(alice, protocol.encode_eos("cam", fresh, 1))
    deadline = time.monotonic() + 10
    while status(worker)["counts"].get("frames_in", 0) < 21:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status(worker)["drops"].get("not_owner") == 3


def test_the_quota_holds_against_a_squatter(
    start_worker: Start, keys: Keys, zmq_ctx: transport.Context
) -> None:
    env = keys.worker_env() | {"STREAMCONV_WORKER__MAX_STREAMS_PER_KEY": "4",
                               "STREAMCONV_WORKER__MAX_STREAMS": "6"}  # fmt: skip
    worker = start_worker(DEFAULT, env=env)
    carol = transport.push_socket(zmq_ctx, worker.input, **keys.client("carol"))
    for i in range(10):  # one frame each keeps a stream alive; only 4 get in
        transport.send(
            carol, protocol.encode_frame(f"squat{i}", protocol.new_session(), 0, frames(1)[0])
        )
    wait_drops(worker, "quota", 6)
    clip = frames(8)
    with Subscriber(worker.output, stream="legit", timeout_s=20, **keys.client("reader")) as sub:
        with Sender(
            {"endpoint": worker.input, **keys.client("alice")}, "legit", wait_s=10
        ) as sender:
            assert sender.wait_subscriber(worker.output)
            for f in clip:
                assert sender.send(f)
        got = collect(sub)
    assert all(len(got[name]) == len(clip) for name in LAYERS)
    assert status(worker)["drops"]["quota"] == 6


def test_streams_over_the_memory_limits_are_refused_and_others_go_on(
    start_worker: Start, zmq_ctx: transport.Context
) -> None:
    # default preset: 52 bytes per pixel at chunk 8; 32x24 costs 39 KiB, 640x480 16 MiB
    env = {
        "STREAMCONV_WORKER__STATE_BUDGET_MB": "1",
        "STREAMCONV_WORKER__MAX_FRAME_PIXELS": "400000",
    }
    worker = start_worker(DEFAULT, env=env)
    budget = status(worker)["state_budget"]
    assert budget["budget_mb"] == 1
    assert budget["used_mb"] == 0
    assert budget["bytes_per_pixel"] == 52
    push = transport.push_socket(zmq_ctx, worker.input)
    with Subscriber(worker.output, stream="small", timeout_s=20) as sub:
        sub.wait_ready(worker.input)
        small = protocol.new_session()
        clip = frames(6)
        for seq in range(3):
            transport.send(push, protocol.encode_frame("small", small, seq, clip[seq]))
        big = np.zeros((480, 640), np.uint8)
        transport.send(push, protocol.encode_frame("big", protocol.new_session(), 0, big))
        huge = np.zeros((720, 1280), np.uint8)  # 921,600 pixels > 400,000
        transport.send(push, protocol.encode_frame("huge", protocol.new_session(), 0, huge))
        wait_drops(worker, "over_budget", 1)
        st = wait_drops(worker, "frame_too_large", 1)
        assert 0 < st["state_budget"]["used_mb"] < 0.1  # the small stream only
        for seq in range(3, 6):
            transport.send(push, protocol.encode_frame("small", small, seq, clip[seq]))
        transport.send(push, protocol.encode_eos("small", small, 6))
        got = collect(sub)
    assert all(len(got[name]) == 6 for name in LAYERS)


def test_exposed_plaintext_is_refused_and_bad_key_files_are_named(
    python_env: dict[str, str], keys: Keys, tmp_path: Path
) -> None:
    def worker(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamconv", "worker", "--http", "off", "--device", "cpu",
             *flags],
            cwd=REPO, env=python_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    done = worker("--input", "tcp://0.0.0.0:0")
    assert done.returncode == 2
    assert "reachable from other machines without CURVE" in done.stderr
    assert "allow_insecure = true" in done.stderr
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a certificate\n")
    done = worker("--curve-secret", str(garbage), "--curve-clients", str(keys.root / "senders"))
    assert done.returncode == 2
    assert str(garbage) in done.stderr
    public = keys.root / "worker.key"
    done = worker("--curve-secret", str(public), "--curve-clients", str(keys.root / "senders"))
    assert done.returncode == 2
    assert "holds no secret key" in done.stderr
    assert str(public) in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = worker(
        "--curve-secret", str(keys.root / "worker.key_secret"), "--curve-clients", str(empty)
    )
    assert done.returncode == 2
    assert f"{empty} holds no *.key certificates" in done.stderr


def test_keys_generate_writes_a_private_pair_and_never_overwrites(
    python_env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "streamconv", "keys", *args]
        return subprocess.run(cmd, cwd=REPO, env=python_env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    done = keys("generate", str(tmp_path / "k"), "--name", "cam1")
    assert done.returncode == 0, done.stderr
    secret = tmp_path / "k/cam1.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (tmp_path / "k/cam1.key").is_file()
    assert "secret-key" in secret.read_text()
    again = keys("generate", str(tmp_path / "k"), "--name", "cam1")
    assert again.returncode == 2
    assert "exists" in again.stderr
    with pytest.raises(ConfigError, match=r"nope\.key: no such file"):
        load_public(tmp_path / "k/nope.key")
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="streamconv.wire.curve"):
        pair = load_secret(secret)
    assert "readable by others: chmod 600" in caplog.text
    assert pair.secret.decode() not in repr(pair) + caplog.text  # never printed


def test_subscribe_and_view_take_client_keys(
    start_worker: Start, start_view: Start, keys: Keys, python_env: dict[str, str]
) -> None:
    from tests.integration.pages import PageClient

    worker = start_worker(DEFAULT, env=keys.worker_env())
    reader = keys.client("reader")
    flags = ["--curve-secret", str(reader["curve_secret"]),
             "--curve-server", str(reader["curve_server"])]  # fmt: skip
    view = start_view(worker.output, *flags)
    page = PageClient(view.http)
    sub = subprocess.Popen(
        [sys.executable, "-m", "streamconv", "subscribe", "--connect", worker.output,
         "--stream", "cam", *flags],
        cwd=REPO, env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        page.until(lambda: page.state.get("worker") == "connected", what="the view let in")
        with Sender({"endpoint": worker.input, **keys.client("alice")}, "cam", wait_s=10) as sender:
            deadline = time.monotonic() + 20
            while status(worker)["subscriptions"].get("cam/", 0) < 1:  # subscribe is in
                assert time.monotonic() < deadline, status(worker)["subscriptions"]
                time.sleep(0.05)
            for f in frames(5):
                assert sender.send(f)
        out, err = sub.communicate(timeout=30)  # ends at the stream's eos
        assert sub.returncode == 0, err
        assert "cam/motion" in out
        page.until(lambda: (page.layer("cam", "motion") or {}).get("frames") == 5, what="5")
    finally:
        page.close()
        sub.kill()
        sub.wait(10)


def test_the_proxy_is_a_curve_client_of_the_workers_and_a_server_to_its_readers(
    start_worker: Start, keys: Keys, python_env: dict[str, str], free_endpoint: Callable[[], str]
) -> None:
    """reader -> proxy (CURVE, the proxy lets in readers) -> worker (CURVE, lets in the proxy
    as carol): exact outputs; mallory is refused by the proxy with a clear error."""
    from tests.integration.conftest import launch

    worker = start_worker(DEFAULT, env=keys.worker_env())
    listen = free_endpoint()
    proxy = launch(
        [sys.executable, "-m", "streamconv", "proxy", "--shards", worker.output,
         "--listen", listen, "--curve-secret", str(keys.root / "all/carol.key_secret"),
         "--curve-server", str(keys.root / "worker.key"),
         "--curve-clients", str(keys.root / "readers")],
        python_env,
    )  # fmt: skip
    try:
        proxy.wait_for_line("proxy on", 30)
        clip = frames(10)
        carol_as_server = {"curve_secret": keys.root / "all/reader.key_secret",
                           "curve_server": keys.root / "all/carol.key"}  # fmt: skip
        with (
            Subscriber(listen, stream="cam", timeout_s=20, **carol_as_server) as sub,
            Subscriber(listen, timeout_s=5, curve_secret=keys.root / "all/mallory.key_secret",
                       curve_server=keys.root / "all/carol.key") as spy,
        ):  # fmt: skip
            with Sender(
                {"endpoint": worker.input, **keys.client("alice")}, "cam", wait_s=10
            ) as sender:
                assert sender.wait_subscriber(worker.output)  # through the proxy
                for f in clip:
                    assert sender.send(f)
            got = collect(sub)
            with pytest.raises(AuthError):
                spy.poll(5.0)
        expected = offline(clip, DEFAULT)
        for name in LAYERS:
            assert [h["seq"] for h, _ in got[name]] == list(range(len(clip)))
            np.testing.assert_allclose(np.stack([a for _, a in got[name]]), expected[name],
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
        assert proxy.stop() == 0
    finally:
        proxy.reap()
