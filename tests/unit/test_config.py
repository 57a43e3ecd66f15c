"""Settings: the shipped configs, strict validation with named key paths, env and overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamconv.config import ConvLayer, FileKernel, Settings, load_settings
from streamconv.errors import ConfigError
from streamconv.model import build_model
from tests.conftest import PRESETS

SHIPPED = sorted(PRESETS.glob("*.toml"))
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
    ("text", "said"),
    [
        (f"bogus = 1\n{LAYER}", "unknown top-level key 'bogus'; allowed: worker, capture, view"),
        (f"[bogus]\nx = 1\n{LAYER}", "unknown section [bogus]; allowed: worker, capture, view"),
        (f"[worker]\nchunkk = 4\n{LAYER}", "unknown key 'chunkk' in [worker]; allowed: input, "),
        (f"{LAYER}shape = 3\n", "unknown key 'shape' in [[layers]] 'low'; allowed: type, name"),
        (
            '[[layers]]\nname = "c"\ntype = "conv"\n'
            'spatial = { kind = "gaussian", sigma = 1.0, radius = 2 }\n',
            "unknown key 'radius' in [[layers]] 'c' spatial; allowed: kind, sigma, size",
        ),
        (
            '[[layers]]\nname = "c"\ntype = "conv"\n'
            'kernel = { kind = "random", size = [1, 3, 3], sede = 2 }\n',
            "unknown key 'sede' in [[layers]] 'c' kernel; allowed: kind, seed, size, scale",
        ),
        (
            f'[capture.connect]\nendpiont = "tcp://h:1"\n{LAYER}',
            "unknown key 'endpiont' in [capture] connect; allowed: endpoint, bind, hwm",
        ),
    ],
)
def test_unknown_key_says_where_and_what_is_allowed(tmp_path: Path, text: str, said: str) -> None:
    message = config_error(tmp_path, text)
    assert said in message
    assert "Extra inputs" not in message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[layers]]\nname = "low"\ntype = "lowpass"\ntau = -1.0\n', "[[layers]] 'low' tau: "),
        (f"[worker]\nchunk = 0\n{LAYER}", "[worker] chunk: "),
        (f'[worker]\ndevice = "tpu"\n{LAYER}', "[worker] device: must be auto, cpu"),
        (
            f'[worker]\ninput = "udp://127.0.0.1:5"\n{LAYER}',
            "[worker] input: 'udp://127.0.0.1:5' is not an endpoint: write tcp://HOST:PORT, "
            "ipc://PATH or inproc://NAME",
        ),
        (f'[worker]\noutput = "127.0.0.1:5556"\n{LAYER}', "[worker] output: '127.0.0.1:5556' is"),
        (f'[proxy]\nlisten = "foo"\n{LAYER}', "[proxy] listen: 'foo' is not an endpoint"),
        (f'[worker]\nshards = ["tcp://a:1", "b"]\n{LAYER}', "[worker] shards.1: 'b' is not an"),
        (LAYER + LAYER, "repeated: ['low']"),
        (
            '[[layers]]\nname = "c"\ntype = "conv"\nkernel = { kind = "random", size = [1, 1, 1] }'
            '\nspatial = { kind = "gaussian", sigma = 1.0 }\n',
            "not both",
        ),
        ('[[layers]]\nname = "c"\ntype = "conv"\n', "[[layers]] 'c': needs a 'kernel'"),
        ('[[layers]]\nname = "c"\ntype = "lowpass"\n', "missing key 'tau' in [[layers]] 'c'"),
        ('[[layers]]\nname = "c"\ntype = "pool"\n', "[[layers]] 'c': unknown type 'pool'; "),
        ("[worker]\nchunk = 4\n", "no [[layers]]"),
        ('[[layers]]\nname = "a b"\ntype = "lowpass"\ntau = 1.0\n', "'a b' is not a layer name"),
        (
            f'{LAYER}[[layers]]\nname = "two"\ntype = "lowpass"\ntau = 0\n',
            "[[layers]] 'two' tau: ",
        ),
        (f'[capture]\nstream = "a/b"\n{LAYER}', "[capture] stream: 'a/b' is not a stream name"),
    ],
)
def test_bad_value_is_named(tmp_path: Path, text: str, named: str) -> None:
    message = config_error(tmp_path, text)
    assert named in message
    for internal in ("Value error,", "should match pattern", "layers.", "Extra inputs"):
        assert internal not in message


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
        ("STREAMCONV_WORKER__CHUNKS", "4", "unknown key 'chunks' in [worker]; allowed: "),
        ("STREAMCONV_WORKER__CHUNK", "many", "[worker] chunk: "),
        ("STREAMCONV_WORKER__DEVICE", "gpu", "[worker] device: "),
        ("STREAMCONV_WORKR__CHUNK", "4", "unknown section [workr]; allowed: worker, capture"),
        ("STREAMCONV_WORKER__INPUT", "foo", "[worker] input: 'foo' is not an endpoint"),
        ("STREAMCONV_WORKER__INPUT", "tcp://0.0.0.0:5555", "[worker]: input tcp://0.0.0.0:5555"),
    ],
)
def test_bad_env_override_is_named(tmp_path: Path, var: str, value: str, named: str) -> None:
    path = write(tmp_path, LAYER)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={var: value})
    assert named in str(info.value)
    assert f"{var})" in str(info.value)  # the variable is named in its own error


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
    path = PRESETS / "default.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, {"worker": {"chunk": 0}}, environ={"STREAMCONV_WORKER__CHUNKS": "3"})
    message = str(info.value)
    assert "[worker] chunk: Input should be greater than or equal to 1 (from the command line)" in (
        message
    )
    assert "unknown key 'chunks' in [worker]; allowed: " in message
    assert message.endswith("(from STREAMCONV_WORKER__CHUNKS)")


def test_a_dotted_layer_name_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[[layers]]\nname = "a.b"\ntype = "lowpass"\ntau = 2.0\n')
    assert "[[layers]] 'a.b' name: 'a.b' is not a layer name: 1 to 64 letters, digits" in message


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


def test_an_error_in_a_preset_says_it_is_the_preset() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("default", environ={"STREAMCONV_WORKER__CHUNK": "0"})
    assert str(info.value).startswith("invalid settings in the preset 'default':")


@pytest.mark.parametrize(
    ("var", "hint"),
    [
        ("STREAMCONV_WORKER_CHUNK", "did you mean STREAMCONV_WORKER__CHUNK?"),
        ("STREAMCONV_CAPTURE_SHARDS", "did you mean STREAMCONV_CAPTURE__SHARDS?"),
        ("STREAMCONV_NOSECTION", "e.g. STREAMCONV_WORKER__CHUNK"),
    ],
)
def test_a_variable_with_one_underscore_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, var: str, hint: str
) -> None:
    path = write(tmp_path, LAYER)
    with caplog.at_level("WARNING", logger="streamconv.config"):
        assert load_settings(path, environ={var: "16"}).worker.chunk == 8
    [record] = caplog.records
    assert var in record.getMessage()
    assert hint in record.getMessage()
    assert "sections: worker, capture, view, proxy, log" in record.getMessage()


def test_the_test_suites_own_variable_is_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="streamconv.config"):
        load_settings(write(tmp_path, LAYER), environ={"STREAMCONV_CHROMIUM": "/bin/chrome"})
    assert not caplog.records


def test_a_socket_variable_and_its_keys_combine(tmp_path: Path) -> None:
    env = {"STREAMCONV_WORKER__INPUT": "tcp://127.0.0.1:7000", "STREAMCONV_WORKER__INPUT__HWM": "3"}
    sock = load_settings(write(tmp_path, LAYER), environ=env).worker.input
    assert (sock.endpoint, sock.hwm) == ("tcp://127.0.0.1:7000", 3)
