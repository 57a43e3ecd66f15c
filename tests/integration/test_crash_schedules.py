"""Seeded kill schedules (tests/integration/crashes.py): a short run here, a long one from
scripts/crash-schedules.sh (CRASH_SCHEDULES=N schedules from seed CRASH_SEED, outcomes
appended to CRASH_REPORT as JSON lines)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.crashes import Schedule, run_schedule

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST = int(os.environ.get("CRASH_SEED", "1"))
SEEDS = range(FIRST, FIRST + int(os.environ.get("CRASH_SCHEDULES", "3")))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_kill_schedule_loses_nothing_and_stays_exact(
    seed: int, tmp_path: Path, python_env: dict[str, str]
) -> None:
    outcome = run_schedule(Schedule.draw(seed), tmp_path, python_env)
    report = os.environ.get("CRASH_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(outcome.line() + "\n")
    assert not outcome.problems, f"seed {seed} ({outcome.schedule}):\n" + "\n".join(
        outcome.problems
    )
