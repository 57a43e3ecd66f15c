"""The README's config example is a valid config: docs that drift from the code fail here."""

from __future__ import annotations

import re
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
