"""Settings: the shipped configs, strict validation with named key paths, env and overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamconv.config import ConvLayer, FileKernel, Settings, load_settings
from streamconv.errors import ConfigError
from streamconv.model import build_model

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "streamconv/presets").glob("*.toml"))
LAYER = '[[layers]]\nname = "low"\ntype = "lowpass"\ntau = 2.0\n'


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert str(path) in message
    return message


def test_both_shipped_configs_are_found() -> None:
    assert {p.name for p in SHIPPED} >= {"default.toml", "retina.toml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads_and_builds(path: Path) -> None:
    settings = load_settings(path, {"worker": {"device": "cpu"}}, environ={})
    model = build_model(settings)
    assert model.stage_names() == [spec.name for spec in settings.layers]
    out = model.run(np.full((4, 12, 16), 0.5, dtype=np.float32))
    assert [tuple(t.shape[2:]) for t in out] == [(4, 12, 16)] * len(settings.layers)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (f"bogus = 1\n{LAYER}", "bogus"),
        (f"[worker]\nchunkk = 4\n{LAYER}", "worker.chunkk"),
        (f"{LAYER}shape = 3\n", "layers.0.lowpass.shape"),
        (
            '[[layers]]\nname = "c"\ntype = "conv"\n'
            'spatial = { kind = "gaussian", sigma = 1.0, radius = 2 }\n',
            "layers.0.conv.spatial.gaussian.radius",
        ),
        (
            '[[layers]]\nname = "c"\ntype = "conv"\n'
            'kernel = { kind = "random", size = [1, 3, 3], sede = 2 }\n',
            "layers.0.conv.kernel.random.sede",
        ),
    ],
)
def test_unknown_key_is_rejected_by_path(tmp_path: Path, text: str, path: str) -> None:
    message = config_error(tmp_path, text)
    assert f"{path}: Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[layers]]\nname = "low"\ntype = "lowpass"\ntau = -1.0\n', "layers.0.lowpass.tau"),
        (f"[worker]\nchunk = 0\n{LAYER}", "worker.chunk"),
        (f'[worker]\ndevice = "tpu"\n{LAYER}', "worker.device"),
        (f'[worker]\ninput = "udp://127.0.0.1:5"\n{LAYER}', "worker.input"),
        (f'[worker]\noutput = "127.0.0.1:5556"\n{LAYER}', "worker.output"),
        (LAYER + LAYER, "repeated: ['low']"),
        (
            '[[layers]]\nname = "c"\ntype = "conv"\nkernel = { kind = "random", size = [1, 1, 1] }'
            '\nspatial = { kind = "gaussian", sigma = 1.0 }\n',
            "not both",
        ),
        ('[[layers]]\nname = "c"\ntype = "conv"\n', "layers.0.conv: Value error, needs a 'kernel'"),
        ("[worker]\nchunk = 4\n", "layers: Field required"),
        ('[[layers]]\nname = "a b"\ntype = "lowpass"\ntau = 1.0\n', "layers.0.lowpass.name"),
    ],
)
def test_bad_value_is_named(tmp_path: Path, text: str, named: str) -> None:
    assert named in config_error(tmp_path, text)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[worker\nchunk = 4\n")
    assert "cannot read config file" in message


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(("# caf\u00e9\n" + LAYER).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml"):
        load_settings(path, environ={})


def test_env_overrides_parse_json(tmp_path: Path) -> None:
    path = write(tmp_path, f'[worker]\nchunk = 8\ndevice = "auto"\n{LAYER}')
    env = {
        "STREAMCONV_WORKER__CHUNK": "16",
        "STREAMCONV_WORKER__DEVICE": "cpu",
        "STREAMCONV_WORKER__INPUT": "tcp://0.0.0.0:5555",
        "STREAMCONV_WORKER__ALLOW_INSECURE": "true",
        "UNRELATED": "x",
        "STREAMCONV_NOSECTION": "ignored",
    }
    w = load_settings(path, environ=env).worker
    assert (w.chunk, w.device, w.input.endpoint) == (16, "cpu", "tcp://0.0.0.0:5555")
    assert isinstance(w.chunk, int)
    assert w.allow_insecure is True


def test_an_exposed_bind_without_curve_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f'[worker]\noutput = "tcp://0.0.0.0:5556"\n{LAYER}')
    with pytest.raises(
        ConfigError, match=r"output tcp://0.0.0.0:5556 is reachable .*allow_insecure"
    ):
        load_settings(path, environ={})
    for local in ("tcp://127.0.0.1:5556", "tcp://localhost:5556", "tcp://[::1]:5556",
                  "ipc:///tmp/sc-out", "inproc://out"):  # fmt: skip
        assert load_settings(path, {"worker": {"output": local}}, environ={})


def test_curve_settings_come_in_pairs(tmp_path: Path) -> None:
    path = write(tmp_path, f'[worker.input]\ncurve_secret = "s.key_secret"\n{LAYER}')
    with pytest.raises(ConfigError, match="curve_clients"):
        load_settings(path, environ={})
    path = write(tmp_path, f'[capture.connect]\ncurve_server = "w.key"\n{LAYER}')
    with pytest.raises(ConfigError, match="curve_secret"):
        load_settings(path, environ={})


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, f"[worker]\nchunk = 8\nmax_streams = 3\n{LAYER}")
    env = {"STREAMCONV_WORKER__CHUNK": "16", "STREAMCONV_WORKER__MAX_WAIT_MS": "5"}
    assert load_settings(path, environ={}).worker.chunk == 8
    assert load_settings(path, environ=env).worker.chunk == 16
    w = load_settings(path, {"worker": {"chunk": 4}}, environ=env).worker
    assert (w.chunk, w.max_wait_ms, w.max_streams) == (4, 5.0, 3)


def test_environ_none_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, LAYER)
    monkeypatch.setenv("STREAMCONV_WORKER__CHUNK", "5")
    assert load_settings(path).worker.chunk == 5
    assert load_settings(path, environ={}).worker.chunk == 8


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("STREAMCONV_WORKER__CHUNKS", "4", "worker.chunks"),
        ("STREAMCONV_WORKER__CHUNK", "many", "worker.chunk"),
        ("STREAMCONV_WORKER__DEVICE", "gpu", "worker.device"),
    ],
)
def test_bad_env_override_is_named(tmp_path: Path, var: str, value: str, named: str) -> None:
    path = write(tmp_path, LAYER)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(path, environ={var: value})


def file_config(tmp_path: Path, weights: str) -> Path:
    folder = tmp_path / "conf"
    folder.mkdir(exist_ok=True)
    return write(
        folder,
        f'[worker]\ndevice = "cpu"\n[[layers]]\nname = "w"\ntype = "conv"\n'
        f'kernel = {{ kind = "file", path = "{weights}" }}\n',
    )


def test_npy_weights_resolve_relative_to_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    path = file_config(tmp_path, "w.npy")
    np.save(path.parent / "w.npy", kernel)
    monkeypatch.chdir(tmp_path)  # the path must not depend on the working directory
    settings = load_settings(path, environ={})
    spec = settings.layers[0]
    assert isinstance(spec, ConvLayer)
    assert isinstance(spec.kernel, FileKernel)
    assert spec.kernel.path == path.parent / "w.npy"
    conv = build_model(settings).get_submodule("w")
    expected = torch.from_numpy(kernel).flip(0, 1, 2)[None, None].float()
    assert torch.equal(conv.weight.detach(), expected)


def test_pt_weights_resolve_relative_to_the_config_folder(tmp_path: Path) -> None:
    weight = torch.randn(1, 1, 3, 1, 5, dtype=torch.float32)
    path = file_config(tmp_path, "sub/w.pt")
    (path.parent / "sub").mkdir()
    torch.save(weight, path.parent / "sub" / "w.pt")
    conv = build_model(load_settings(path, environ={})).get_submodule("w")
    assert torch.equal(conv.weight.detach(), weight.flip(2, 3, 4))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("w.npy", b"not a numpy file at all"),
        ("w.npy", None),  # missing
        ("w.pt", "dict"),
        ("w.npy", "4d"),
        ("w.txt", b"1 2 3"),
    ],
)
def test_bad_weights_file_is_a_config_error(tmp_path: Path, name: str, content: object) -> None:
    path = file_config(tmp_path, name)
    target = path.parent / name
    if content == "dict":
        torch.save({"weight": torch.ones(3)}, target)
    elif content == "4d":
        np.save(target, np.ones((2, 2, 3, 3)))
    elif isinstance(content, bytes):
        target.write_bytes(content)
    settings = load_settings(path, environ={})
    with pytest.raises(ConfigError, match=r"w\.(npy|pt|txt)|layer 'w'"):
        build_model(settings)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a torch file" * 4, b"garbage bytes here" * 10],
    ids=["empty", "text", "junk"],
)
def test_corrupt_pt_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = file_config(tmp_path, "w.pt")
    (path.parent / "w.pt").write_bytes(content)
    with pytest.raises(ConfigError, match=r"w\.pt"):
        build_model(load_settings(path, environ={}))


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, LAYER), environ={})
    assert isinstance(settings, Settings)
    with pytest.raises(ValueError, match="frozen"):
        settings.worker.chunk = 3  # type: ignore[misc]


def test_errors_name_the_environment_variable_or_the_command_line(tmp_path: Path) -> None:
    path = REPO / "streamconv/presets/default.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, {"worker": {"chunk": 0}}, environ={"STREAMCONV_WORKER__CHUNKS": "3"})
    message = str(info.value)
    assert "worker.chunk: " in message
    assert "(from the command line)" in message
    assert "worker.chunks: Extra inputs are not permitted (from STREAMCONV_WORKER__CHUNKS)" in (
        message
    )


def test_a_dotted_layer_name_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[[layers]]\nname = "a.b"\ntype = "lowpass"\ntau = 2.0\n')
    assert "layers.0.lowpass.name" in message


def test_presets_load_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert [layer.name for layer in load_settings("retina", environ={}).layers] == [
        "opl",
        "bipolar",
        "amacrine",
        "ganglion",
    ]
    with pytest.raises(ConfigError, match=r"presets by name: default, retina"):
        load_settings("no-such-preset", environ={})
