"""Config -> a ready layer pipeline on its device: the only place config meets torch."""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import Tensor

from streamconv.config import LayerSpec, Settings, WorkerSettings
from streamconv.errors import ConfigError
from streamconv.layers import Layer, Sequential

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
