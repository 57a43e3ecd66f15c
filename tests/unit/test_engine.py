"""Engine: chunking and timing, streamed-equals-offline for any arrival, resets, eos, bad frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamconv.config import Settings
from streamconv.errors import Drop
from streamconv.layers import Output, Sequential
from streamconv.model import build_model
from streamconv.wire.protocol import InputMessage
from streamconv.worker.engine import ChunkResult, EndResult, Engine, Failed, Result, frame_to_chw
from streamconv.worker.stats import Reset
from tests.unit.reference import rel_err

CPU = torch.device("cpu")
WAIT = 0.0625  # exact in binary, so deadlines compare exactly
LAYERS = [
    {"type": "conv", "name": "conv", "kernel": {"kind": "random", "seed": 1, "size": [3, 3, 3]}},
    {"type": "lowpass", "name": "lp", "tau": 2.0, "n": 2},
    {"type": "nonlinearity", "name": "nl", "kind": "tanh", "gain": 3.0},
]
NAMES = ["conv", "lp", "nl"]


def make_model(color: str = "gray", in_channels: int = 1) -> Sequential:
    worker = {"device": "cpu", "color": color, "in_channels": in_channels}
    return build_model(Settings.model_validate({"worker": worker, "layers": LAYERS}), CPU)


MODEL = make_model()


def engine(chunk: int = 4, model: Sequential = MODEL, **kw: object) -> Engine:
    return Engine.build(model, device=CPU, dtype=torch.float32, chunk=chunk, max_wait_s=WAIT, **kw)  # type: ignore[arg-type]


def take(eng: Engine, msg: InputMessage, now: float, sender: str | None = None) -> list[Result]:
    """One message in, as the worker does it: submit, then run the chunks it filled."""
    return eng.submit(msg, now, sender) + eng.run_ready()


def clip(n: int, h: int = 6, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def frame(seq: int, pixels: np.ndarray, stream: str = "a", session: str = "s1") -> InputMessage:
    return InputMessage("frame", stream, session, seq, 1000 + seq, pixels)


def eos(seq: int, stream: str = "a", session: str = "s1") -> InputMessage:
    return InputMessage("eos", stream, session, seq, 0)


def offline(frames: np.ndarray, model: Sequential = MODEL) -> dict[str, np.ndarray]:
    """The whole clip in one model.run from a fresh state: name -> (T, C, H, W)."""
    x = np.stack([frame_to_chw(f, "gray") for f in frames], axis=1)[None]
    model.reset()
    out = model.run(torch.from_numpy(x))
    model.reset()
    assert isinstance(out, Output)
    return {name: t[0].transpose(0, 1).numpy() for name, t in out.items()}


def restored(frames: np.ndarray, topic: bytes | None = None) -> Engine:
    """A fresh engine holding stream "a" as a checkpoint after frames 0..3 left it (chunks
    of 2), with a subscription to `topic` if given (before the restore)."""
    first = engine(chunk=2)
    for seq in range(4):
        take(first, frame(seq, frames[seq]), 0.0)
    snap = first.continuity.snapshot("a")
    assert snap is not None
    assert snap.next_seq == 4
    eng = engine(chunk=2)
    if topic is not None:
        eng.stats.subscription(True, topic)
    eng.continuity.restore(snap, 0.0)
    return eng


def chunks(results: list[Result], stream: str = "a") -> list[ChunkResult]:
    return [r for r in results if isinstance(r, ChunkResult) and r.stream == stream]


def joined(results: list[ChunkResult]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([r.layers[name] for r in results]) for name in results[0].layers}


def assert_matches(results: list[ChunkResult], frames: np.ndarray) -> None:
    got, want = joined(results), offline(frames)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape
        assert got[name].dtype == np.float32
        assert rel_err(got[name], want[name]) < 1e-5, name


def test_outputs_only_after_a_full_chunk() -> None:
    eng, frames = engine(chunk=4), clip(9)
    got = [take(eng, frame(i, f), now=0.0) for i, f in enumerate(frames)]
    assert [len(r) for r in got] == [0, 0, 0, 1, 0, 0, 0, 1, 0]
    results = chunks([r for rs in got for r in rs])
    assert [r.seqs for r in results] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [r.t_ns for r in results] == [[1000, 1001, 1002, 1003], [1004, 1005, 1006, 1007]]
    assert eng.flush_all()[0].seqs == [8]  # type: ignore[union-attr]
    assert eng.flush_all() == []


def test_partial_chunk_runs_when_due_and_not_before() -> None:
    eng, frames = engine(chunk=4), clip(6)
    assert eng.next_deadline() is None
    assert take(eng, frame(0, frames[0]), now=10.0) == []
    assert take(eng, frame(1, frames[1]), now=10.03) == []
    assert eng.next_deadline() == pytest.approx(10.0 + WAIT)
    assert take(eng, frame(0, frames[0], stream="b"), now=10.02) == []
    assert eng.next_deadline() == pytest.approx(10.0 + WAIT)  # the earliest waiting stream
    assert eng.due(10.0 + WAIT * 0.99) == []
    due = chunks(eng.due(10.0 + WAIT))
    assert [r.seqs for r in due] == [[0, 1]]
    assert eng.next_deadline() == pytest.approx(10.02 + WAIT)
    assert [r.stream for r in chunks(eng.due(10.1), "b")] == ["b"]
    assert eng.next_deadline() is None
    assert take(eng, frame(2, frames[2]), now=11.0) == []
    assert eng.next_deadline() == pytest.approx(11.0 + WAIT)  # the clock restarts per chunk
    assert [r.seqs for r in chunks(eng.flush_all())] == [[2]]


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[int, int, list[bool]]:
    chunk = draw(st.sampled_from([1, 3, 7, 16]))
    n = draw(st.integers(1, 40))
    return chunk, n, draw(st.lists(st.booleans(), min_size=n, max_size=n))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals(), st.integers(0, 2**16))
def test_any_chunking_equals_one_offline_run(case: tuple[int, int, list[bool]], seed: int) -> None:
    chunk, n, waits = case
    eng, frames, now = engine(chunk), clip(n, seed=seed), 0.0
    results: list[Result] = []
    for i, f in enumerate(frames):
        results += take(eng, frame(i, f), now)
        now += WAIT if waits[i] else WAIT / 10
        results += eng.due(now)
    results += take(eng, eos(n), now)
    assert isinstance(results[-1], EndResult)
    out = chunks(results)
    assert all(1 <= len(r.seqs) <= chunk for r in out)
    assert [s for r in out for s in r.seqs] == list(range(n))
    assert [r.discontinuity for r in out] == [True] + [False] * (len(out) - 1)
    assert all(r.layers[k].shape[0] == len(r.seqs) for r in out for k in NAMES)
    assert_matches(out, frames)
    assert eng.stats.counts["frames_in"] == eng.stats.counts["frames_out"] == n


def test_interleaved_streams_keep_separate_state() -> None:
    eng, a, b = engine(chunk=3), clip(11, seed=1), clip(11, seed=2)
    results: list[Result] = []
    for i in range(11):
        results += take(eng, frame(i, a[i], stream="a"), 0.0)
        results += take(eng, frame(i, b[i], stream="b", session="other"), 0.0)
    results += eng.flush_all()
    assert_matches(chunks(results, "a"), a)
    assert_matches(chunks(results, "b"), b)
    assert {r.session for r in chunks(results, "b")} == {"other"}


def test_new_session_resets_state_and_marks_discontinuity() -> None:
    eng, frames = engine(chunk=4), clip(11)
    results = [r for i in range(5) for r in take(eng, frame(i, frames[i]), 0.0)]
    for j, f in enumerate(frames[5:]):
        results += take(eng, frame(j, f, session="s2"), 0.0)
    results += eng.flush_all()
    old, new = chunks(results)[:2], chunks(results)[2:]
    assert [r.session for r in old] == ["s1", "s1"]  # the partial chunk ran before the reset
    assert_matches(old, frames[:5])
    assert [r.session for r in new] == ["s2", "s2"]
    assert [r.discontinuity for r in new] == [True, False]
    assert_matches(new, frames[5:])
    assert (eng.stats.counts["resets"], eng.stats.resets[Reset.SEQ_GAP]) == (1, 0)


def test_seq_gap_resets_and_counts_missing_frames() -> None:
    eng, frames = engine(chunk=3), clip(12)
    seqs = [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13]
    results = [r for s, f in zip(seqs, frames, strict=True) for r in take(eng, frame(s, f), 0.0)]
    results += eng.flush_all()
    out = chunks(results)
    assert [s for r in out for s in r.seqs] == seqs
    assert [r.discontinuity for r in out] == [True, False, True, False, False]
    assert_matches(out[:2], frames[:5])
    assert_matches(out[2:], frames[5:])
    assert (
        eng.stats.resets[Reset.SEQ_GAP],
        eng.stats.counts["frames_missing"],
        eng.stats.counts["resets"],
    ) == (1, 2, 1)


def test_frame_size_change_resets() -> None:
    eng, small, big = engine(chunk=4), clip(6), clip(5, h=8, w=5, seed=3)
    results = [r for i, f in enumerate(small) for r in take(eng, frame(i, f), 0.0)]
    results += [r for i, f in enumerate(big) for r in take(eng, frame(6 + i, f), 0.0)]
    results += eng.flush_all()
    out = chunks(results)
    assert [r.seqs for r in out] == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    assert [r.discontinuity for r in out] == [True, False, True, False]
    assert_matches(out[:2], small)
    assert_matches(out[2:], big)
    assert eng.stats.resets[Reset.SEQ_GAP] == 0


def test_eos_flushes_and_frees_the_stream() -> None:
    eng, frames = engine(chunk=4), clip(6)
    results = [r for i, f in enumerate(frames) for r in take(eng, frame(i, f), 0.0)]
    end = take(eng, eos(6), 0.0)
    assert [type(r) for r in end] == [ChunkResult, EndResult]
    assert end[0].seqs == [4, 5]  # type: ignore[union-attr]
    assert end[1] == EndResult("a", "s1", 6)
    assert "a" not in eng.streams
    assert eng.next_deadline() is None
    assert eng.stats.counts["frames_missing"] == 0
    assert_matches(chunks(results + end), frames)
    again = take(eng, frame(0, frames[0], session="s2"), 0.0) + eng.flush_all()
    assert chunks(again)[0].discontinuity


def test_eos_with_a_higher_seq_counts_missing_frames() -> None:
    eng, frames = engine(chunk=4), clip(3)
    for i, f in enumerate(frames):
        take(eng, frame(i, f), 0.0)
    assert [type(r) for r in take(eng, eos(8), 0.0)] == [ChunkResult, EndResult]
    assert eng.stats.counts["frames_missing"] == 5
    assert take(eng, eos(3, stream="never-seen"), 0.0) == [EndResult("never-seen", "s1", 3)]


def test_stale_eos_does_not_end_the_current_session() -> None:
    eng, frames = engine(chunk=3), clip(8)
    results = [r for i, f in enumerate(frames[:4]) for r in take(eng, frame(i, f, session="s2"), 0)]
    results += take(eng, eos(10, session="s1"), 0.0)  # the old sender's eos, arriving late
    assert "a" in eng.streams
    results += [
        r for i, f in enumerate(frames[4:], 4) for r in take(eng, frame(i, f, session="s2"), 0)
    ]
    out = chunks(results + eng.flush_all())
    assert [r.discontinuity for r in out] == [True] + [False] * (len(out) - 1)
    assert_matches(out, frames)


def snapshot(eng: Engine) -> tuple[object, ...]:
    streams = {
        k: (s.session, s.next_seq, s.shape, s.count, id(s.state), s.discontinuity, s.since)
        for k, s in eng.streams.items()
    }
    return streams, dict(eng.stats.counts)


@pytest.mark.parametrize(
    ("color", "channels", "bad"),
    [
        ("as-is", 1, np.zeros((6, 7, 3), np.uint8)),
        ("as-is", 3, np.zeros((6, 7), np.uint8)),
        ("rgb", 3, np.zeros((6, 7, 1), np.uint8)),
        ("gray", 1, np.zeros((6, 7, 2), np.uint8)),
    ],
)
def test_bad_frame_is_a_failed_result_and_changes_nothing(
    color: str, channels: int, bad: np.ndarray
) -> None:
    model = make_model(color, channels)
    eng = engine(chunk=3, model=model, color=color, in_channels=channels)
    shape = (6, 7) if channels == 1 and color != "rgb" else (6, 7, 3)
    frames = np.random.default_rng(5).integers(0, 256, (8, *shape), dtype=np.uint8)
    results = [r for i, f in enumerate(frames[:4]) for r in take(eng, frame(i, f), 0.0)]
    before = snapshot(eng)
    [failed] = take(eng, frame(4, bad), 1.0)
    assert isinstance(failed, Failed)
    assert (failed.reason, failed.stream, failed.frames) == (Drop.BAD_SHAPE, "a", 1)
    assert "channels" in failed.detail
    [failed] = take(eng, InputMessage("frame", "a", "s1", 4, 0, None), 1.0)
    assert isinstance(failed, Failed)
    assert failed.reason == Drop.MALFORMED
    assert snapshot(eng) == before
    results += [r for i, f in enumerate(frames[4:], 4) for r in take(eng, frame(i, f), 0.0)]
    results += eng.flush_all()
    out = chunks(results)
    assert [s for r in out for s in r.seqs] == list(range(8))
    ref = Engine.build(
        model, device=CPU, dtype=torch.float32, chunk=8, color=color, in_channels=channels
    )
    whole = [r for i, f in enumerate(frames) for r in take(ref, frame(i, f), 0.0)]
    for name in NAMES:
        assert rel_err(joined(out)[name], joined(chunks(whole))[name]) < 1e-5


def test_max_streams_is_enforced_without_side_effects() -> None:
    eng, frames = engine(chunk=4, max_streams=1), clip(2)
    take(eng, frame(0, frames[0]), 0.0)
    before = snapshot(eng)
    [failed] = take(eng, frame(0, frames[0], stream="b"), 0.0)
    assert isinstance(failed, Failed)
    assert failed.reason == Drop.TOO_MANY_STREAMS
    assert "too many streams" in failed.detail
    assert snapshot(eng) == before
    take(eng, eos(1), 0.0)
    assert take(eng, frame(0, frames[1], stream="b"), 0.0) == []
    assert list(eng.streams) == ["b"]


def test_publish_list_limits_the_layers() -> None:
    eng, frames = engine(chunk=2, publish=["lp"]), clip(2)
    out = chunks([r for i, f in enumerate(frames) for r in take(eng, frame(i, f), 0.0)])
    assert list(out[0].layers) == ["lp"]
    assert rel_err(out[0].layers["lp"], offline(frames)["lp"]) < 1e-5


def test_frame_to_chw_scales_by_dtype() -> None:
    rng = np.random.default_rng(7)
    u8 = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    u16 = rng.integers(0, 65536, (4, 5, 2), dtype=np.uint16)
    f32 = rng.standard_normal((4, 5, 1)).astype(np.float32) * 3
    np.testing.assert_array_equal(frame_to_chw(u8, "gray"), (u8 / np.float32(255))[None])
    got = frame_to_chw(u16, "as-is", 2)
    np.testing.assert_allclose(got, u16.transpose(2, 0, 1) / 65535.0, rtol=1e-7)
    np.testing.assert_array_equal(frame_to_chw(f32, "as-is"), f32.transpose(2, 0, 1))
    assert all(a.dtype == np.float32 for a in (frame_to_chw(u8, "gray"), got))


def test_gray_from_bgr_matches_opencv() -> None:
    bgr = np.random.default_rng(8).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    ref = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) / 255.0
    got = frame_to_chw(bgr, "gray")
    assert got.shape == (1, 16, 20)
    assert np.abs(got[0] - ref).max() <= 1 / 255 + 1e-6
    bgra = np.concatenate([bgr, np.full((16, 20, 1), 7, np.uint8)], axis=2)
    np.testing.assert_allclose(frame_to_chw(bgra, "gray"), got, rtol=0, atol=1e-6)


def test_rgb_reverses_channel_order() -> None:
    bgr = np.random.default_rng(9).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    got = frame_to_chw(bgr, "rgb")
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, (bgr[:, :, ::-1] / np.float32(255)).transpose(2, 0, 1))


def test_idle_streams_are_evicted_with_an_eos_and_others_stay() -> None:
    eng = engine(chunk=4)
    frames = clip(3)
    for i in range(3):
        take(eng, frame(i, frames[i], stream="gone"), now=0.0)
    take(eng, frame(0, frames[0], stream="busy"), now=9.0)
    results = eng.evict_idle(now=10.0, idle_s=5.0)
    assert "gone" not in eng.streams
    assert "busy" in eng.streams
    assert [type(r) for r in results] == [ChunkResult, EndResult]  # pending frames flushed
    assert results[1] == EndResult("gone", "s1", 3)
    assert eng.stats.counts["evicted"] == 1


def test_a_chunk_failing_in_the_model_is_reported_and_spares_other_streams() -> None:
    layer = {**LAYERS[0], "padding_mode": "reflect"}  # reflect needs frames over 1x1
    model = build_model(Settings.model_validate({"worker": {}, "layers": [layer]}), CPU)
    eng = engine(chunk=4, model=model)
    take(eng, frame(0, clip(1, h=6, w=7)[0], stream="ok"), now=0.0)
    take(eng, frame(0, np.zeros((1, 1), np.uint8), stream="tiny"), now=0.0)
    results = eng.flush_all()
    assert [r.stream for r in chunks(results, "ok")] == ["ok"]
    failures = [r for r in results if isinstance(r, Failed)]
    assert len(failures) == 1
    assert (failures[0].reason, failures[0].stream, failures[0].frames) == (
        Drop.MODEL_FAILED,
        "tiny",
        1,
    )
    assert "'tiny' failed in the model" in failures[0].detail
    assert eng.stats.counts["frames_failed"] == 1
    assert eng.stats.resets[Reset.MODEL_FAILED] == 1


def test_probes_and_alternating_sessions_are_counted() -> None:
    eng = engine(chunk=1)
    frames = clip(6)
    take(eng, eos(0, stream="_probe", session="p1"), 0.0)
    for i in range(6):  # two senders on one stream id, frames alternating
        take(eng, frame(i // 2, frames[i], session="s1" if i % 2 == 0 else "s2"), 0.0)
    assert eng.stats.counts["probes"] == 1
    assert eng.stats.counts["eos"] == 0
    assert eng.stats.counts["resets"] == 5
    assert eng.stats.counts["session_flips"] == 4


def probe(stream: str, session: str) -> InputMessage:
    return InputMessage("eos", "_probe", "p.1", 0, 0, watch=stream, resume=session)


def test_a_session_ended_by_its_eos_is_said_ended_to_its_sender() -> None:
    """A lossless sender waits for this before it exits: until then only it holds the frames
    a worker that dies could lack."""
    eng, frames = engine(chunk=2), clip(3)
    for seq in range(3):
        take(eng, frame(seq, frames[seq]), 0.0)

    def answer(session: str) -> tuple[int, bool]:
        [end] = take(eng, probe("a", session), 0.0)
        assert isinstance(end, EndResult)
        assert end.resume is not None
        assert end.resume["credit"] is None  # no lossless subscriber
        assert end.resume["dropped"] == {}
        assert end.resume["checkpoint_every"] == 0  # nobody checkpoints: keep only in flight
        return end.resume["next_seq"], end.resume["ended"]

    assert answer("s1") == (3, False)
    take(eng, eos(3), 0.0)
    assert answer("s1") == (3, True)
    assert answer("another session") == (0, False)


def test_a_lossless_eos_ahead_of_a_restored_stream_waits_for_the_resend() -> None:
    """After a restart the eos queued before it can arrive before the frames the sender
    resends: it is dropped (counted) until they came, then the resent eos ends the stream."""
    frames = clip(10)
    eng = restored(frames)
    early = InputMessage("eos", "a", "s1", 10, 0, lossless=True)
    assert take(eng, early, 0.0) == []
    assert eng.stats.counts["awaiting_resend"] == 1
    assert "a" in eng.streams
    out: list[Result] = []
    for seq in range(4, 10):
        again = InputMessage("frame", "a", "s1", seq, seq, frames[seq], lossless=True, replay=True)
        out += take(eng, again, 0.0)
    out += take(eng, early, 0.0)
    assert "a" not in eng.streams
    assert [r.seqs for r in out if isinstance(r, ChunkResult)] == [[4, 5], [6, 7], [8, 9]]
    assert eng.stats.counts["frames_missing"] == 0


@pytest.mark.parametrize("lossless", [True, False], ids=["lossless", "plain"])
def test_a_restored_stream_runs_a_lossless_senders_frames_only_once_it_resends(
    lossless: bool,
) -> None:
    """Frames left in a lossless sender's queue when the worker died reach the restarted one
    at once, before the sender asked where the stream goes on (and before the subscriber it
    waits for is back: their outputs would go to nobody). Even the one at the restored seq
    waits for the resend; a sender that is not lossless goes on at once (it resends nothing)."""
    frames = clip(8)
    eng = restored(frames)
    left = [InputMessage("frame", "a", "s1", seq, seq, frames[seq], lossless=lossless)
            for seq in (4, 5)]  # fmt: skip
    out = [r for m in left for r in take(eng, m, 0.0)]
    if lossless:
        assert out == []
        assert eng.stats.counts["awaiting_resend"] == 2
        [answer] = take(eng, probe("a", "s1"), 0.0)
        assert isinstance(answer, EndResult)
        assert answer.resume is not None
        assert answer.resume["next_seq"] == 4  # so the sender resends 4 and 5
        out = []
    start = 4 if lossless else 6
    for seq in range(start, 8):  # 4 and 5 again (replays), then new frames
        again = InputMessage("frame", "a", "s1", seq, seq, frames[seq], lossless=lossless,
                             replay=lossless and seq < 6)  # fmt: skip
        out += take(eng, again, 0.0)
    assert [r.seqs for r in chunks(out)] == [[4, 5], [6, 7]]
    assert [r.discontinuity for r in chunks(out)] == [False, False]
    assert eng.stats.counts["frames_missing"] == 0
    tail, whole = joined(chunks(out)), offline(frames)  # exact: it went on from the state
    for name in NAMES:
        assert rel_err(tail[name], whole[name][4:]) < 1e-5, name


@pytest.mark.parametrize("topic", [b"a/", b"a/nl/", b"", b"_shm/a/"])
def test_a_restored_stream_with_a_subscriber_runs_the_frame_at_its_seq_at_once(
    topic: bytes,
) -> None:
    """Someone takes the stream's outputs (a layer, the stream, everything, or through shared
    memory): the frame at the restored seq runs at once, replay or not (a sender from before
    the `replay` mark, whose resume found nothing to resend, goes on this way)."""
    frames = clip(6)
    eng = restored(frames, topic)
    out = []
    for seq in (4, 5):
        msg = InputMessage("frame", "a", "s1", seq, seq, frames[seq], lossless=True)
        out += take(eng, msg, 0.0)
    assert [r.seqs for r in chunks(out)] == [[4, 5]]
    assert eng.stats.counts["awaiting_resend"] == 0


def test_a_restored_stream_whose_sender_sent_nothing_more_goes_on_from_its_marked_frame() -> None:
    """The sender's resume found the worker holding every frame it sent (a clean stop
    checkpoints all it ran): its next frame, marked `replay` (protocol.as_replay), is where
    the stream goes on, and the new frames after it run at once: nothing waits, nothing is
    missing."""
    frames = clip(8)
    eng = restored(frames)
    [answer] = take(eng, probe("a", "s1"), 0.0)
    assert isinstance(answer, EndResult)
    assert answer.resume is not None
    assert answer.resume["next_seq"] == 4
    out = []
    for seq in range(4, 8):
        msg = InputMessage("frame", "a", "s1", seq, seq, frames[seq], lossless=True,
                           replay=seq == 4)  # fmt: skip
        out += take(eng, msg, 0.0)
    assert [r.seqs for r in chunks(out)] == [[4, 5], [6, 7]]
    assert eng.stats.counts["awaiting_resend"] == 0
    assert eng.stats.counts["frames_missing"] == 0
    tail, whole = joined(chunks(out)), offline(frames)
    for name in NAMES:
        assert rel_err(tail[name], whole[name][4:]) < 1e-5, name


@pytest.mark.parametrize(
    ("flags", "cause"),
    [({"lossless": True}, Reset.LOST_STATE), ({}, Reset.LOST_STATE), ({"live": True}, None),
     ({"lossless": True, "replay": True}, None)],
    ids=["lossless", "plain", "live", "replay"],
)  # fmt: skip
def test_a_stream_met_at_seq_above_zero_without_its_state_is_marked(
    flags: dict[str, bool], cause: Reset | None
) -> None:
    """A worker restarted without checkpoints meets a stream mid-session: the frames before
    were never run here (counted as missing, and the lost state as a reset, except for a
    live stream, whose frames may be dropped on the way, and a resend, which is resumed)."""
    eng, frames = engine(chunk=3), clip(6)
    msgs = [InputMessage("frame", "a", "s1", 40 + i, 0, f, **flags) for i, f in enumerate(frames)]
    results = [r for m in msgs for r in take(eng, m, 0.0)] + eng.flush_all()
    out = chunks(results)
    assert [r.discontinuity for r in out] == [True, False]
    assert_matches(out, frames)
    snap = eng.stats.snapshot()["streams"]["a"]
    missing = 0 if flags.get("replay") else 40
    assert (snap["frames_missing"], eng.stats.counts["frames_missing"]) == (missing, missing)
    assert snap["resets"] == ({str(cause): 1} if cause else {})
    assert eng.stats.resets[Reset.LOST_STATE] == (cause is not None)


def test_frames_not_run_at_a_cut_shutdown_are_not_skipped_by_the_checkpoint() -> None:
    """Shutdown time ran out with a partial chunk: its frames are counted as not flushed, and
    the stream's checkpoint goes on from the first of them, so a lossless sender is asked for
    them again after the restart (the checkpoint skipped them before: lost, unmarked)."""
    eng, frames = engine(chunk=4), clip(6)
    for seq in range(6):  # one chunk of 4 runs, 2 frames wait
        take(eng, frame(seq, frames[seq]), 0.0)
    results = eng.flush_all(give_up=lambda: True)
    assert [r.frames for r in results if isinstance(r, Failed)] == [2]
    snap = eng.continuity.snapshot("a")
    assert snap is not None
    assert snap.next_seq == 4


def test_an_eos_after_a_gap_says_ended_with_what_ran() -> None:
    """The answer's next_seq after the end is what ran here in order, not the eos' count:
    a sender that sent more is not told it is done."""
    eng, frames = engine(chunk=2), clip(3)
    for seq in range(3):
        take(eng, frame(seq, frames[seq]), 0.0)
    take(eng, eos(5), 0.0)  # 5 sent, 3 ran
    [end] = take(eng, probe("a", "s1"), 0.0)
    assert isinstance(end, EndResult)
    assert end.resume is not None
    assert (end.resume["next_seq"], end.resume["ended"]) == (3, True)


def test_the_engine_hands_on_only_the_frames_it_takes() -> None:
    """What the input archive keeps (Engine.on_take): every frame that entered a chunk, once;
    never a refused one (a frame the colour step cannot take), a duplicate replay or a frame
    held back for a resend."""
    frames = clip(6)
    eng = engine(chunk=2)
    taken: list[int] = []
    eng.on_take = lambda msg, now: taken.append(msg.seq)
    take(eng, frame(0, frames[0]), 0.0)
    take(eng, frame(1, np.zeros((6, 7, 2), np.uint8)), 0.0)  # 2 channels: refused
    take(eng, frame(1, frames[1]), 0.0)
    take(eng, InputMessage("frame", "a", "s1", 0, 0, frames[0], replay=True), 0.0)  # again
    for seq in (2, 3):
        take(eng, frame(seq, frames[seq]), 0.0)
    assert taken == [0, 1, 2, 3]
    assert eng.stats.counts["duplicates"] == 1
