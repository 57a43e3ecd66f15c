"""One config file for every role: the capture, `subscribe` and `view` default to the worker's
endpoints in the same file; the worker's HTTP port follows its input port."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from streamconv.cli import main, overrides, parser
from streamconv.client.subscribe import REPORT_EVERY_S, _table_due
from streamconv.config import Settings, WorkerSettings, load_settings
from streamconv.errors import ConfigError

LAYER = '[[layers]]\nname = "low"\ntype = "lowpass"\ntau = 2.0\n'
WORKER = '[worker]\ninput = "tcp://127.0.0.1:7000"\noutput = "tcp://127.0.0.1:7100"\n'


def load(tmp_path: Path, text: str, *argv: str) -> Settings:
    path = tmp_path / "mine.toml"
    path.write_text(text + LAYER)
    args = parser().parse_args([*argv, "--config", str(path)]) if argv else None
    return load_settings(path, overrides(args) if args else None, environ={})


def test_the_capture_connects_to_the_files_worker_input_and_finds_its_output(
    tmp_path: Path,
) -> None:
    c = load(tmp_path, WORKER, "capture", "sample").capture
    assert (c.connect.endpoint, c.output) == ("tcp://127.0.0.1:7000", "tcp://127.0.0.1:7100")


def test_subscribe_and_view_default_to_the_files_worker_output(tmp_path: Path) -> None:
    for role in ("subscribe", "view"):
        assert load(tmp_path, WORKER, role).view.connect.endpoint == "tcp://127.0.0.1:7100"


def test_a_wildcard_bind_is_reached_on_loopback(tmp_path: Path) -> None:
    text = (
        '[worker]\ninput = "tcp://0.0.0.0:7000"\noutput = "tcp://*:7100"\nallow_insecure = true\n'
    )
    s = load(tmp_path, text)
    assert s.capture.connect.endpoint == "tcp://127.0.0.1:7000"
    assert s.view.connect.endpoint == "tcp://127.0.0.1:7100"


def test_explicit_client_endpoints_win(tmp_path: Path) -> None:
    text = WORKER + '[capture]\nconnect = "tcp://10.0.0.9:1"\n[view]\nconnect = "tcp://h:2"\n'
    s = load(tmp_path, text)
    assert (s.capture.connect.endpoint, s.capture.output) == ("tcp://10.0.0.9:1", None)
    assert s.view.connect.endpoint == "tcp://h:2"
    c = load(tmp_path, WORKER, "capture", "sample", "--connect", "tcp://h:9").capture
    assert (c.connect.endpoint, c.output) == ("tcp://h:9", None)  # the capture derives :10
    v = load(tmp_path, WORKER, "subscribe", "--connect", "tcp://h:3,tcp://h:4").view
    assert (v.connect.endpoint, v.more) == ("tcp://h:3", ["tcp://h:4"])


def test_sharded_captures_keep_their_shards(tmp_path: Path) -> None:
    c = load(tmp_path, WORKER, "capture", "sample", "--shards", "tcp://a:1,tcp://b:1").capture
    assert "endpoint" not in c.connect.model_fields_set


@pytest.mark.parametrize(
    ("data", "http"),
    [
        ({}, "127.0.0.1:5557"),
        ({"input": "tcp://127.0.0.1:6000"}, "127.0.0.1:6002"),
        ({"input": {"endpoint": "tcp://0.0.0.0:7000"}, "allow_insecure": True}, "127.0.0.1:7002"),
        ({"input": "tcp://127.0.0.1:6000", "http": "127.0.0.1:9"}, "127.0.0.1:9"),
        ({"input": "ipc:///tmp/in"}, "127.0.0.1:5557"),
        ({"input": "tcp://127.0.0.1:65534"}, "127.0.0.1:5557"),
    ],
)
def test_the_http_port_follows_the_input_port(data: dict[str, object], http: str) -> None:
    assert WorkerSettings.model_validate(data).http == http


def test_two_workers_with_their_own_inputs_get_their_own_http_ports() -> None:
    ports = set()
    for port in (6000, 6010):
        args = parser().parse_args(["worker", "--input", f"tcp://127.0.0.1:{port}"])
        ports.add(load_settings("default", overrides(args), environ={}).worker.http)
    assert ports == {"127.0.0.1:6002", "127.0.0.1:6012"}


def test_worker_help_says_the_http_port_follows_the_input(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["worker", "--help"])
    assert "input's port + 2" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [["presets", "--config", "x"], ["keys", "generate", "d",
                                                                  "--config", "x"]])  # fmt: skip
def test_presets_and_keys_take_no_config(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2
    assert "unrecognized arguments: --config" in capsys.readouterr().err


def test_the_first_table_waits_for_every_expected_layer() -> None:
    counts: Counter[tuple[str, str]] = Counter({("cam", "low"): 1})
    expect = {"low", "high"}
    assert not _table_due(counts, expect, first_at=0.0, last_report=None, now=0.1)
    counts["cam", "high"] += 1
    assert _table_due(counts, expect, first_at=0.0, last_report=None, now=0.2)


def test_the_first_table_comes_on_a_timer_when_a_layer_never_reports() -> None:
    counts: Counter[tuple[str, str]] = Counter({("cam", "low"): 1})
    for expect in ({"low", "never"}, set()):
        assert not _table_due(counts, expect, 0.0, None, REPORT_EVERY_S - 0.1)
        assert _table_due(counts, expect, 0.0, None, REPORT_EVERY_S)
    assert not _table_due(counts, {"low"}, 0.0, last_report=5.0, now=5.0 + REPORT_EVERY_S / 2)
    assert _table_due(counts, {"low"}, 0.0, last_report=5.0, now=5.1 + REPORT_EVERY_S)


IMAGE_ENV = {  # the Dockerfile's: every role in the image sees them
    "STREAMCONV_WORKER__INPUT": "tcp://0.0.0.0:5555",
    "STREAMCONV_WORKER__OUTPUT": "tcp://0.0.0.0:5556",
    "STREAMCONV_WORKER__HTTP": "0.0.0.0:5557",
}


def test_only_the_worker_refuses_its_exposed_sockets() -> None:
    # Before: `docker run streamconv capture ...` (and the compose capture and subscriber) exited
    # 2, refused for the worker's 0.0.0.0 sockets that the capture never binds.
    for role in ("capture", "subscribe", "view", "proxy", "run"):
        load_settings("default", environ=IMAGE_ENV, role=role)
    with pytest.raises(ConfigError, match="reachable from other machines without CURVE"):
        load_settings("default", environ=IMAGE_ENV, role="worker")


def test_subscribe_runs_in_the_images_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in IMAGE_ENV.items():
        monkeypatch.setenv(var, value)
    # --count 0: done at once, without a worker; the settings are what is under test.
    assert main(["subscribe", "--connect", "tcp://127.0.0.1:9", "--count", "0"]) == 0
