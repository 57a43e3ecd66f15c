"""Config -> a ready layer pipeline on its device: the only place config meets torch."""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import Tensor

from streamconv import weights
from streamconv.config import LayerSpec, Settings, WorkerSettings
from streamconv.errors import ConfigError
from streamconv.layers import Layer, Output, Sequential, State
from streamconv.usercode import call, load_object, probe

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:INDEX' -> a device torch can use, else ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            msg = f"device {name!r} requested but torch sees no CUDA GPU; use 'auto' or 'cpu'"
            raise ConfigError(msg)
        if device.index is not None and device.index >= count:
            msg = f"device {name!r} requested but torch sees {count} GPU(s): cuda:0..{count - 1}"
            raise ConfigError(msg)
    return device


def device_memory(device: torch.device) -> int | None:
    """Bytes of CUDA memory held by tensors on `device`; None on the CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.memory_allocated(device))


def configure_torch(worker: WorkerSettings) -> None:
    """Process-wide torch settings for a worker."""
    if worker.threads:
        torch.set_num_threads(worker.threads)
    # TF32 is on by default for cuDNN convolutions: ~1e-3 relative error on Ampere and later,
    # which would break the float32 streamed == offline guarantee. Opt-in only.
    torch.backends.cudnn.allow_tf32 = worker.tf32
    torch.backends.cuda.matmul.allow_tf32 = worker.tf32


def input_channels(worker: WorkerSettings) -> int:
    return {"gray": 1, "rgb": 3}.get(worker.color, worker.in_channels)


def build_layer(spec: LayerSpec, channels: int) -> tuple[Layer, int]:
    """One streaming layer and the channel count it outputs: each layer type builds its own
    (config/layers/, one file per type)."""
    return spec.build(channels)


def build_model(
    settings: Settings, device: torch.device | None = None, model: Layer | None = None
) -> Layer:
    """The model on its device and dtype, returning every stage (an Output): `model` if given
    (built in this process), else the [model] factory's, else the [[layers]] pipeline; with
    [model] weights loaded into it (keyed as its own state_dict())."""
    given = model is not None
    if model is None:
        model = _from_factory(settings) if settings.model.factory else _from_layers(settings)
    device = device or resolve_device(settings.worker.device)
    model.to(device=device, dtype=DTYPES[settings.worker.dtype])
    if settings.model.weights is not None:  # cast once, from the file's dtype to the model's
        weights.load(model, settings.model.weights)
    model.eval()
    model = _named(model, input_channels(settings.worker))
    what = "given model" if given else settings.model.factory or "layers"
    log.info("model (%s): %s on %s (%s), weights version %s", what,
             " -> ".join(published(settings, model, given)), device, settings.worker.dtype,
             weights.version(own(model)))  # fmt: skip
    return model


def own(model: Layer) -> Layer:
    """The model as its author built it (under the Named wrapper of a one-tensor model): the
    one its weights file is keyed for."""
    return model.inner if isinstance(model, Named) else model


def published(settings: Settings, model: Layer, given: bool = False) -> list[str]:
    """The layers the worker publishes: the [[layers]] with `publish` (unless the model was
    given), else every name in the model's Output."""
    if settings.layers and not given and settings.model.factory is None:
        return [spec.name for spec in settings.layers if spec.publish]
    out = probe(model, input_channels(settings.worker), "the model")
    return out.keys() if isinstance(out, Output) else [SINGLE]


def layer_names(settings: Settings) -> list[str]:
    """The layers the model the settings describe publishes (a factory's model is built on
    the CPU to ask it)."""
    if settings.model.factory is None:
        return [spec.name for spec in settings.layers if spec.publish]
    return published(settings, build_model(settings, torch.device("cpu")))


def _from_layers(settings: Settings) -> Layer:
    channels = input_channels(settings.worker)
    stages: OrderedDict[str, Layer] = OrderedDict()
    for spec in settings.layers:
        stages[spec.name], channels = build_layer(spec, channels)
    return Sequential(stages, return_all=True)


def _from_factory(settings: Settings) -> Layer:
    m = settings.model
    assert m.factory is not None
    setting = f"[model] factory {m.factory!r}"
    built = call(load_object(m.factory, m.root, setting), m.kwargs, setting)
    if not isinstance(built, Layer):
        msg = f"{setting} returned {type(built).__name__}, not a streamconv.layers.Layer"
        raise ConfigError(msg)
    return built


SINGLE = "output"  # the published name of a model whose step returns one tensor


class Named(Layer):
    """A model whose step returns one tensor, published as layer SINGLE."""

    def __init__(self, inner: Layer) -> None:
        super().__init__()
        self.inner = inner

    def step(self, x: Tensor, state: State | None) -> tuple[Tensor | Output, State]:
        y, inner = self.inner.step(x, None if state is None else state.get("inner"))
        if isinstance(y, Output):  # pragma: no cover - _named wraps tensor models only
            return y, {"inner": inner}
        return Output([(SINGLE, y)]), {"inner": inner}


def _named(model: Layer, channels: int) -> Layer:
    """`model` if its step returns an Output, wrapped in Named if one tensor; else refused."""
    out = probe(model, channels, "the model")
    if isinstance(out, Output):
        return model
    if isinstance(out, Tensor) and out.ndim == 5:
        return Named(model)
    msg = f"the model's step() must return an Output or one (N, C, T, H, W) tensor, got {out!r}"
    raise ConfigError(msg)


PROBE_SIDE = 32  # pixels a side of the input the state size is measured on


def state_bytes_per_pixel(
    model: Layer, worker: WorkerSettings, device: torch.device, dtype: torch.dtype
) -> float:
    """Bytes a stream holds between chunks per input pixel: every layer's carried state
    (measured by running one chunk of a small frame) plus the pending float32 input chunk."""
    channels = input_channels(worker)
    x = torch.zeros(1, channels, worker.chunk, PROBE_SIDE, PROBE_SIDE, device=device, dtype=dtype)
    with torch.inference_mode():
        _, state = model.step(x, None)
    held = sum(t.numel() * t.element_size() for t in _tensors(state))
    return held / PROBE_SIDE**2 + worker.chunk * channels * 4


def _tensors(state: object) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors(value)]
    if isinstance(state, list | tuple):
        return [t for value in state for t in _tensors(value)]
    return []
