"""The image, built and tried: scripts/container-smoke.sh, where a container engine answers.

The script builds the image, runs the worker in a container, streams the sample clip through it
from the host, compares the outputs with a worker on the host, checks /readyz and the image's
HEALTHCHECK, and stops the container with SIGTERM (exit 0 within the grace period). It decides
itself whether the engine can run containers; where it cannot, it prints one line and exits 77
(could not run), and the test is skipped with that line; any other non-zero code is a failure.
SMOKE_ENGINE and SMOKE_BUILD_ARGS pass through (docs/CONTAINER.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts/container-smoke.sh"
SKIPPED = "container smoke skipped:"
COULD_NOT_RUN = 77

pytestmark = [pytest.mark.integration, pytest.mark.deploy]


def _engine() -> str | None:
    """The engine whose `info` answers within a few seconds; SMOKE_ENGINE if set."""
    forced = os.environ.get("SMOKE_ENGINE")
    if forced:
        return forced if shutil.which(forced) else None
    for name in ("docker", "podman"):
        if shutil.which(name) is None:
            continue
        try:
            probe = subprocess.run([name, "info"], capture_output=True, timeout=20, check=False)
        except subprocess.TimeoutExpired:
            continue
        if probe.returncode == 0:
            return name
    return None


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a first build downloads torch
def test_image_serves_the_sample_exactly_and_stops_on_sigterm() -> None:
    engine = _engine()
    if engine is None:
        pytest.skip("no container engine: neither `docker info` nor `podman info` answers")
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=1700,
        cwd=REPO,
        check=False,
    )
    if proc.returncode == COULD_NOT_RUN:
        pytest.skip(proc.stdout.strip())
    report = f"{proc.stdout}\n{proc.stderr}"[-6000:]
    assert proc.returncode == 0, report
    assert "container smoke passed" in proc.stdout, report


def test_without_an_engine_the_script_says_it_could_not_run(tmp_path: Path) -> None:
    # Before: it exited 0, a pass for a script that had run nothing.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "timeout", "mktemp", "grep", "rm"):  # no docker, no podman
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if k != "SMOKE_ENGINE"} | {"PATH": str(bin_dir)}
    bash = shutil.which("bash") or "/bin/bash"
    proc = subprocess.run(
        [bash, str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert proc.returncode == COULD_NOT_RUN, proc.stderr
    assert proc.stdout.startswith(f"{SKIPPED} no container engine here"), proc.stdout
