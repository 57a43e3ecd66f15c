"""Issue 19: your own model in the config. Python layers among the built-in ones, a whole
model from a factory, fitted weights loaded strictly; every mistake a config error naming the
setting. Real files, real imports: each test writes its model code beside its config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from streamconv.config import load_settings
from streamconv.errors import ConfigError
from streamconv.layers import Output
from streamconv.model import build_model, layer_names, published
from streamconv.weights import save

CPU = torch.device("cpu")

LAYERS_PY = '''
import torch
from torch import nn
from streamconv.layers import Layer, Output, Sequential, TemporalLowPass


class Twice(Layer):
    """Two channels out of each one: x and 2x (so the next layer sees twice the channels)."""

    def step(self, x, state):
        return torch.cat([x, 2 * x], dim=1), {}


class Gain(Layer):
    def __init__(self, gain=1.0):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(float(gain)))

    def step(self, x, state):
        return x * self.gain, {}


class NotALayer:
    pass


def build(tau=2.0):
    from collections import OrderedDict
    stages = OrderedDict(low=TemporalLowPass(tau), gain=Gain(3.0))
    return Sequential(stages, return_all=True)


def single(tau=2.0):
    return TemporalLowPass(tau)


def wrong():
    return 42
'''

MIXED = """
[worker]
dtype = "float64"

[[layers]]
name = "twice"
type = "python"
class = "ownlayers.py:Twice"

[[layers]]
name = "smooth"
type = "conv"
kernel = { kind = "random", size = [2, 3, 3], seed = 1 }

