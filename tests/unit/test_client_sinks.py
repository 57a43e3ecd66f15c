"""The subscriber's sinks (monitor, .npy files, preview videos), composing them, and the
client's import rule."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from streamconv.client.sinks import (
    FILE_SINKS,
    Monitor,
    NpyWriter,
    PreviewWriter,
    Sink,
    Sinks,
    open_sinks,
    safe_name,
)
from tests.conftest import REPO


def head(**changes: Any) -> dict[str, Any]:
    base = {"kind": "output", "stream": "cam0", "layer": "c1", "session": "abcdef0123", "seq": 4}
    return base | changes


def frame(value: float = 0.5, size: tuple[int, int] = (8, 6), channels: int = 1) -> np.ndarray:
    a = np.full((channels, size[1], size[0]), value, np.float32)
    a[:, 0, 0] = value + 1.0
    return a


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cam-0.a_b", "cam-0.a_b"),
        ("a/b", "a_b"),
        ("..", "__"),
        ("../../etc", "______etc"),
        (".hidden", "_hidden"),
        ("a..b", "a__b"),
        ("", "_"),
        ("x\\y:z\t", "x_y_z_"),
        ("é", "_"),
    ],
)
def test_safe_name(value: str, expected: str) -> None:
    assert safe_name(value) == expected


def test_safe_name_is_bounded() -> None:
    assert safe_name("x" * 1000) == "x" * 64


@pytest.mark.parametrize("session", ["ab/cd/ef", "../../../x", "/etc/passwd", "..", ".x/y"])
def test_npy_names_stay_in_the_folder(tmp_path: Path, session: str) -> None:
    """Before the fix a session holding '/' crashed np.save (or wrote outside the folder)."""
    folder = tmp_path / "out" / "npy"
    NpyWriter(folder).add(head(session=session), frame())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1, written
    assert written[0].parent == folder
    assert not written[0].name.startswith(".")
    np.testing.assert_array_equal(np.load(written[0]), frame())


def test_npy_name_keeps_its_parts(tmp_path: Path) -> None:
    NpyWriter(tmp_path).add(head(), frame())
    assert [p.name for p in tmp_path.iterdir()] == ["cam0_c1_abcdef01_000004.npy"]


def test_preview_names_stay_in_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "previews"
    preview = PreviewWriter(folder)
    preview.add(head(stream="..", layer=".x"), frame())
    [path] = preview.close()
    assert path.parent == folder
    assert path.name == "____x.mp4"  # "__" + "_" + "_x"


def read_video(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frames, fps, (width, height)) as OpenCV reads the file back."""
    video = cv2.VideoCapture(str(path))
    try:
        assert video.isOpened(), path
        fps = video.get(cv2.CAP_PROP_FPS)
        size = (int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        count = 0
        while video.read()[0]:
            count += 1
    finally:
        video.release()
    return count, fps, size


@pytest.mark.parametrize(("fps", "expected"), [(10.0, 10.0), (None, 25.0)])
def test_preview_plays_at_the_source_fps(
    tmp_path: Path, fps: float | None, expected: float
) -> None:
    """Before the fix every preview played at 25 fps, whatever the source's rate."""
    preview = PreviewWriter(tmp_path)
    extra = {} if fps is None else {"fps": fps}
    for seq in range(5):
        preview.add(head(seq=seq, **extra), frame(seq / 10))
    [path] = preview.close()
    count, got_fps, size = read_video(path)
    assert (count, size) == (5, (8, 6))
    assert got_fps == pytest.approx(expected)


def test_preview_of_colour_frames_with_a_new_size_and_non_finite_values(tmp_path: Path) -> None:
    preview = PreviewWriter(tmp_path)
    preview.add(head(), frame(channels=3))
    odd = frame(2.0, size=(16, 12), channels=3)
    odd[0, 1, 1], odd[1, 2, 2] = np.inf, np.nan
    preview.add(head(seq=5), odd)  # a new frame size mid-stream: scaled to the first
    [path] = preview.close()
    assert read_video(path)[::2] == (2, (8, 6))


class Recorder:
    """An in-memory sink: what it was given, and whether it was closed."""

    def __init__(self, paths: list[Path] | None = None, fail: bool = False) -> None:
        self.seen: list[int] = []
        self.paths, self.fail, self.closed = paths or [], fail, False

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None:
        self.seen.append(header["seq"])

    def close(self) -> list[Path]:
        self.closed = True
        if self.fail:
            msg = "disk full"
            raise OSError(msg)
        return self.paths


def test_every_sink_speaks_the_interface(tmp_path: Path) -> None:
    sinks: list[Sink] = [Monitor(), *(make(tmp_path / name) for name, make in FILE_SINKS.items())]
    for sink in sinks:
        sink.add(head(t_ns=0), frame())
        # What a sink names is a file, or the record sink's store (a folder of files).
        assert all(path.is_file() or (path / "zarr.json").is_file() for path in sink.close())


def test_sinks_feed_each_in_order_and_label_the_files() -> None:
    a, b = Recorder(), Recorder([Path("x.mp4"), Path("y.mp4")])
    both = Sinks({"a": a, "preview": b})
    for seq in range(3):
        both.add(head(seq=seq), frame())
    assert a.seen == b.seen == [0, 1, 2]
    assert both.close() == ["preview: x.mp4", "preview: y.mp4"]


def test_sinks_close_every_sink_when_one_fails() -> None:
    """A failing sink must not leave the others' files unfinalised (an mp4 then never plays)."""
    first, after = Recorder(fail=True), Recorder()
    with pytest.raises(OSError, match="disk full"):
        Sinks({"first": first, "after": after}).close()
    assert first.closed
    assert after.closed


def test_open_sinks_opens_those_given_a_folder(tmp_path: Path) -> None:
    opened = open_sinks({"preview": None, "npy": tmp_path / "npy"})
    assert list(opened) == ["npy"]
    assert isinstance(opened["npy"], NpyWriter)
    with pytest.raises(ValueError, match=r"unknown sinks \['mp3'\]"):
        open_sinks({"mp3": tmp_path})


def test_monitor_counts_outputs_only() -> None:
    monitor = Monitor()
    monitor.add(head(t_ns=0), frame(), now_ns=2_000_000)
    monitor.add(head(kind="eos", t_ns=0), frame())
    assert monitor.layers[("cam0", "c1")].frames == 1
    assert monitor.layers[("cam0", "c1")].percentile(50) == pytest.approx(2.0)
    assert monitor.close() == []


def test_client_imports_neither_zmq_nor_torch() -> None:
    """Only wire/transport.py talks to ZeroMQ; the client goes through it."""
    banned = {"zmq", "torch"}
    for path in sorted((REPO / "streamconv" / "client").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & banned, f"{path.name}:{node.lineno} imports {names & banned}"


def test_the_record_sink_keys_on_seq_and_keeps_sessions_apart(tmp_path: Path) -> None:
    """A subscriber restarted on the same store adds nothing twice; a new session of the same
    stream goes beside the first."""
    import zarr

    from streamconv.client.sinks import RecordWriter

    def header(session: str, seq: int) -> dict[str, Any]:
        return {"stream": "cam", "session": session, "layer": "L", "seq": seq, "t_ns": seq}

    frame = np.ones((1, 4, 5), np.float32)
    first = RecordWriter(tmp_path / "o.zarr")
    for seq in range(40):
        first.add(header("s1", seq), frame * seq)
    first.close()
    again = RecordWriter(tmp_path / "o.zarr")  # restarted: sees 30..49 of the same session
    for seq in range(30, 50):
        again.add(header("s1", seq), frame * seq)
    for seq in range(5):
        again.add(header("s2", seq), -frame)
    again.close()
    assert again.duplicates == 10
    root = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    one: Any = root["cam/s1/L"]
    assert list(np.asarray(one["seq"][...])) == list(range(50))
    assert np.asarray(one["frames"][...])[:, 0, 0, 0].tolist() == list(range(50))
    two: Any = root["cam/s2/L"]
    assert np.asarray(two["frames"][...]).shape == (5, 1, 4, 5)
