"""Settings: one pydantic tree, the single source of truth for every option.

`load_settings(config, overrides)` reads a TOML file or a shipped preset, applies environment
variables then the overrides, and validates once; every role takes the result.
"""

from streamconv.config.layers import (
    ConvLayer,
    DogKernel,
    ExponentialKernel,
    FileKernel,
    FilterLayer,
    GaussianKernel,
    LayerSpec,
    NonlinearityLayer,
    RandomKernel,
)
from streamconv.config.load import (
    ENV_PREFIX,
    env_overrides,
    load_settings,
    merge,
    preset_names,
    preset_text,
)
from streamconv.config.roles import (
    CaptureSettings,
    CaptureSocket,
    InputSocket,
    LogSettings,
    OutputSocket,
    ProxySettings,
    Settings,
    SocketSettings,
    SubscribeSettings,
    ViewSettings,
    ViewSocket,
    WorkerSettings,
    parse_http,
)

__all__ = [
    "ENV_PREFIX",
    "CaptureSettings",
    "CaptureSocket",
    "ConvLayer",
    "DogKernel",
    "ExponentialKernel",
    "FileKernel",
    "FilterLayer",
    "GaussianKernel",
    "InputSocket",
    "LayerSpec",
    "LogSettings",
    "NonlinearityLayer",
    "OutputSocket",
    "ProxySettings",
    "RandomKernel",
    "Settings",
    "SocketSettings",
    "SubscribeSettings",
    "ViewSettings",
    "ViewSocket",
    "WorkerSettings",
    "env_overrides",
    "load_settings",
    "merge",
    "parse_http",
    "preset_names",
    "preset_text",
]
