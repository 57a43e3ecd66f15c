"""Code a config names: `package.module:Name`, or `file.py:Name` (relative to the config file).

Only the local config and command line name code; nothing on the wire ever does (README,
Security). A module name is looked up on sys.path and then in the config file's folder
(`root`), so a researcher's `mymodel.py` beside the config is found as `mymodel:Name`.
Every failure is a ConfigError naming the setting that named the code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from streamconv.errors import ConfigError

SPEC = re.compile(r"^(?P<where>[^:]+):(?P<name>[A-Za-z_][A-Za-z0-9_.]*)$")


def check_spec(spec: str) -> str:
    """`spec` if it reads 'module:Name' or 'file.py:Name', else ValueError (for a validator)."""
    if not SPEC.match(spec):
        msg = f"{spec!r} must read 'package.module:Name' or 'file.py:Name'"
        raise ValueError(msg)
    return spec


def load_object(spec: str, root: Path | None, setting: str) -> Any:
    """The object `spec` names; `setting` is how the error names its origin."""
    match = SPEC.match(spec)
    if match is None:
        msg = f"{setting}: {spec!r} must read 'package.module:Name' or 'file.py:Name'"
        raise ConfigError(msg)
    where, name = match["where"], match["name"]
    module = _from_file(where, root) if where.endswith(".py") else _module(where, root)
    if isinstance(module, str):
        raise ConfigError(f"{setting}: cannot import {where!r}: {module}")
    found: Any = module
    for part in name.split("."):
        if not hasattr(found, part):
            msg = f"{setting}: {where!r} has no {name!r}"
            raise ConfigError(msg)
        found = getattr(found, part)
    return found


def _module(name: str, root: Path | None) -> ModuleType | str:
    """The module, or why it cannot be imported (its own error included, not only ours)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is None or not name.startswith(e.name) or root is None:
            return f"{type(e).__name__}: {e}"
        if str(root) not in sys.path:
            sys.path.append(str(root))  # after everything else: nothing installed is shadowed
        try:
            return importlib.import_module(name)
        except Exception as again:
            return f"{type(again).__name__}: {again} (looked on sys.path and in {root})"
    except Exception as e:  # the module's own code failed: say how
        return f"{type(e).__name__}: {e}"


def _from_file(path: str, root: Path | None) -> ModuleType | str:
    file = Path(path) if root is None or Path(path).is_absolute() else root / path
    if not file.is_file():
        return f"no file {file}"
    digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    module_name = f"streamconv_user_{file.stem}_{digest}"
    if module_name in sys.modules:  # the same file twice (two layers): one module
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        return f"{file} is not a Python file"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        return f"{type(e).__name__}: {e}"
    return module


def instantiate(cls: Any, kwargs: dict[str, Any], setting: str) -> Any:
    """`cls(**kwargs)`: a `streamconv.layers.Layer` subclass, else ConfigError; kwargs it does
    not take (or its own failure) are a ConfigError naming `setting`."""
    from streamconv.layers import Layer

    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        msg = f"{setting}: {cls!r} is not a streamconv.layers.Layer subclass"
        raise ConfigError(msg)
    return call(cls, kwargs, setting)


def call(fn: Any, kwargs: dict[str, Any], setting: str) -> Any:
    """`fn(**kwargs)`, with a refusal of the kwargs (or its own failure) said as a config
    error naming `setting`."""
    called = f"{getattr(fn, '__name__', fn)}(**{kwargs!r})"
    try:
        return fn(**kwargs)
    except ConfigError:
        raise
    except Exception as e:  # kwargs it does not take (TypeError), or its own failure
        msg = f"{setting}: {called} raised {type(e).__name__}: {e}"
        raise ConfigError(msg) from e


PROBE_SIDE = 32  # pixels a side of the blank chunk a layer is run on to learn its outputs


def probe(layer: Any, channels: int, setting: str) -> Any:
    """The layer's output for one blank frame (1, channels, 1, 32, 32), on the layer's device
    and in its dtype: what it publishes and how many channels it gives. A failure is a
    ConfigError."""
    import torch

    x = torch.zeros(1, channels, 1, PROBE_SIDE, PROBE_SIDE)
    try:
        with torch.inference_mode():
            out, _ = layer.step(layer.prepare(x), None)
    except Exception as e:
        msg = f"{setting}: a first chunk of {channels} channel(s) failed: {type(e).__name__}: {e}"
        raise ConfigError(msg) from e
    return out


def output_channels(layer: Any, channels: int, setting: str) -> int:
    """The channel count `layer` outputs for `channels` in (a python layer in [[layers]])."""
    import torch

    out = probe(layer, channels, setting)
    if not isinstance(out, torch.Tensor) or out.ndim != 5:
        msg = f"{setting}: step() must return one (N, C, T, H, W) tensor in [[layers]]"
        raise ConfigError(msg)
    return int(out.shape[1])
