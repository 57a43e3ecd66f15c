"""The input archive's reading side: which frames a replay sends (session, interval by seq
or by time, warm-up) and what it refuses, on real segments written to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamconv.archive.commands import ns
from streamconv.archive.format import segments, write_segment
from streamconv.capture.sources.archive import ArchiveSource, choose
from streamconv.errors import ConfigError, SourceError

T0 = ns("2026-12-06T14:00:00")
SECOND = 1_000_000_000


def record(root: Path, session: str, seqs: range, start_ns: int) -> None:
    """One frame a second, in segments of 10, each frame filled with its seq."""
    for first in range(seqs.start, seqs.stop, 10):
        part = np.arange(first, min(first + 10, seqs.stop))
        frames = np.stack([np.full((4, 6), q % 256, np.uint8) for q in part])
        write_segment(root / "cam" / session, "cam", session, frames, part,
                      start_ns + (part - seqs.start) * SECOND, 1.0, 1)  # fmt: skip


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    record(tmp_path, "a" * 32, range(0, 60), T0)  # 14:00:00 .. 14:00:59
    record(tmp_path, "b" * 32, range(0, 30), T0 + 3600 * SECOND)  # 15:00:00 .. 15:00:29
    return tmp_path


def test_the_latest_session_by_default_and_a_named_one(archive: Path) -> None:
    found = segments(archive, "cam")
    assert choose(found, None, None, None, None, None, 0).session == "b" * 32
    whole = choose(found, "aaa", None, None, None, None, 0)
    assert (whole.first, whole.start, whole.end) == (0, 0, 59)


def test_an_interval_by_time_picks_its_session_and_seqs(archive: Path) -> None:
    found = segments(archive, "cam")
    i = choose(found, None, None, None, ns("2026-12-06T14:00:20"), ns("2026-12-06T14:00:30.5"), 5)
    assert i.session == "a" * 32
    assert (i.first, i.start, i.end, i.warmup) == (15, 20, 30, 5)
    source = ArchiveSource(archive, "cam", i)
    got = [(int(f[0, 0]), source.capture_time()) for f in source]
    assert [q for q, _ in got] == list(range(15, 31))
    assert got[5][1] == ns("2026-12-06T14:00:20")  # the original capture time, kept
    assert source.length == 16
    assert source.fps == 1.0


def test_the_warm_up_stops_at_the_sessions_first_frame(archive: Path) -> None:
    i = choose(segments(archive, "cam"), "a", 3, None, None, None, 50)
    assert (i.first, i.start, i.warmup) == (0, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"session": "c"}, "names 0 of the recorded"),
        ({"session": "a", "from_seq": 70}, "holds seqs 0..59: nothing in 70..59"),
        ({"session": "a", "from_seq": 30, "to_seq": 10}, "nothing in 30..10"),
    ],
)
def test_an_interval_that_is_not_there_is_refused(
    archive: Path, kwargs: dict[str, object], said: str
) -> None:
    args = {"session": None, "from_seq": None, "to_seq": None, "from_t_ns": None,
            "to_t_ns": None, "warmup": 0} | kwargs  # fmt: skip
    with pytest.raises(SourceError, match=said):
        choose(segments(archive, "cam"), **args)  # type: ignore[arg-type]


def test_a_time_is_iso_8601_or_a_clear_error() -> None:
    assert ns("2026-12-06T14:00:00+01:00") == T0 - 3600 * SECOND
    with pytest.raises(ConfigError, match="not an ISO 8601 time"):
        ns("yesterday")


def test_a_lossy_archive_is_smaller_close_and_says_it_is_not_exact(tmp_path: Path) -> None:

    rng = np.random.default_rng(0)
    base = (np.add.outer(np.arange(48), np.arange(64)) * 2).astype(np.uint8)
    frames = np.stack([base + rng.integers(0, 3, base.shape, dtype=np.uint8) for _ in range(8)])
    q = np.arange(8)
    write_segment(tmp_path / "cam" / "s", "cam", "s" * 32, frames, q, q, None, 1, quality=90)
    write_segment(tmp_path / "exact" / "s", "exact", "s" * 32, frames, q, q, None, 1)
    lossy, exact = segments(tmp_path, "cam")[0], segments(tmp_path, "exact")[0]
    assert lossy.lossy
    assert lossy.codec == "jpeg q90"
    assert not exact.lossy
    back, seqs, _ = lossy.read()
    assert back.shape == frames.shape
    assert back.dtype == np.uint8
    assert list(seqs) == list(range(8))
    assert np.abs(back.astype(int) - frames).max() <= 8  # close, not equal
    assert np.array_equal(exact.read()[0], frames)  # lossless: equal
    assert lossy.nbytes < exact.nbytes


def test_archive_ls_marks_a_lossy_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamconv.archive.commands import ls

    frames = np.zeros((4, 8, 8), np.uint8)
    q = np.arange(4)
    write_segment(tmp_path / "cam" / "s", "cam", "s" * 32, frames, q, q, None, 1, quality=50)
    assert ls(tmp_path) == 0
    assert "lossy (jpeg q50): a replay is not exact" in capsys.readouterr().out


def test_replay_names_the_streams_when_it_cannot_pick_one(archive: Path) -> None:
    import argparse

    from streamconv.archive.commands import replay
    from streamconv.config import load_settings

    record(archive, "c" * 32, range(0, 5), T0)
    (archive / "other" / ("d" * 32)).mkdir(parents=True)
    write_segment(archive / "other" / ("d" * 32), "other", "d" * 32,
                  np.zeros((2, 4, 6), np.uint8), np.arange(2), np.arange(2), None, 1)  # fmt: skip
    args = argparse.Namespace(archive=archive, stream=None, warmup="0")
    with pytest.raises(ConfigError, match="holds streams cam, other: name one with --stream"):
        replay(args, load_settings("default", environ={}))


def test_a_restarted_recorder_keeps_resent_frames_once(tmp_path: Path) -> None:
    """After a worker restart, frames resent by a lossless capture that the archive already
    holds are not kept again (the archive says where each session stands)."""
    from streamconv.config.roles import RecordSettings
    from streamconv.wire.protocol import InputMessage
    from streamconv.worker.recorder import Recorder
    from streamconv.worker.stats import Stats

    session = "e" * 32
    record(tmp_path, session, range(0, 10), T0)  # what the first worker kept
    recorder = Recorder(RecordSettings(dir=tmp_path), Stats())
    for seq in range(6, 13):  # the resend: 6..9 again, then new frames
        frame = np.full((4, 6), seq, np.uint8)
        recorder.add(InputMessage("frame", "cam", session, seq, T0 + seq, frame), 0.0)
    assert recorder.close(10)
    found = [s for s in segments(tmp_path, "cam") if s.session == session]
    assert [(s.first_seq, s.last_seq) for s in found] == [(0, 9), (10, 12)]


def test_one_segment_is_always_taken_however_large_its_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamconv.config.roles import RecordSettings
    from streamconv.wire.protocol import InputMessage
    from streamconv.worker import recorder as module
    from streamconv.worker.stats import Stats

    monkeypatch.setattr(module, "PENDING_BYTES", 100)  # smaller than one frame
    stats = Stats()
    recorder = module.Recorder(RecordSettings(dir=tmp_path, segment_frames=2), stats)
    for seq in range(2):
        frame = np.zeros((20, 20), np.uint8)
        recorder.add(InputMessage("frame", "big", "s" * 32, seq, seq, frame), 0.0)
    assert recorder.close(10)
    assert sum(s.frames for s in segments(tmp_path, "big")) == 2
    assert stats.counts["record_dropped"] == 0


def test_frames_ahead_of_a_resend_do_not_hide_the_resent_ones(tmp_path: Path) -> None:
    """After a restore, frames queued before the restart can arrive before the resend of
    earlier ones: both are kept, and a replay sends them in seq order, each once."""
    from streamconv.config.roles import RecordSettings
    from streamconv.wire.protocol import InputMessage
    from streamconv.worker.recorder import Recorder
    from streamconv.worker.stats import Stats

    session = "f" * 32
    record(tmp_path, session, range(0, 10), T0)
    recorder = Recorder(RecordSettings(dir=tmp_path, segment_frames=4), Stats())
    for seq in [*range(15, 18), *range(8, 15)]:  # 15..17 first, then the resend from 8
        frame = np.full((4, 6), seq, np.uint8)
        recorder.add(InputMessage("frame", "cam", session, seq, T0 + seq, frame), 0.0)
    assert recorder.close(10)
    found = segments(tmp_path, "cam")
    i = choose(found, session, None, None, None, None, 0)
    assert (i.first, i.end) == (0, 17)
    sent = [int(f[0, 0]) for f in ArchiveSource(tmp_path, "cam", i)]
    assert sent == list(range(18))
