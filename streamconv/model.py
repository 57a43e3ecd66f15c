"""Config -> a ready layer pipeline on its device: the only place config meets torch."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamconv.config import (
    ConvLayer,
    DogKernel,
    FileKernel,
    FilterLayer,
    GaussianKernel,
    LayerSpec,
    NonlinearityLayer,
    Settings,
    WorkerSettings,
)
from streamconv.errors import ConfigError
from streamconv.layers import (
    Layer,
    MemoryConv3d,
    Nonlinearity,
    Sequential,
    TemporalHighPass,
    TemporalLowPass,
    dog_kernel,
    exponential_kernel,
    gaussian_kernel,
    random_kernel,
)

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


def load_weights(path: Path) -> Tensor:
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if path.suffix == ".pt":
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except OSError:
                raise
            except Exception as e:  # a corrupt file raises EOFError, IndexError, pickle errors
                msg = f"cannot load weights file {path}: {e!r}"
                raise ConfigError(msg) from e
            if isinstance(loaded, Tensor):
                return loaded
            msg = f"weights file {path} holds a {type(loaded).__name__}, not a tensor"
            raise ConfigError(msg)
    except (OSError, ValueError, RuntimeError) as e:
        msg = f"cannot load weights file {path}: {e}"
        raise ConfigError(msg) from e
    msg = f"weights file {path} must end in .npy or .pt"
    raise ConfigError(msg)


def conv_kernel(spec: ConvLayer) -> Tensor:
    """The kernel a conv layer spec describes, as given to `MemoryConv3d.set_weight`."""
    if spec.kernel is not None:
        if isinstance(spec.kernel, FileKernel):
            return load_weights(spec.kernel.path)
        return random_kernel(spec.kernel.size, spec.kernel.seed, scale=spec.kernel.scale)
    spatial = torch.ones(1, 1, dtype=torch.float64)
    if isinstance(spec.spatial, GaussianKernel):
        spatial = gaussian_kernel(spec.spatial.sigma, spec.spatial.size)
    elif isinstance(spec.spatial, DogKernel):
        spatial = dog_kernel(
            spec.spatial.sigma_center,
            spec.spatial.sigma_surround,
            surround_weight=spec.spatial.surround_weight,
            size=spec.spatial.size,
        )
    temporal = torch.ones(1, dtype=torch.float64)
    if spec.temporal is not None:
        temporal = exponential_kernel(spec.temporal.tau, spec.temporal.n, spec.temporal.length)
    return temporal[:, None, None] * spatial[None]


def build_layer(spec: LayerSpec, channels: int) -> tuple[Layer, int]:
    """One streaming layer and the channel count it outputs."""
    if isinstance(spec, ConvLayer):
        try:
            conv = MemoryConv3d(
                channels,
                spec.out_channels,
                1,
                stride=spec.stride,
                bias=spec.bias_values() is not None,
                padding_mode=spec.padding_mode,
                temporal_fill=spec.temporal_fill,
                dilation=spec.dilation,
                groups=spec.groups,
                dtype=torch.float64,  # kernels rounded once, by build_model's .to(dtype)
            )
            conv.set_weight(conv_kernel(spec), normalize=spec.normalize, flip=spec.flip)
        except ValueError as e:
            msg = f"layer {spec.name!r}: {e}"
            raise ConfigError(msg) from e
        values = spec.bias_values()
        if conv.bias is not None and values is not None:
            with torch.no_grad():
                conv.bias.copy_(torch.tensor(values, dtype=conv.bias.dtype))
        return conv, spec.out_channels
    if isinstance(spec, FilterLayer):
        cls = TemporalLowPass if spec.type == "lowpass" else TemporalHighPass
        return cls(spec.tau, spec.n, temporal_fill=spec.temporal_fill), channels
    if isinstance(spec, NonlinearityLayer):
        return Nonlinearity(spec.kind, threshold=spec.threshold, gain=spec.gain), channels
    msg = f"unknown layer spec {spec!r}"
    raise ConfigError(msg)


def build_model(settings: Settings, device: torch.device | None = None) -> Sequential:
    """The whole pipeline, returning every stage (an Output), on its device and dtype."""
    channels = input_channels(settings.worker)
    stages: OrderedDict[str, Layer] = OrderedDict()
    for spec in settings.layers:
        stages[spec.name], channels = build_layer(spec, channels)
    model = Sequential(stages, return_all=True)
    device = device or resolve_device(settings.worker.device)
    model.to(device=device, dtype=DTYPES[settings.worker.dtype])
    model.eval()
    log.info("model: %s on %s (%s)", " -> ".join(stages), device, settings.worker.dtype)
    return model


PROBE_SIDE = 32  # pixels a side of the input the state size is measured on


def state_bytes_per_pixel(
    model: Sequential, worker: WorkerSettings, device: torch.device, dtype: torch.dtype
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
