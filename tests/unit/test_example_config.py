"""config/example.toml, the annotated config: it loads through the real settings, its plain
values are the defaults, it names every key of every section (so it cannot drift from the
settings models), and every commented-out key is valid once uncommented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from streamconv.config import Settings, SocketSettings, load_settings
from streamconv.errors import ConfigError
from tests.conftest import REPO

EXAMPLE = REPO / "config" / "example.toml"
HEADER = re.compile(r"^\[(?P<table>[\w.]+)\]")
KEY = re.compile(r"^(?P<commented># )?(?P<key>\w+) = ")


def _documented() -> dict[str, set[str]]:
    """Table ("worker", "worker.input", ...) -> the keys it shows, plain or commented out.
    The [[layers]] are left out: their keys depend on each layer's type."""
    tables: dict[str, set[str]] = {}
    table = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("[["):
            table = "layers"
        elif header := HEADER.match(line):
            table = header["table"]
            tables.setdefault(table, set())
        elif (key := KEY.match(line)) and table != "layers":
            tables[table].add(key["key"])
    return tables


def _section_model(section: str) -> type[BaseModel]:
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type)
    assert issubclass(model, BaseModel)
    return model


def _sockets(model: type[BaseModel]) -> set[str]:
    return {
        name
        for name, field in model.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, SocketSettings)
    }


def test_the_example_loads_through_the_settings() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert [layer.name for layer in settings.layers] == ["opl", "bipolar", "ganglion"]


def test_its_plain_values_are_the_defaults(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    bare = tmp_path / "layers-only.toml"
    bare.write_text(text[text.index("[[layers]]") :], encoding="utf-8")
    defaults = load_settings(bare, environ={})
    settings = load_settings(EXAMPLE, environ={})
    for section in set(Settings.model_fields) - {"layers"}:
        ours, default = getattr(settings, section), getattr(defaults, section)
        if section == "model":  # where each file lies is no value of the example's
            ours, default = (
                ours.model_copy(update={"root": None}),
                default.model_copy(update={"root": None}),
            )
        assert ours == default, section


def test_it_names_every_key_of_every_section() -> None:
    documented = _documented()
    sections = set(Settings.model_fields) - {"layers"}
    assert {t for t in documented if "." not in t} == sections
    for section in sections:
        model = _section_model(section)
        sockets = _sockets(model)
        # A socket is documented as its own table, [section.socket].
        shown = documented[section] | {s for s in sockets if f"{section}.{s}" in documented}
        assert shown == set(model.model_fields), section
        for socket in sockets:
            keys = documented[f"{section}.{socket}"]
            assert keys <= set(SocketSettings.model_fields), f"{section}.{socket}"
            assert {"endpoint", "hwm"} <= keys, f"{section}.{socket}: its own defaults"
    # One socket table shows every key a socket has; the others say that they all apply.
    assert documented["worker.input"] == set(SocketSettings.model_fields)


def test_every_commented_out_key_is_valid_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    head, layers = text[: text.index("[[layers]]")], text[text.index("[[layers]]") :]
    uncommented, count = re.subn(r"^# (\w+ = )", r"\1", head, flags=re.M)
    assert count >= 10, "the commented-out keys were not found"
    path = tmp_path / "everything.toml"
    # A [model] factory replaces the [[layers]]: the two together are refused.
    path.write_text(uncommented, encoding="utf-8")
    settings = load_settings(path, environ={})
    assert settings.worker.checkpoint_dir is not None
    assert settings.worker.input.curve
    assert settings.capture.source == "sample"
    assert settings.model.factory == "model.py:build"
    assert settings.model.weights == tmp_path / "fitted.safetensors"  # relative to the file
    path.write_text(uncommented + layers, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"give \[model\] factory or \[\[layers\]\], not both"):
        load_settings(path, environ={})
