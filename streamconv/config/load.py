"""Reading settings: TOML files and shipped presets, environment overrides, validation.

The only module that reads files and environment variables. Environment variables
STREAMCONV_<SECTION>__<KEY> override the file (e.g. STREAMCONV_WORKER__CHUNK=16); explicit
overrides (the command line) override both.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamconv.config.explain import describe
from streamconv.config.layers import ConvLayer, FileKernel, PythonLayer
from streamconv.config.roles import Settings
from streamconv.config.shared import follow_worker
from streamconv.errors import ConfigError

log = logging.getLogger(__name__)
ENV_PREFIX = "STREAMCONV_"
# STREAMCONV_ variables that are not settings, read by the test suite and scripts.
NOT_SETTINGS = frozenset({"STREAMCONV_CHROMIUM"})


def _leaf_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            paths += _leaf_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict from STREAMCONV_SECTION__KEY=value; values parsed as JSON when they can be.

    A STREAMCONV_ variable without the double underscore is no setting: it is warned about
    (a typo such as STREAMCONV_WORKER_CHUNK would otherwise be silently ignored)."""
    tree: dict[str, Any] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in NOT_SETTINGS:
            continue
        if "__" not in var:
            _warn_malformed(var)
            continue
        path = var[len(ENV_PREFIX) :].lower().split("__")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = tree
        for part in path[:-1]:
            if isinstance(node.get(part), str):  # a socket's shorthand, now with more keys
                node[part] = {"endpoint": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                msg = f"{var} sets a key inside {part!r}, which another variable sets whole"
                raise ConfigError(msg)
        node[path[-1]] = value
    return tree


def _warn_malformed(var: str) -> None:
    sections = [s for s in Settings.model_fields if s != "layers"]
    rest = var[len(ENV_PREFIX) :]
    guess = next((s for s in sections if rest.lower().startswith(s + "_")), None)
    hint = (
        f"did you mean {ENV_PREFIX}{rest[: len(guess)]}__{rest[len(guess) + 1 :]}?"
        if guess
        else f"e.g. {ENV_PREFIX}WORKER__CHUNK"
    )
    log.warning(
        "ignoring %s: a setting is %s<SECTION>__<KEY>, with two underscores (%s); sections: %s",
        var,
        ENV_PREFIX,
        hint,
        ", ".join(sections),
    )


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


def _presets() -> Traversable:
    """The shipped presets: the package streamconv.presets, which an install (wheel or editable)
    maps from config/presets; that folder itself for a checkout run without installing it."""
    try:
        return resources.files("streamconv.presets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "config" / "presets"


def preset_names() -> list[str]:
    """The shipped presets (config/presets/*.toml in the repository)."""
    return sorted(p.name[:-5] for p in _presets().iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """A shipped preset's TOML text; ConfigError naming the presets if there is none."""
    if name not in preset_names():
        msg = f"no preset {name!r} (presets: {', '.join(preset_names())})"
        raise ConfigError(msg)
    return _presets().joinpath(f"{name}.toml").read_text("utf-8")


def load_settings(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    role: str | None = None,
) -> Settings:
    """Read a TOML config, apply environment then explicit overrides, and validate.

    `path` is a file, or the name of a shipped preset ("default", "retina"). `role` (the
    command) skips the checks of other roles: only a worker refuses exposed worker sockets.
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
        settings = Settings.model_validate(raw, context={"role": role})
    except ValidationError as e:
        origin = f"the preset {str(path)!r}" if preset else str(path)
        raise ConfigError(describe(e, origin, raw, origins)) from e
    return _resolve_paths(follow_worker(settings), path.parent)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Weight files and code are relative to the config file's folder."""
    layers: list[Any] = []
    for layer in settings.layers:
        if isinstance(layer, ConvLayer) and isinstance(layer.kernel, FileKernel):
            kernel = layer.kernel.model_copy(update={"path": base / layer.kernel.path})
            layer = layer.model_copy(update={"kernel": kernel})
        if isinstance(layer, PythonLayer) and layer.root is None:
            layer = layer.model_copy(update={"root": base})
        layers.append(layer)
    model = settings.model
    if model.weights is not None:
        model = model.model_copy(update={"weights": base / model.weights})
    if model.root is None:
        model = model.model_copy(update={"root": base})
    return settings.model_copy(update={"layers": layers, "model": model})
