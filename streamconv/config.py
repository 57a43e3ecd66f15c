"""Settings: one pydantic tree, the single source of truth for every option.

The only module that reads files and environment variables. A TOML file gives the worker
settings and the layer pipeline; environment variables STREAMCONV_<SECTION>__<KEY> override
it (e.g. STREAMCONV_WORKER__CHUNK=16); command-line flags override both (applied by cli).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamconv.errors import ConfigError

ENV_PREFIX = "STREAMCONV_"
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# Layer names become torch module names too, which cannot contain a dot.
LayerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Endpoint = Annotated[str, Field(pattern=r"^(tcp|ipc|inproc)://.+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- kernels ---------------------------------------------------------------------------------
class GaussianKernel(Strict):
    kind: Literal["gaussian"]
    sigma: float = Field(gt=0)
    size: int | None = Field(default=None, ge=1)


class DogKernel(Strict):
    kind: Literal["dog"]
    sigma_center: float = Field(gt=0)
    sigma_surround: float = Field(gt=0)
    surround_weight: float = 1.0
    size: int | None = Field(default=None, ge=1)


class ExponentialKernel(Strict):
    kind: Literal["exponential"]
    tau: float = Field(gt=0)
    n: int = Field(default=1, ge=1)
    length: int | None = Field(default=None, ge=1)


class RandomKernel(Strict):
    kind: Literal["random"]
    seed: int = 0
    size: tuple[int, int, int]
    scale: float = 0.1


class FileKernel(Strict):
    """A .npy or .pt file holding a (kt,kh,kw) kernel or a full (out, in, kt, kh, kw) weight."""

    kind: Literal["file"]
    path: Path


SpatialKernel = Annotated[GaussianKernel | DogKernel, Field(discriminator="kind")]
FullKernel = Annotated[RandomKernel | FileKernel, Field(discriminator="kind")]


# -- layers ----------------------------------------------------------------------------------
class ConvLayer(Strict):
    """A MemoryConv3d. Its kernel is `kernel` (random or from a file), or the product of a
    `temporal` (exponential) and a `spatial` (gaussian/dog) kernel, either of which may be
    left out."""

    type: Literal["conv"]
    name: LayerName
    out_channels: int = Field(default=1, ge=1)
    kernel: FullKernel | None = None
    spatial: SpatialKernel | None = None
    temporal: ExponentialKernel | None = None
    normalize: bool = False
    flip: bool = Field(
        default=True,
        description="kernels are impulse responses; false for nn.Conv3d-style weights",
    )
    bias: bool = False
    padding_mode: Literal["zeros", "replicate", "reflect", "circular"] = "replicate"
    temporal_fill: Literal["first", "zeros"] = "first"
    dilation: int = Field(default=1, ge=1)
    stride: int = Field(default=1, ge=1)
    groups: int = Field(default=1, ge=1)
    publish: bool = True

    @model_validator(mode="after")
    def _one_kernel_source(self) -> ConvLayer:
        if self.kernel is not None and (self.spatial is not None or self.temporal is not None):
            msg = "give either 'kernel' or 'spatial'/'temporal', not both"
            raise ValueError(msg)
        if self.kernel is None and self.spatial is None and self.temporal is None:
            msg = "needs a 'kernel' (random or file) or a 'spatial' and/or 'temporal' kernel"
            raise ValueError(msg)
        return self


class FilterLayer(Strict):
    """A recursive exponential TemporalLowPass or TemporalHighPass."""

    type: Literal["lowpass", "highpass"]
    name: LayerName
    tau: float = Field(gt=0)
    n: int = Field(default=1, ge=1)
    temporal_fill: Literal["first", "zeros"] = "first"
    publish: bool = True


class NonlinearityLayer(Strict):
    type: Literal["nonlinearity"]
    name: LayerName
    kind: Literal["relu", "abs", "square", "sigmoid", "tanh", "identity"] = "relu"
    threshold: float = 0.0
    gain: float = 1.0
    publish: bool = True


LayerSpec = Annotated[ConvLayer | FilterLayer | NonlinearityLayer, Field(discriminator="type")]


# -- roles -----------------------------------------------------------------------------------
class WorkerSettings(Strict):
    input: Endpoint = "tcp://127.0.0.1:5555"
    output: Endpoint = "tcp://127.0.0.1:5556"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16", "float64"] = "float32"
    chunk: int = Field(default=8, ge=1, le=4096)
    max_wait_ms: float = Field(default=20.0, ge=0)
    color: Literal["as-is", "gray", "rgb"] = "gray"
    in_channels: int = Field(default=1, ge=1, description="input channels for color 'as-is'")
    output_dtype: Literal["float32", "float16", "uint8"] = "float32"
    max_message_bytes: int = Field(default=64 * 2**20, ge=1024)
    max_streams: int = Field(default=64, ge=1)
    idle_timeout_s: float = Field(
        default=60.0, gt=0, description="free a stream's state after this long without input"
    )
    tf32: bool = Field(
        default=False,
        description="let CUDA convolutions use TF32 (faster on Ampere+, ~1e-3 relative error)",
    )
    threads: int = Field(
        default=1,
        ge=0,
        description="torch CPU threads; 0 keeps torch's default (all cores). One leaves the "
        "cores to capture and subscribers and keeps live latency low (BENCHMARKS.md)",
    )
    input_hwm: int = Field(default=8, ge=1, description="frames queued per sender connection")
    output_hwm: int = Field(
        default=1000,
        ge=1,
        description="output messages queued per subscriber before a slow one loses some",
    )


class Settings(Strict):
    """A worker config file: [worker] settings and the [[layers]] pipeline, in order."""

    worker: WorkerSettings = WorkerSettings()
    layers: list[LayerSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [layer.name for layer in self.layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"layer names must be unique, repeated: {dupes}"
            raise ValueError(msg)
        return self


class CaptureSettings(Strict):
    source: str
    stream: Name | None = None
    connect: Endpoint = "tcp://127.0.0.1:5555"
    mode: Literal["auto", "lossless", "live"] = "auto"
    resize: tuple[int, int] | None = None
    gray: bool = False
    limit: int | None = Field(default=None, ge=1)
    loop: bool = False
    realtime: bool = False
    queue: int | None = Field(default=None, ge=1, description="None: 8 lossless, 2 live")


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


def capture_settings(**values: Any) -> CaptureSettings:
    try:
        return CaptureSettings.model_validate(values)
    except ValidationError as e:
        raise ConfigError(_format_error(e, "capture options")) from e
