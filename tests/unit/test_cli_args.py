"""Command-line parsing: flags become the settings tree; logging flags go on either side of
the subcommand; help shows real defaults."""

from __future__ import annotations

import pytest

from streamconv.cli import overrides, parser
from streamconv.config import load_settings
from streamconv.errors import ConfigError


@pytest.mark.parametrize(
    "argv",
    [["-v", "worker"], ["worker", "-v"], ["--log-level", "debug", "worker"],
     ["worker", "--log-level", "debug"]],
)  # fmt: skip
def test_logging_flags_work_before_and_after_the_subcommand(argv: list[str]) -> None:
    assert overrides(parser().parse_args(argv))["log"] == {"level": "debug"}


def test_flags_left_out_leave_the_config_alone() -> None:
    assert overrides(parser().parse_args(["worker"])) == {}
    settings = load_settings("default", overrides(parser().parse_args(["worker"])), environ={})
    assert settings.worker.http == "127.0.0.1:5557"
    assert settings.worker.input.endpoint == "tcp://127.0.0.1:5555"


def test_capture_flags_land_in_the_capture_settings() -> None:
    args = parser().parse_args(
        ["capture", "clip.mp4", "--connect", "tcp://10.0.0.2:6000", "--queue", "4", "--wait",
         "2.5", "--wait-subscriber", "--output", "tcp://10.0.0.2:6001", "--mode", "live"]
    )  # fmt: skip
    c = load_settings("default", overrides(args), environ={}).capture
    assert (c.source, c.connect.endpoint, c.connect.hwm, c.wait_s) == (
        "clip.mp4", "tcp://10.0.0.2:6000", 4, 2.5,
    )  # fmt: skip
    assert (c.wait_subscriber, c.output, c.mode) == (True, "tcp://10.0.0.2:6001", "live")


def test_a_gpu_is_chosen_by_index() -> None:
    args = parser().parse_args(["worker", "--device", "cuda:1"])
    assert load_settings("default", overrides(args), environ={}).worker.device == "cuda:1"
    with pytest.raises(ConfigError, match="cuda:INDEX"):
        load_settings("default", {"worker": {"device": "gpu1"}}, environ={})


def test_http_setting_is_checked() -> None:
    assert load_settings("default", {"worker": {"http": "off"}}, environ={}).worker.http == "off"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_settings("default", {"worker": {"http": "5557"}}, environ={})


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["subscribe", "--help"])
    text = capsys.readouterr().out
    assert "tcp://127.0.0.1:5556 in the presets)" in " ".join(text.split())
    assert "(default: None)" not in text
