"""Seeded kill schedules (tests/integration/crashes.py): a short run here, a long one from
scripts/crash-schedules.sh (CRASH_SCHEDULES=N schedules from seed CRASH_SEED, outcomes
appended to CRASH_REPORT as JSON lines)."""

from __future__ import annotations

import os
import random
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


@pytest.mark.timeout(600)
def test_issue_16_case_1_a_kill_at_an_ordinary_moment(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """The reported crash: checkpoints every 10 frames, a real-time lossless capture, the
    worker killed a few seconds in (mid-chunk, well after a checkpoint) and restarted. It
    restored an older checkpoint than the capture had queued; the capture took a stale
    answer for the restarted worker's, resent nothing, and 131-168 of 240 outputs were lost."""
    schedule = Schedule(seed=0, chunk=8, every=10, streams=1, frames=120, realtime=True,
                        kills=["random", "random"], waits=[0.35, 0.3], slow_s=0.0)  # fmt: skip
    outcome = run_schedule(schedule, tmp_path, python_env)
    assert not outcome.problems, "\n".join(outcome.problems)
    assert outcome.kills == 2


@pytest.mark.timeout(600)
@pytest.mark.parametrize("realtime", [False, True], ids=["full-speed", "30fps"])
def test_the_pipelined_worker_under_a_slow_subscriber_a_fast_capture_and_sigterm(
    realtime: bool, tmp_path: Path, python_env: dict[str, str]
) -> None:
    """Issue 21: the worker's input, model and output threads (`pipeline = "on"`) under two full
    speed lossless captures held back by a lossless subscriber that takes 3 ms an output, and
    stopped with SIGTERM twice at random moments (each must exit 0) and started again. Every
    output once, each stream's in rising order (but the outputs of frames resent after a
    restart), equal to the offline pipeline; nothing counted missing. Paced at 30 frames/s,
    a clean stop often checkpoints every frame sent: the sender then resends nothing and
    marks its next frame as where the stream goes on."""
    seed = int(os.environ.get("PIPELINE_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    schedule = Schedule(seed=seed, chunk=rng.choice((1, 5, 8)), every=rng.choice((1, 10, 64)),
                        streams=2, frames=300, realtime=realtime, kills=["sigterm", "sigterm"],
                        waits=[rng.uniform(0.05, 0.4) for _ in range(2)],
                        slow_s=0.003)  # fmt: skip
    env = python_env | {"STREAMCONV_WORKER__PIPELINE": "on"}  # a CPU's default is off
    outcome = run_schedule(schedule, tmp_path, env)
    assert not outcome.problems, f"PIPELINE_SEED={seed} ({outcome.schedule}):\n" + "\n".join(
        outcome.problems
    )
    assert not outcome.disorder, f"PIPELINE_SEED={seed}: {outcome.disorder[:10]}"
    assert outcome.kills == 2
