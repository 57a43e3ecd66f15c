"""Issue 19: `streamconv check` and the worker's quick check at start. The shipped models and
the example pass; layers that do not stream exactly are caught, each by the property it
breaks, and named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamconv.config import load_settings
from streamconv.model import build_model, input_channels
from streamconv.worker.check import NotStreamableError, check, require

CPU = torch.device("cpu")

BROKEN = '''
import numpy as np
import torch
from streamconv.layers import Layer


class ChunkMean(Layer):
    """Subtracts each chunk's own mean over time: the output depends on the chunking."""

    def step(self, x, state):
        return x - x.mean(dim=2, keepdim=True), {}


class Forgetful(Layer):
    """A temporal difference that forgets the previous chunk's last frame."""

    def step(self, x, state):
        prev = torch.cat([x[:, :, :1], x[:, :, :-1]], dim=2)
        return x - prev, {}


class Unbatched(Layer):
    """Keeps a running sum whose state has no batch dimension: streams mix when batched."""

    state_names = ("total",)

    def step(self, x, state):
        total = state.get("total") if state else None
        total = torch.zeros_like(x[0, :, 0]) if total is None else total
        out = []
        for t in range(x.shape[2]):
            total = total + x[:, :, t].sum(dim=0)
            out.append(total.expand_as(x[:, :, t]))
        return torch.stack(out, dim=2), {"total": total}


class Unwritable(Layer):
    """Keeps its state as a numpy array, which a checkpoint cannot hold."""

    state_names = ("last",)

    def step(self, x, state):
        last = state.get("last") if state else None
        prev = x[:, :, :1] if last is None else torch.as_tensor(last)
        out = x - torch.cat([prev, x[:, :, :-1]], dim=2)
        return out, {"last": x[:, :, -1:].numpy().copy()}
'''


def config(tmp_path: Path, cls: str, dtype: str = "float64", extra: str = "") -> Path:
    (tmp_path / "broken.py").write_text(BROKEN, encoding="utf-8")
    path = tmp_path / "model.toml"
    path.write_text(
        f'[worker]\ndtype = "{dtype}"\n{extra}\n'
        '[[layers]]\nname = "smooth"\ntype = "lowpass"\ntau = 2.0\n\n'
        f'[[layers]]\nname = "odd"\ntype = "python"\nclass = "broken.py:{cls}"\n\n'
        '[[layers]]\nname = "after"\ntype = "nonlinearity"\nkind = "abs"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["default", "retina"])
def test_the_shipped_presets_stream_exactly(name: str, dtype: str) -> None:
    settings = load_settings(name, {"worker": {"dtype": dtype}}, environ={})
    model = build_model(settings, CPU)
    report = check(model, input_channels(settings.worker))
    assert report.ok, [str(f) for f in report.failures]
    assert len(report.checked) == 9  # 6 chunkings, round trip, batched, device


def test_the_example_streams_exactly(divisive_example: Path) -> None:
    settings = load_settings(divisive_example / "config.toml", environ={})
    report = check(build_model(settings, CPU), input_channels(settings.worker))
    assert report.ok, [str(f) for f in report.failures]


@pytest.mark.parametrize(
    ("cls", "prop"),
    [
        ("ChunkMean", "chunked == whole (chunks of 1)"),
        ("Forgetful", "chunked == whole (chunks of 1)"),
        ("Unbatched", "batched == alone"),
        ("Unwritable", "checkpoint round trip"),
    ],
)
def test_a_layer_that_does_not_stream_is_named_with_the_property(
    tmp_path: Path, cls: str, prop: str
) -> None:
    settings = load_settings(config(tmp_path, cls), environ={})
    model = build_model(settings, CPU)
    report = check(model, input_channels(settings.worker))
    assert not report.ok
    first = report.failures[0]
    assert first.prop.startswith(prop), [str(f) for f in report.failures]
    # The first published layer that went wrong: not the good one before it.
    assert first.layer in ("odd", "smooth" if prop == "checkpoint round trip" else "odd")
    with pytest.raises(NotStreamableError, match=r"does not stream exactly, so it is not served"):
        require(model, input_channels(settings.worker), "the model")


def test_check_command_reports_and_fails_with_exit_1(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    ok = subprocess.run([sys.executable, "-m", "streamconv", "check", "--size", "32x24"],
                        cwd=tmp_path, env=python_env, capture_output=True, text=True,
                        timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "published: smooth, change, motion" in ok.stdout
    assert "ms per frame at 32x24" in ok.stdout
    assert "the model streams exactly" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "streamconv", "check",
                          str(config(tmp_path, "ChunkMean"))], cwd=tmp_path, env=python_env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1, bad.stderr
    assert "chunked == whole (chunks of 1): FAILED: layer 'odd'" in bad.stdout
    assert "the model does NOT stream exactly" in bad.stdout


def test_the_worker_refuses_a_model_that_does_not_stream(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    done = subprocess.run([sys.executable, "-m", "streamconv", "worker", "--config",
                           str(config(tmp_path, "Forgetful")), "--http", "off",
                           "--input", "tcp://127.0.0.1:*", "--output", "tcp://127.0.0.1:*"],
                          cwd=tmp_path, env=python_env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "the model does not stream exactly, so it is not served: layer 'odd'" in done.stderr
    assert "startup_check = false" in done.stderr


def test_a_model_that_fails_on_the_clip_is_reported_not_crashed(tmp_path: Path) -> None:
    (tmp_path / "long.py").write_text(
        "from streamconv.layers import Layer\n"
        "class ShortOnly(Layer):\n"
        "    def step(self, x, state):\n"
        "        if x.shape[2] > 4:\n"
        "            raise RuntimeError('at most 4 frames a chunk')\n"
        "        return x, {}\n",
        encoding="utf-8",
    )
    path = tmp_path / "m.toml"
    path.write_text('[[layers]]\nname = "s"\ntype = "python"\nclass = "long.py:ShortOnly"\n',
                    encoding="utf-8")  # fmt: skip
    settings = load_settings(path, environ={})
    report = check(build_model(settings, CPU), input_channels(settings.worker))
    assert not report.ok
    assert report.failures[0].prop == "one pass over a 32x32 clip"
    assert "at most 4 frames a chunk" in report.failures[0].detail
