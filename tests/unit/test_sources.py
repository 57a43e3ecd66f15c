"""Frame sources: the synthetic pattern, video files, image folders and globs, and the options."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import streamconv.capture.sources as sources_package
import streamconv.capture.sources.sample as sample_module
from streamconv.capture.role import Capture, derive_stream
from streamconv.capture.sources import (
    KINDS,
    ArraySource,
    ImageSource,
    Source,
    SourceKind,
    SyntheticSource,
    VideoSource,
    open_source,
    sample_clip,
    synthetic_frame,
    write_sample_video,
)
from streamconv.errors import SourceError


def frames_of(spec: str, **options: Any) -> list[np.ndarray]:
    with open_source(spec, **options) as source:
        return list(source)


def write_pngs(
    folder: Path, names: list[str], shape: tuple[int, ...] = (6, 8, 3)
) -> list[np.ndarray]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for name in names:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        assert cv2.imwrite(str(folder / name), image)
        images.append(image)
    return images


def test_synthetic_is_deterministic_moving_and_sized() -> None:
    a = frames_of("synthetic:64x48:5")
    b = frames_of("synthetic:64x48:5")
    assert len(a) == 5
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in a)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], a[1])  # it moves
    assert a[0].min() < 40
    assert a[0].max() > 215


def test_synthetic_spec_defaults_and_properties() -> None:
    source = open_source("synthetic")
    assert isinstance(source, Source)
    assert (source.length, source.fps, source.live) == (300, 30.0, False)
    assert next(iter(source)).shape == (240, 320, 3)
    assert synthetic_frame(3, 10, 8, channels=1).shape == (8, 10)


@pytest.mark.parametrize("spec", ["synthetic:64", "synthetic:64x", "synthetic:0x4", "synthetics"])
def test_bad_synthetic_spec(spec: str) -> None:
    with pytest.raises(SourceError, match="synthetic"):
        open_source(spec)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_sample_video_decodes_close_to_the_pattern(tmp_path: Path, suffix: str) -> None:
    path = write_sample_video(tmp_path / f"clip{suffix}", frames=12, size=(96, 64), fps=25.0)
    source = open_source(str(path))
    assert isinstance(source, VideoSource)
    assert (source.length, source.fps, source.live) == (12, 25.0, False)
    decoded = list(source)
    source.close()
    assert len(decoded) == 12
    for index, frame in enumerate(decoded):
        assert frame.shape == (64, 96, 3)
        expected = synthetic_frame(index, 96, 64).astype(np.int16)
        error = np.abs(frame.astype(np.int16) - expected).mean()
        assert error < 12, f"frame {index} differs by {error:.1f} on average"
    # a different frame is much further away: the comparison above can fail
    assert np.abs(decoded[0].astype(np.int16) - synthetic_frame(6, 96, 64)).mean() > 20


def test_sample_video_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"\.mkv"):
        write_sample_video(tmp_path / "clip.mkv")


def test_image_folder_in_natural_order(tmp_path: Path) -> None:
    names = ["f2.png", "f10.png", "f1.png"]
    images = write_pngs(tmp_path / "imgs", names)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    got = frames_of(str(tmp_path / "imgs"))
    order = [names.index(n) for n in ["f1.png", "f2.png", "f10.png"]]
    assert len(got) == 3
    for frame, i in zip(got, order, strict=True):
        np.testing.assert_array_equal(frame, images[i])


def test_glob_and_single_image(tmp_path: Path) -> None:
    images = write_pngs(tmp_path, ["a_0.png", "a_1.png", "b_0.png"])
    got = frames_of(str(tmp_path / "a_*.png"))
    assert len(got) == 2
    np.testing.assert_array_equal(got[0], images[0])
    np.testing.assert_array_equal(got[1], images[1])
    single = open_source(str(tmp_path / "b_0.png"))
    assert isinstance(single, ImageSource)
    assert single.length == 1
    np.testing.assert_array_equal(next(iter(single)), images[2])


def test_gray_and_16_bit_images_keep_their_format(tmp_path: Path) -> None:
    image = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    assert cv2.imwrite(str(tmp_path / "deep.png"), image)
    (frame,) = frames_of(str(tmp_path / "deep.png"))
    assert frame.dtype == np.uint16
    np.testing.assert_array_equal(frame, image)


def test_mismatched_image_shapes_name_the_file(tmp_path: Path) -> None:
    write_pngs(tmp_path, ["0.png", "1.png"])
    write_pngs(tmp_path, ["2.png"], shape=(6, 9, 3))
    with pytest.raises(SourceError, match=re.escape(str(tmp_path / "2.png"))):
        frames_of(str(tmp_path))


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    write_pngs(tmp_path, ["0.png"])
    (tmp_path / "1.png").write_bytes(b"not a png")
    with pytest.raises(SourceError, match=re.escape(str(tmp_path / "1.png"))):
        frames_of(str(tmp_path))


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("{tmp}/missing.mp4", "does not exist"),
        ("{tmp}/missing_*.png", "matches no files"),
        ("{tmp}/empty", "holds no images"),
        ("{tmp}/junk.mp4", "cannot decode video file"),
        ("ftp://example.org/a.mp4", "unsupported scheme"),
        ("http://127.0.0.1:1/stream.mp4", "cannot open stream"),
        ("", "empty source spec"),
    ],
)
def test_unopenable_sources_say_what_and_how(tmp_path: Path, spec: str, fault: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    spec = spec.format(tmp=tmp_path)
    with pytest.raises(SourceError, match=fault) as info:
        open_source(spec)
    assert spec in str(info.value) or not spec


def test_resize_gray_limit(tmp_path: Path) -> None:
    got = frames_of("synthetic:64x48:10", resize=(32, 20), gray=True, limit=4)
    assert len(got) == 4
    assert all(f.shape == (20, 32) and f.dtype == np.uint8 for f in got)
    expected = cv2.resize(
        cv2.cvtColor(synthetic_frame(2, 64, 48), cv2.COLOR_BGR2GRAY),
        (32, 20),
        interpolation=cv2.INTER_AREA,
    )
    np.testing.assert_array_equal(got[2], expected)
    source = open_source("synthetic:64x48:10", limit=4)
    assert source.length == 4
    assert open_source("synthetic:64x48:10", limit=0).length == 0
    assert frames_of("synthetic:64x48:10", limit=0) == []


def test_loop_restarts_files_images_and_synthetic(tmp_path: Path) -> None:
    video = write_sample_video(tmp_path / "clip.avi", frames=4, size=(32, 24))
    once = frames_of(str(video))
    looped = frames_of(str(video), loop=True, limit=10)
    assert len(looped) == 10
    for i, frame in enumerate(looped):
        np.testing.assert_array_equal(frame, once[i % 4])
    assert open_source(str(video), loop=True).length is None
    assert open_source(str(video), loop=True, limit=7).length == 7
    synth = SyntheticSource(8, 6, frames=3, loop=True, limit=7)
    np.testing.assert_array_equal(list(synth)[6], synthetic_frame(0, 8, 6))
    write_pngs(tmp_path / "imgs", ["0.png", "1.png"])
    assert len(frames_of(str(tmp_path / "imgs"), loop=True, limit=5)) == 5


def test_loop_over_nothing_ends() -> None:
    assert list(ArraySource([], loop=True)) == []


def test_option_validation() -> None:
    with pytest.raises(SourceError, match="resize"):
        open_source("synthetic", resize=(0, 10))
    with pytest.raises(SourceError, match="limit"):
        open_source("synthetic", limit=-1)
    with pytest.raises(SourceError, match="loop"):
        ArraySource([], live=True, loop=True)


def test_array_source_is_the_in_memory_double() -> None:
    frames = [np.full((2, 3), i, np.uint8) for i in range(3)]
    source = ArraySource(frames, fps=10.0)
    assert isinstance(source, Source)
    assert (source.length, source.fps, source.live) == (3, 10.0, False)
    assert [int(f[0, 0]) for f in source] == [0, 1, 2]
    assert ArraySource(frames, live=True).length is None


def test_sample_is_the_built_in_clip(tmp_path: Path) -> None:
    frames = frames_of("sample")
    assert len(frames) == 120
    assert frames[0].shape == (120, 160, 3)
    assert sample_clip(tmp_path / "clip.mp4").is_file()


def test_a_glob_source_is_named_after_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: 'frames/*.png' became stream '_' (the stem of the pattern, '*', sanitised).
    write_pngs(tmp_path / "frames", ["0.png", "1.png"])
    spec = str(tmp_path / "frames" / "*.png")
    assert len(frames_of(spec)) == 2
    assert derive_stream(spec) == "frames"
    assert Capture(spec).stream == "frames"
    assert derive_stream("frames/*.png") == "frames"
    assert derive_stream("shots/day[12]/*.png") == "shots"
    monkeypatch.chdir(tmp_path / "frames")
    assert derive_stream("*.png") == "frames"
    assert derive_stream("/*.png") == "images"
    # A file whose name holds a wildcard character is a file, not a glob.
    write_pngs(tmp_path, ["[x] a.png"])
    assert derive_stream(str(tmp_path / "[x] a.png")) == "_x__a"


@pytest.mark.parametrize("planted", [b"", b"not a video at all"], ids=["empty", "junk"])
def test_sample_ignores_whatever_sits_at_the_old_shared_temp_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: bytes
) -> None:
    # Before: 'sample' opened $TMP/streamconv-sample.mp4 if anything was there, so an empty
    # file failed with "convert it with ffmpeg" and another video was sent as the sample.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sample_module, "_PRIVATE", [])
    (tmp_path / "streamconv-sample.mp4").write_bytes(planted)
    frames = frames_of("sample")
    assert len(frames) == 120
    assert frames[0].shape == (120, 160, 3)
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert folder.name.startswith("streamconv-sample-")
    assert folder.stat().st_mode & 0o077 == 0  # nobody else's to write into


def test_another_video_at_the_old_path_is_not_sent_as_the_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sample_module, "_PRIVATE", [])
    write_sample_video(tmp_path / "streamconv-sample.mp4", frames=5, size=(64, 48), fps=30.0)
    frames = frames_of("sample")
    assert (len(frames), frames[0].shape) == (120, (120, 160, 3))


def test_each_spec_is_claimed_by_its_kind(tmp_path: Path) -> None:
    write_pngs(tmp_path / "frames", ["0.png", "1.png"])
    write_sample_video(tmp_path / "clip.mp4", frames=2)
    folder = tmp_path / "frames"
    specs = {
        "sample": "sample",
        "synthetic:64x48": "synthetic",
        "synthetic-ish": "synthetic",  # claimed, then told how to write it
        "0": "webcam",
        "rtsp://host/x": "url",
        "ftp://host/x": "url",  # claimed, then told its scheme is unsupported
        str(folder): "image folder",
        str(folder / "0.png"): "image file",
        str(tmp_path / "clip.mp4"): "video file",
        str(folder / "*.png"): "image glob",
    }
    claimed = {spec: next(k.name for k in KINDS if k.recognises(spec)) for spec in specs}
    assert claimed == specs
    assert not any(k.recognises(str(tmp_path / "missing.mp4")) for k in KINDS)
    assert len({k.name for k in KINDS}) == len(KINDS)


def test_a_source_kind_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [np.full((4, 6), i, np.uint8) for i in range(3)]
    ones = SourceKind("ones", lambda spec: spec == "ones", lambda spec, o: ArraySource(frames, **o))
    monkeypatch.setattr(sources_package, "KINDS", (ones, *KINDS))
    assert len(frames_of("ones", limit=2)) == 2