[[layers]]
name = "gain"
type = "python"
class = "ownlayers:Gain"
kwargs = { gain = 0.5 }
"""


def write(folder: Path, config: str, code: str = LAYERS_PY) -> Path:
    (folder / "ownlayers.py").write_text(code, encoding="utf-8")
    path = folder / "model.toml"
    path.write_text(config, encoding="utf-8")
    return path


def clip(channels: int = 1, frames: int = 12) -> torch.Tensor:
    return torch.rand(1, channels, frames, 10, 12, generator=torch.Generator().manual_seed(3),
                      dtype=torch.float64)  # fmt: skip


def test_python_layers_mix_with_built_in_ones(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MIXED), environ={})
    model = build_model(settings, CPU)
    assert published(settings, model) == ["twice", "smooth", "gain"]
    out = model.run(clip())
    assert isinstance(out, Output)
    # The conv after `Twice` was built for its two channels (found by running it once).
    assert out["twice"].shape[1] == 2
    assert model.smooth.weight.shape[1] == 2
    assert torch.equal(out["gain"], 0.5 * out["smooth"])
    # Streamed in chunks of 1 == whole: the python layers keep the guarantee here too.
    model2 = build_model(settings, CPU)
    assert torch.allclose(model2.run(clip(), dt=1)["gain"], out["gain"], rtol=0, atol=1e-12)


def test_a_factory_model_publishes_its_output_names(tmp_path: Path) -> None:
    text = '[worker]\ndtype = "float64"\n[model]\nfactory = "ownlayers.py:build"\n'
    text += "kwargs = { tau = 3.0 }\n"
    settings = load_settings(write(tmp_path, text), environ={})
    assert layer_names(settings) == ["low", "gain"]
    model = build_model(settings, CPU)
    out = model.run(clip())
    assert isinstance(out, Output)
    assert torch.allclose(out["gain"], 3.0 * out["low"])
    assert model.low.tau == 3.0  # the kwargs reached the factory


def test_a_factory_of_one_tensor_publishes_it_as_output(tmp_path: Path) -> None:
    text = '[model]\nfactory = "ownlayers:single"\n'
    settings = load_settings(write(tmp_path, text), environ={})
    model = build_model(settings, CPU)
    assert published(settings, model) == ["output"]
    out = model.run(clip())
    assert isinstance(out, Output)
    assert out.keys() == ["output"]


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ('[[layers]]\nname = "a"\ntype = "python"\nclass = "nowhere.py:X"\n',
         "layer 'a' class: cannot import 'nowhere.py': no file"),
        ('[[layers]]\nname = "a"\ntype = "python"\nclass = "no_such_module_here:X"\n',
         "layer 'a' class: cannot import 'no_such_module_here'"),
        ('[[layers]]\nname = "a"\ntype = "python"\nclass = "ownlayers.py:Nope"\n',
         "layer 'a' class: 'ownlayers.py' has no 'Nope'"),
        ('[[layers]]\nname = "a"\ntype = "python"\nclass = "ownlayers.py:NotALayer"\n',
         "is not a streamconv.layers.Layer subclass"),
        ('[[layers]]\nname = "a"\ntype = "python"\nclass = "ownlayers.py:Gain"\n'
         "kwargs = { gian = 2.0 }\n",
         "layer 'a' class: Gain(**{'gian': 2.0}) raised TypeError"),
        ('[model]\nfactory = "ownlayers.py:wrong"\n',
         "[model] factory 'ownlayers.py:wrong' returned int, not a streamconv.layers.Layer"),
        ('[model]\nfactory = "ownlayers.py:build"\nkwargs = { sigma = 1 }\n',
         "[model] factory 'ownlayers.py:build': build(**{'sigma': 1}) raised TypeError"),
    ],
    ids=["no-file", "no-module", "no-name", "not-a-layer", "bad-kwargs", "factory-type",
         "factory-kwargs"],
)  # fmt: skip
def test_code_that_cannot_serve_is_a_config_error_naming_the_setting(
    tmp_path: Path, config: str, said: str
) -> None:
    settings = load_settings(write(tmp_path, config), environ={})
    with pytest.raises(ConfigError) as caught:
        build_model(settings, CPU)
    assert said in str(caught.value)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[model]\nfactory = "ownlayers.py:build"\n[[layers]]\nname = "a"\ntype = "nonlinearity"\n',
         "give [model] factory or [[layers]], not both"),
        ('[model]\nfactory = "just a name"\n', "must read 'package.module:Name' or 'file.py:Name'"),
        ('[[layers]]\nname = "a"\ntype = "python"\nclass = "x"\n',
         "must read 'package.module:Name' or 'file.py:Name'"),
    ],
    ids=["both", "factory-spec", "class-spec"],
)  # fmt: skip
def test_a_wrong_model_section_is_refused_at_load(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ConfigError, match="invalid settings") as caught:
        load_settings(write(tmp_path, text), environ={})
    assert said in str(caught.value)


def test_fitted_weights_load_into_a_factory_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = '[model]\nfactory = "ownlayers.py:build"\nweights = "fitted.safetensors"\n'
    path = write(tmp_path, text)
    # Saved from the same factory, in float64, as a researcher's fit would leave it.
    settings = load_settings(path, environ={})
    fitted = build_model(settings.model_copy(update={"model": settings.model.model_copy(
        update={"weights": None})}), CPU).double()  # fmt: skip
    with torch.no_grad():
        fitted.gain.gain.fill_(0.123456789)
    save(fitted.inner if hasattr(fitted, "inner") else fitted, tmp_path / "fitted.safetensors")
    with caplog.at_level(logging.INFO, logger="streamconv.weights"):
        model = build_model(settings, CPU)  # float32, the default dtype
    assert model.gain.gain.dtype == torch.float32
    assert float(model.gain.gain.detach()) == pytest.approx(0.123456789, rel=1e-7)
    assert "cast torch.float64 -> torch.float32" in caplog.text


def test_weights_for_the_built_in_layers_too(tmp_path: Path) -> None:
    settings = load_settings("default", {"model": {"weights": str(tmp_path / "w.pt")}},
                             environ={})  # fmt: skip
    plain = build_model(settings.model_copy(update={"model": settings.model.model_copy(
        update={"weights": None})}), CPU)  # fmt: skip
    kernel = torch.full_like(plain.smooth.weight, 0.01)
    fitted = {**plain.state_dict(), "smooth.weight": kernel, "change.tau": torch.tensor(7.5),
              "motion.gain": torch.tensor(0.25)}  # fmt: skip
    assert set(fitted) == {"smooth.weight", "change.tau", "motion.threshold", "motion.gain"}
    torch.save(fitted, tmp_path / "w.pt")
    model = build_model(settings, CPU)
    assert torch.equal(model.smooth.weight, kernel)
    # The time constants, thresholds and gains of the built-in layers are weights too.
    assert float(model.change.tau.detach()) == 7.5
    assert float(model.motion.gain.detach()) == 0.25


@pytest.mark.parametrize(
    ("tensors", "said"),
    [
        ({}, "missing 'smooth.weight' (1, 1, 5, 11, 11)"),
        ({"smooth.weight": torch.zeros(1, 1, 5, 11, 11), "extra.bias": torch.zeros(1)},
         "unexpected 'extra.bias'"),
        ({"smooth.weight": torch.zeros(1, 1, 3, 3, 3)},
         "'smooth.weight' has shape (1, 1, 3, 3, 3), the model's is (1, 1, 5, 11, 11)"),
    ],
    ids=["missing", "unexpected", "shape"],
)  # fmt: skip
def test_weights_that_do_not_fit_name_each_key(
    tmp_path: Path, tensors: dict[str, torch.Tensor], said: str
) -> None:
    torch.save(tensors, tmp_path / "w.pt")
    settings = load_settings("default", {"model": {"weights": str(tmp_path / "w.pt")}},
                             environ={})  # fmt: skip
    with pytest.raises(ConfigError, match="do not fit the model") as caught:
        build_model(settings, CPU)
    assert said in str(caught.value)


def test_a_weights_file_holds_tensors_never_code(tmp_path: Path) -> None:
    """`.pt` files are read weights-only: a pickle that would run code is refused."""
    torch.save({"smooth.weight": torch.zeros(1), "how": Path("x")}, tmp_path / "w.pt")
    settings = load_settings("default", {"model": {"weights": str(tmp_path / "w.pt")}},
                             environ={})  # fmt: skip
    with pytest.raises(ConfigError, match="cannot read it"):
        build_model(settings, CPU)
    (tmp_path / "w.npy").write_bytes(b"")
    wrong = load_settings("default", {"model": {"weights": str(tmp_path / "w.npy")}}, environ={})
    with pytest.raises(ConfigError, match=r"a \.safetensors or \.pt file"):
        build_model(wrong, CPU)


def test_fit_moves_the_time_constant_and_gain_of_built_in_layers() -> None:
    """A built-in layer's time constant, threshold and gain are parameters like a kernel:
    `fit` recovers them (and [model] weights loads them, above)."""
    from streamconv.layers import Nonlinearity, Sequential, TemporalLowPass

    x = clip(frames=60)
    with torch.no_grad():
        target = Sequential(TemporalLowPass(5.0), Nonlinearity("identity", gain=3.0)).run(x)
    learner = Sequential(TemporalLowPass(2.0), Nonlinearity("identity", gain=1.0)).double()
    learner.make_optimizer("Adam", lr=0.05)
    losses = learner.fit(x, target, dt=10, epochs=150)
    assert losses[-1] < losses[0] * 1e-3
    fitted = learner.state_dict()
    assert float(fitted["0.tau"]) == pytest.approx(5.0, rel=0.02)
    assert float(fitted["1.gain"]) == pytest.approx(3.0, rel=0.02)


def test_reload_loads_into_a_one_tensor_factory_model(tmp_path: Path) -> None:
    """The model published as `output` is wrapped; its weights file is keyed as the author's
    model, and a reload loads it there."""
    from streamconv.layers import TemporalLowPass
    from streamconv.model import own
    from streamconv.worker.reload import Reload

    text = '[model]\nfactory = "ownlayers:single"\nweights = "w.safetensors"\n'
    path = write(tmp_path, text)
    save(TemporalLowPass(2.0), tmp_path / "w.safetensors")
    model = build_model(load_settings(path, environ={}), CPU)
    versions: list[str] = []
    reload = Reload(own(model), tmp_path / "w.safetensors", versions.append)
    save(TemporalLowPass(5.0), tmp_path / "w.safetensors")
    reload.signalled = True
    reload.tick(0.0)
    assert reload.refused == 0
    assert reload.reloads == 1
    assert float(own(model).tau.detach()) == 5.0
    assert len(set(versions)) == 2
