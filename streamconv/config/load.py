"""Reading settings: TOML files and shipped presets, environment overrides, validation.

The only module that reads files and environment variables. Environment variables
STREAMCONV_<SECTION>__<KEY> override the file (e.g. STREAMCONV_WORKER__CHUNK=16); explicit
overrides (the command line) override both.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamconv.config.layers import ConvLayer, FileKernel
from streamconv.config.roles import Settings
from streamconv.errors import ConfigError

ENV_PREFIX = "STREAMCONV_"


def _format_error(
    err: ValidationError, origin: str, origins: Mapping[tuple[str, ...], str] | None = None
) -> str:
    """One line per fault, naming the key and where its value came from."""
    lines = [f"invalid settings in {origin}:"]
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc) or "(top level)"
        source = next((o for path, o in (origins or {}).items() if loc[: len(path)] == path), None)
        lines.append(f"  {key}: {e['msg']}" + (f" (from {source})" if source else ""))
    return "\n".join(lines)


def _leaf_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            paths += _leaf_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict from STREAMCONV_SECTION__KEY=value; values parsed as JSON when they can be."""
    tree: dict[str, Any] = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        path = var[len(ENV_PREFIX) :].lower().split("__")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), str):
            out[key] = {"endpoint": out[key]}  # a socket's shorthand, now with more keys
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_names() -> list[str]:
    """The presets shipped inside the package (streamconv/presets/*.toml)."""
    root = resources.files("streamconv.presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """A shipped preset's TOML text; ConfigError naming the presets if there is none."""
    if name not in preset_names():
        msg = f"no preset {name!r} (presets: {', '.join(preset_names())})"
        raise ConfigError(msg)
    return resources.files("streamconv.presets").joinpath(f"{name}.toml").read_text("utf-8")


def load_settings(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read a TOML config, apply environment then explicit overrides, and validate.

    `path` is a file, or the name of a shipped preset ("default", "retina").
    """
    path = Path(path)
    preset = not path.exists() and str(path) in preset_names()
    try:
        text = preset_text(str(path)) if preset else path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError as e:
        msg = f"config file {path} not found (presets by name: {', '.join(preset_names())})"
        raise ConfigError(msg) from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        msg = f"cannot read config file {path}: {e}"
        raise ConfigError(msg) from e
    env = env_overrides(os.environ if environ is None else environ)
    origins = {p: ENV_PREFIX + "__".join(p).upper() for p in _leaf_paths(env)}
    origins |= {p: "the command line" for p in _leaf_paths(overrides or {})}
    raw = merge(merge(raw, env), overrides or {})
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path), origins)) from e
    return _resolve_paths(settings, path.parent)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Weight files are relative to the config file's folder."""
    layers: list[Any] = []
    for layer in settings.layers:
        if isinstance(layer, ConvLayer) and isinstance(layer.kernel, FileKernel):
            kernel = layer.kernel.model_copy(update={"path": base / layer.kernel.path})
            layer = layer.model_copy(update={"kernel": kernel})
        layers.append(layer)
    return settings.model_copy(update={"layers": layers})
