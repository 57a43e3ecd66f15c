"""docs/ARCHITECTURE.md's "where things live" names files and registries that exist."""

from __future__ import annotations

import re

from streamconv.capture import sources
from streamconv.client import sinks
from streamconv.config import layers
from tests.conftest import REPO


def test_the_files_it_names_exist() -> None:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`(streamconv/[\w/]+\.py)`", text))
    assert len(named) >= 6, named  # the registries, stats, metrics, roles
    assert [p for p in sorted(named) if not (REPO / p).is_file()] == []
    assert "docs/ARCHITECTURE.md" in (REPO / "README.md").read_text()


def test_the_registries_it_names_exist() -> None:
    assert layers.LAYER_TYPES
    assert sources.KINDS
    assert sinks.FILE_SINKS
