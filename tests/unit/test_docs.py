"""The README's config example is a valid config: docs that drift from the code fail here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from streamconv.config import WorkerSettings, load_settings
from tests.conftest import REPO


def test_readme_config_example_loads(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme, re.S)
    assert block is not None
    path = tmp_path / "readme.toml"
    path.write_text(block.group(1))
    settings = load_settings(path, environ={})
    # A setting that is off by default is shown commented out: `# key = value`.
    documented = set(re.findall(r"^(?:# )?(\w+) = ", block.group(1).split("[[layers]]")[0], re.M))
    assert documented == set(WorkerSettings.model_fields)  # every worker setting, no others
    assert [layer.name for layer in settings.layers] == ["opl", "bipolar", "ganglion"]


def test_every_view_setting_is_documented() -> None:
    from streamconv.config import ViewSettings

    readme = (REPO / "README.md").read_text()
    line = re.search(r"^\[view\] (.*?)\n\[log\]", readme, re.S | re.M)
    assert line is not None
    in_readme = set(re.findall(r"(\w+) = ", line.group(1)))
    table = (REPO / "docs/VIEW.md").read_text()
    in_table = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert in_readme == in_table == set(ViewSettings.model_fields)


def _docker_runs(text: str) -> list[list[str]]:
    """Every `docker run ...` command in `text`, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n#?\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.lstrip("# ")
        if line.startswith("docker run "):
            commands.append(shlex.split(line, comments=True))
    return commands


def _image_env() -> dict[str, str]:
    dockerfile = (REPO / "Dockerfile").read_text()
    return dict(re.findall(r"(STREAMCONV_\w+)=(\S+)", dockerfile.split("\nENV STREAMCONV", 1)[1]))


def test_every_documented_docker_run_starts() -> None:
    # Before: the Dockerfile's header and docs/CONTAINER.md ran the image without
    # STREAMCONV_WORKER__ALLOW_INSECURE=true, which the worker (bound to 0.0.0.0) refuses.
    from streamconv.cli import overrides, parser

    runs = []
    for doc in ("README.md", "docs/CONTAINER.md", "Dockerfile"):
        for cmd in _docker_runs((REPO / doc).read_text()):
            rest = cmd[cmd.index("streamconv") + 1 :] or ["worker", "--config", "default"]
            env = _image_env() | dict(
                cmd[i + 1].split("=", 1) for i, tok in enumerate(cmd) if tok in ("-e", "--env")
            )
            rest = [("default" if a.startswith("/config/") else a) for a in rest]  # a mount
            args = parser().parse_args(rest)
            load_settings(args.config, overrides(args), environ=env, role=args.command)
            runs.append((doc, args.command))
    assert {(d, "worker") for d in ("README.md", "docs/CONTAINER.md", "Dockerfile")} <= set(runs)
    assert ("Dockerfile", "capture") in runs


def test_readme_conv_options_are_the_layers_keys() -> None:
    # Before: `flip = false` sat in the kernel file's parenthesis, read as a kernel key (refused).
    from streamconv.config import ConvLayer

    readme = (REPO / "README.md").read_text()
    text = re.search(r"Conv options, keys of the layer.*?table\): (.*?)\n\n", readme, re.S)
    assert text is not None
    named = set(re.findall(r"`(\w+)`", re.sub(r"\([^()]*\)", "", text.group(1))))
    kernels = {"type", "name", "kernel", "spatial", "temporal"}
    assert named == set(ConvLayer.model_fields) - kernels
    file_kernel = re.search(r'`kernel = \{ kind = "file".*?`', readme)
    assert file_kernel is not None
    assert "flip" not in file_kernel.group(0)


def test_readme_has_the_tests_section_ci_points_to() -> None:
    ci = (REPO / ".ci/run").read_text()
    assert re.search(r'"Tests"\s*#?\s*section', ci)
    tests = re.search(r"^## Tests\n(.*?)(?=^## |\Z)", (REPO / "README.md").read_text(), re.M | re.S)
    assert tests is not None
    assert "scripts/test.sh" in tests.group(1)
    assert "Chromium" in tests.group(1)
