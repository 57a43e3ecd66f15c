"""Config -> model: stage names, dtype, kernels from helpers and files, device, retina preset."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from streamconv.config import Settings, WorkerSettings, load_settings
from streamconv.config.layers import LAYER_TYPES
from streamconv.errors import ConfigError
from streamconv.layers import (
    Layer,
    MemoryConv3d,
    Nonlinearity,
    Output,
    Sequential,
    TemporalHighPass,
    TemporalLowPass,
    dog_kernel,
    exponential_kernel,
    gaussian_kernel,
    random_kernel,
)
from streamconv.model import build_model, input_channels, resolve_device
from tests.unit.reference import offline_conv, rel_err

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def settings(*layers: dict, **worker: object) -> Settings:
    return Settings.model_validate({"worker": {"device": "cpu", **worker}, "layers": list(layers)})


def conv_of(model: Sequential, name: str) -> MemoryConv3d:
    layer = model.get_submodule(name)
    assert isinstance(layer, MemoryConv3d)
    return layer


PIPELINE = (
    {"type": "conv", "name": "c1", "out_channels": 2, "spatial": {"kind": "gaussian", "sigma": 1}},
    {"type": "lowpass", "name": "lp", "tau": 2.0, "n": 2},
    {"type": "highpass", "name": "hp", "tau": 3.0},
    {"type": "nonlinearity", "name": "nl", "kind": "square", "gain": 2.0},
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_build_model_returns_every_stage_by_name(dtype: str) -> None:
    model = build_model(settings(*PIPELINE, dtype=dtype), CPU)
    assert isinstance(model, Sequential)
    assert model.stage_names() == ["c1", "lp", "hp", "nl"]
    kinds = [type(model.get_submodule(n)) for n in model.stage_names()]
    assert kinds == [MemoryConv3d, TemporalLowPass, TemporalHighPass, Nonlinearity]
    assert all(p.dtype == getattr(torch, dtype) for p in model.parameters())
    out = model.run(np.random.default_rng(0).random((5, 9, 11)))
    assert isinstance(out, Output)
    assert out.keys() == ["c1", "lp", "hp", "nl"]
    for t in out:
        assert t.dtype == getattr(torch, dtype)
        assert tuple(t.shape) == (1, 2, 5, 9, 11)
    torch.testing.assert_close(out["nl"], 2.0 * out["hp"] ** 2)


def test_spatial_times_temporal_is_the_product_kernel() -> None:
    spec = {
        "type": "conv",
        "name": "st",
        "spatial": {
            "kind": "dog",
            "sigma_center": 1.0,
            "sigma_surround": 2.0,
            "surround_weight": 0.8,
        },
        "temporal": {"kind": "exponential", "tau": 1.5, "n": 2, "length": 4},
    }
    conv = conv_of(build_model(settings(spec), CPU), "st")
    product = exponential_kernel(1.5, 2, 4)[:, None, None] * dog_kernel(
        1.0, 2.0, surround_weight=0.8
    )
    assert conv.kernel_size == tuple(product.shape)
    assert torch.equal(conv.weight[0, 0], product.flip(0, 1, 2).float())


def test_spatial_only_and_temporal_only_kernels() -> None:
    model = build_model(
        settings(
            {"type": "conv", "name": "s", "spatial": {"kind": "gaussian", "sigma": 0.8, "size": 5}},
            {"type": "conv", "name": "t", "temporal": {"kind": "exponential", "tau": 2.0}},
        ),
        CPU,
    )
    s, t = conv_of(model, "s"), conv_of(model, "t")
    assert torch.equal(s.weight[0, 0, 0], gaussian_kernel(0.8, 5).flip(0, 1).float())
    expected_t = exponential_kernel(2.0).flip(0)
    assert s.kernel_size == (1, 5, 5)
    assert t.kernel_size == (len(expected_t), 1, 1)
    assert torch.equal(t.weight[0, 0, :, 0, 0], expected_t.float())


def test_random_kernel_is_reproducible_by_seed() -> None:
    def weight(seed: int) -> torch.Tensor:
        spec = {
            "type": "conv",
            "name": "r",
            "out_channels": 3,
            "kernel": {"kind": "random", "seed": seed, "size": [2, 3, 3], "scale": 0.5},
        }
        return conv_of(build_model(settings(spec), CPU), "r").weight.detach()

    a, b, c = weight(7), weight(7), weight(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    expected = random_kernel((2, 3, 3), 7, scale=0.5).flip(0, 1, 2).float()
    assert torch.equal(a[2, 0], expected)


def test_npy_kernel_and_pt_weight_load(tmp_path: Path) -> None:
    kernel = np.random.default_rng(1).standard_normal((2, 3, 1))
    np.save(tmp_path / "k.npy", kernel)
    weight = torch.randn(2, 1, 3, 3, 3)
    torch.save(weight, tmp_path / "w.pt")
    (tmp_path / "c.toml").write_text(
        '[worker]\ndevice = "cpu"\n'
        '[[layers]]\nname = "k"\ntype = "conv"\nkernel = { kind = "file", path = "k.npy" }\n'
        '[[layers]]\nname = "w"\ntype = "conv"\nout_channels = 2\nflip = false\n'
        'kernel = { kind = "file", path = "w.pt" }\n'
    )
    model = build_model(load_settings(tmp_path / "c.toml", environ={}))
    k, w = conv_of(model, "k"), conv_of(model, "w")
    assert torch.equal(k.weight[0, 0], torch.from_numpy(kernel).flip(0, 1, 2).float())
    assert torch.equal(w.weight.detach(), weight)  # flip = false: an nn.Conv3d weight as is
    x = np.random.default_rng(2).random((1, 1, 6, 7, 8), dtype=np.float32)
    out = model.run(x)
    assert isinstance(out, Output)
    first = offline_conv(x, k.weight.detach().numpy())
    assert rel_err(out["k"].numpy(), first) < 1e-5
    assert rel_err(out["w"].numpy(), offline_conv(first, weight.numpy())) < 1e-5


def test_float64_model_keeps_float64_kernels() -> None:
    spec = {"type": "conv", "name": "r", "kernel": {"kind": "random", "seed": 3, "size": [2, 3, 3]}}
    conv = conv_of(build_model(settings(spec, dtype="float64"), CPU), "r")
    assert conv.weight.dtype == torch.float64
    assert torch.equal(conv.weight[0, 0], random_kernel((2, 3, 3), 3, scale=0.1).flip(0, 1, 2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cuda"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU


@pytest.mark.parametrize(
    ("color", "in_channels", "expected"),
    [("gray", 5, 1), ("rgb", 5, 3), ("as-is", 5, 5), ("as-is", 1, 1)],
)
def test_input_channels_by_color(color: str, in_channels: int, expected: int) -> None:
    worker = WorkerSettings(color=color, in_channels=in_channels)  # type: ignore[arg-type]
    assert input_channels(worker) == expected


def test_rgb_model_takes_three_channels() -> None:
    spec = {"type": "conv", "name": "c", "kernel": {"kind": "random", "size": [1, 1, 1]}}
    conv = conv_of(build_model(settings(spec, color="rgb"), CPU), "c")
    assert conv.in_channels == 3
    assert conv.weight.shape == (1, 3, 1, 1, 1)


def retina() -> Sequential:
    return build_model(load_settings("retina", environ={}), CPU)


def test_retina_ignores_uniform_light() -> None:
    frames = np.full((80, 24, 24), 0.2, dtype=np.float32)
    frames[20:] = 0.7  # a uniform step: a brief transient, then nothing
    out = retina().run(frames)
    assert isinstance(out, Output)
    ganglion = out["ganglion"][0, 0]
    assert float(ganglion[:20].abs().max()) < 1e-6
    assert float(ganglion[50:].abs().max()) < 1e-6


def test_retina_responds_to_a_moving_bar() -> None:
    frames = np.full((60, 24, 32), 0.2, dtype=np.float32)
    for t in range(frames.shape[0]):
        x = t % 28
        frames[t, :, x : x + 3] = 0.9
    out = retina().run(frames)
    assert isinstance(out, Output)
    ganglion = out["ganglion"][0, 0]
    assert float(ganglion.min()) >= 0.0  # rectified
    assert float(ganglion[50:].max()) > 0.05
    # The response follows the bar: its peak column is near the bar's position.
    peak = int(ganglion[55].amax(dim=0).argmax())
    assert abs(peak - (55 % 28 + 1)) <= 4


def test_the_allowed_layer_types_are_the_registered_ones() -> None:
    """The `type` values are spelled once, in each layer type's file; the union and the
    error naming them come from LAYER_TYPES."""
    values = [v for cls in LAYER_TYPES for v in get_args(cls.model_fields["type"].annotation)]
    assert values == ["conv", "lowpass", "highpass", "nonlinearity", "python"]
    with pytest.raises(ValidationError) as info:
        settings({"type": "pool", "name": "p"})
    [error] = info.value.errors()
    assert error["type"] == "union_tag_invalid"
    assert error["ctx"]["expected_tags"] == ", ".join(repr(v) for v in values)


@pytest.mark.parametrize("layer", PIPELINE, ids=[str(p["name"]) for p in PIPELINE])
def test_every_layer_type_builds_itself(layer: dict) -> None:
    spec = settings(layer).layers[0]
    built, channels = spec.build(3)
    assert isinstance(built, Layer)
    assert channels == layer.get("out_channels", 3)
    assert all(p.dtype == torch.float64 for p in built.parameters())
