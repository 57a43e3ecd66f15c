"""A conv layer's bias is settable in the config: a number for every output channel or one per
channel (before, `bias = true` gave a zero bias with no way to set it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamconv.config import load_settings
from streamconv.errors import ConfigError
from streamconv.model import build_model

CONV = '[[layers]]\nname = "c"\ntype = "conv"\nspatial = { kind = "gaussian", sigma = 1.0 }\n'


def outputs(tmp_path: Path, extra: str) -> np.ndarray:
    path = tmp_path / "c.toml"
    path.write_text(f'[worker]\ndevice = "cpu"\n{CONV}{extra}')
    model = build_model(load_settings(path, environ={}))
    [out] = model.run(np.zeros((3, 8, 10), dtype=np.float32))  # a zero input: only the bias
    return out.numpy()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("bias = 0.25\n", [0.25]),
        ("bias = -1\n", [-1.0]),
        ("out_channels = 2\nbias = [0.5, -2.0]\n", [0.5, -2.0]),
        ("out_channels = 2\nbias = 0.5\n", [0.5, 0.5]),
        ("bias = true\n", [0.0]),
        ("bias = false\n", [0.0]),
    ],
)
def test_the_bias_is_added_to_every_output(
    tmp_path: Path, extra: str, expected: list[float]
) -> None:
    out = outputs(tmp_path, extra)
    assert out.shape[1] == len(expected)
    for channel, value in enumerate(expected):
        assert np.allclose(out[:, channel], value, atol=1e-6)


def test_a_bias_list_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[\[layers\]\] 'c': bias has 3 values for 2 output"):
        outputs(tmp_path, "out_channels = 2\nbias = [1, 2, 3]\n")
