"""The import and ownership rules of STYLE.md, checked on the parsed source, not the text."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "streamconv"


def modules(*names: str) -> list[Path]:
    """Files of the package: a module name ('engine') or a subpackage ('sources/')."""
    out: list[Path] = []
    for name in names:
        out += sorted((PKG / name).rglob("*.py")) if name.endswith("/") else [PKG / f"{name}.py"]
    assert out, names
    assert all(p.is_file() for p in out), out
    return out


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported(path: Path) -> set[str]:
    """Top-level packages a module imports, anywhere in it (lazy imports in functions too)."""
    names: set[str] = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def dotted(node: ast.expr) -> str:
    """'os.environ.get' for an attribute chain on a name; '' for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return ""


def uses(path: Path) -> Iterator[str]:
    """Every dotted name used, and every name imported from a module ('os.getenv')."""
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Attribute | ast.Name):
            name = dotted(node)
            if name:
                yield name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


ALL = sorted(PKG.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize(
    ("files", "banned"),
    [
        (["wire/protocol"], {"zmq", "torch"}),
        (["layers/", "worker/engine"], {"zmq"}),
        (["capture/"], {"torch"}),
        (["worker/publisher", "worker/results", "worker/stats", "worker/metrics"], {"torch"}),
        (["client/"], {"torch"}),
        # The shared-memory ring and the archive's format are read by clients and captures.
        (["wire/shm", "archive/format"], {"zmq", "torch"}),
        (["weights", "worker/check", "worker/reload", "worker/recorder"], {"zmq"}),
    ],
    ids=[
        "protocol",
        "layers+engine",
        "capture",
        "publisher",
        "client",
        "shm+archive",
        "model checks",
    ],
)
def test_import_rules(files: list[str], banned: set[str]) -> None:
    bad = {rel(p): sorted(imported(p) & banned) for p in modules(*files)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_checker_sees_imports_and_ignores_comments(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("# import torch\ndef f():\n    from zmq import Context\n    import os.path\n")
    assert imported(probe) == {"zmq", "os"}


def test_only_config_reads_the_environment() -> None:
    readers = {
        rel(p)
        for p in ALL
        for name in uses(p)
        if name in ("os.environ", "os.getenv", "os.environb", "os.putenv")
        or name.startswith(("os.environ.", "os.getenv."))
    }
    assert readers == {"streamconv/config/load.py"}


def exits(path: Path) -> bool:
    """Calls sys.exit / os._exit / exit / quit, or imports sys.exit under any name."""
    calls = {dotted(node.func) for node in ast.walk(tree(path)) if isinstance(node, ast.Call)} & {
        "sys.exit",
        "os._exit",
        "exit",
        "quit",
    }
    return bool(calls) or any(name in ("sys.exit", "os._exit") for name in uses(path))


def test_only_cli_and_main_exit() -> None:
    exiters = {rel(p) for p in ALL if exits(p)}
    assert exiters <= {"streamconv/cli.py", "streamconv/__main__.py"}
    assert "streamconv/cli.py" in exiters or "streamconv/__main__.py" in exiters


def socket_calls(path: Path) -> list[int]:
    """Lines that call `<something>.socket(...)`, except the stdlib's `socket.socket(...)`."""
    lines = []
    for node in ast.walk(tree(path)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "socket"
            and dotted(node.func) != "socket.socket"
        ):
            lines.append(node.lineno)
    return lines


def test_only_transport_creates_zmq_sockets() -> None:
    creators = {rel(p): socket_calls(p) for p in ALL}
    assert {k for k, v in creators.items() if v} == {"streamconv/wire/transport.py"}


def test_only_transport_imports_zmq() -> None:
    """Sockets, contexts and options live in one place (with its CURVE half, wire/curve.py);
    roles speak to transport only."""
    importers = {rel(p) for p in ALL if "zmq" in imported(p)}
    assert importers == {"streamconv/wire/transport.py", "streamconv/wire/curve.py"}


def test_capture_does_not_import_torch_at_runtime() -> None:
    code = (
        "import sys\nimport streamconv.capture.role, streamconv.capture.sources\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def top_level_imports(path: Path) -> set[str]:
    """Modules imported when the module loads: not inside functions or `if TYPE_CHECKING`."""
    names: set[str] = set()
    for node in tree(path).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def offenders(files: list[Path], bad: Callable[[str], bool]) -> dict[str, list[str]]:
    """Each file's module-level imports that `bad` flags, for the files with any."""
    found = {rel(p): sorted(filter(bad, top_level_imports(p))) for p in files}
    return {k: v for k, v in found.items() if v}


def test_config_loads_without_torch() -> None:
    """A layer type's file holds its spec and its build(); torch and the layers are imported
    inside build() only, so that capture and the view load settings without torch."""
    torch_side = ("torch", "streamconv.layers")
    assert offenders(modules("config/"), lambda n: n.startswith(torch_side)) == {}
    code = "import sys, streamconv.config\nprint('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_sinks_are_edges() -> None:
    """A sink sees (header, frame) only: it imports no other part of streamconv."""
    other = re.compile(r"streamconv(?!\.client\.sinks\b)")
    assert offenders(modules("client/sinks/"), lambda n: bool(other.match(n))) == {}


def test_layers_know_no_config() -> None:
    """Streaming modules take torch.nn-style arguments; the config side builds them."""
    assert offenders(modules("layers/"), lambda n: n.startswith("streamconv.config")) == {}


PARTS = ("Engine", "Batcher", "Publisher", "Keeper", "Admission", "Previews", "Intake")


def test_only_the_composition_root_builds_a_workers_parts() -> None:
    """worker/parts.py builds a worker's parts from its settings; the role only runs them
    (Intake, which reads the socket the parts made, is the role's own). Engine.build is the
    library users' door and builds through the constructor in engine.py."""
    builders: dict[str, set[str]] = {}
    for path in modules("worker/", "cli", "run"):
        for node in ast.walk(tree(path)):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if call and node.func.id in PARTS:  # type: ignore[attr-defined]
                builders.setdefault(node.func.id, set()).add(path.name)  # type: ignore[attr-defined]
    builders.pop("Intake", None)
    builders["Batcher"].discard("engine.py")  # Engine.build, for library users and tests
    assert all(where <= {"parts.py"} for where in builders.values()), builders
    assert builders.get("Engine") == {"parts.py"}
