"""The view's input tile and its stream states, without sockets: the worker's input preview
(engine -> previews -> wire), the hub and page showing it first and in colour, resets that a
stream's start is not, an ended stream's input, and a refused handshake in the page's state."""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from streamconv.client.view.hub import Hub
from streamconv.client.view.page import Encoder, Page
from streamconv.config import Settings
from streamconv.wire import protocol
from streamconv.wire.protocol import INPUT
from streamconv.worker.previews import Previews
from streamconv.worker.results import ChunkResult
from tests.unit.test_engine import clip, engine, frame, make_model, take


def header(seq: int, *, layer: str = "a", session: str = "s1", **extra: Any) -> dict[str, Any]:
    return {"kind": "output", "stream": "cam", "layer": layer, "session": session, "seq": seq,
            "t_ns": time.time_ns(), **extra}  # fmt: skip


def red_left_blue_right() -> np.ndarray:
    rgb = np.zeros((3, 8, 16), np.float32)
    rgb[0, :, :8] = 1.0  # R on the left
    rgb[2, :, 8:] = 1.0  # B on the right
    return rgb


# --- the worker's side ------------------------------------------------------------------------


def test_the_engine_hands_over_the_newest_input_frame_as_a_view_not_a_copy() -> None:
    eng = engine(chunk=4)
    pixels = clip(4)
    results = [r for i in range(4) for r in take(eng, frame(i, pixels[i]), 0.0)]
    (chunk,) = [r for r in results if isinstance(r, ChunkResult)]
    newest = chunk.input_frame
    assert newest is not None
    np.testing.assert_array_equal(newest[0], pixels[3] / np.float32(255))
    assert newest.base is not None  # a view into the chunk's buffer
    assert newest.base.shape[0] == 4  # ...of the whole chunk: nothing was copied out of it


def test_an_rgb_worker_keeps_its_input_in_colour() -> None:
    eng = engine(chunk=2, model=make_model("rgb"), color="rgb")
    bgr = np.zeros((6, 7, 3), np.uint8)
    bgr[..., 2] = 255  # red, as OpenCV's BGR
    results = [r for i in range(2) for r in take(eng, frame(i, bgr), 0.0)]
    (chunk,) = [r for r in results if isinstance(r, ChunkResult)]
    newest = chunk.input_frame
    assert newest is not None
    assert newest.shape == (3, 6, 7)
    assert (newest[0] == 1).all()  # RGB: red first
    assert (newest[1:] == 0).all()


def test_pixels_that_travel_raw_to_the_device_are_previewed_in_the_models_range() -> None:
    eng = engine(chunk=2, device_pixels=True)
    pixels = clip(2)
    results = [r for i in range(2) for r in take(eng, frame(i, pixels[i]), 0.0)]
    (chunk,) = [r for r in results if isinstance(r, ChunkResult)]
    assert chunk.input_frame is not None
    assert chunk.input_frame.dtype == np.uint8  # as the chunk went to the device
    _, small = protocol.decode_output(Previews(10, 320).input_message(chunk, lambda s: 0))
    assert small is not None
    assert np.abs(small[0] - pixels[1] / 255).max() <= 1 / 255 / 2 + 1e-6  # uint8 on the wire


def test_the_input_preview_is_a_small_copy_in_the_models_range_on_its_own_topic() -> None:
    raw = np.full((4, 3, 480, 640), 51, np.uint8)  # a chunk that travelled raw (device pixels)
    r = ChunkResult("cam", "s" * 32, [7, 8, 9, 10], [1, 2, 3, 4], True, {}, input_frame=raw[3])
    p = Previews(fps=10, side=320)
    parts = p.input_message(r, lambda stream: 5)
    assert parts[0] == b"_preview/cam/.input/"
    head, small = protocol.decode_output(parts)
    assert (head["layer"], head["seq"], head["full_shape"], head["lost"]) == (
        INPUT,
        10,
        [3, 480, 640],
        5,
    )
    assert small is not None
    assert small.shape == (3, 240, 320)
    assert np.allclose(small, 0.2, atol=1e-6)


def test_the_input_preview_is_made_only_for_a_subscription_that_covers_it() -> None:
    assert Previews.input_wanted([b"_preview/"], "cam")
    assert Previews.input_wanted([b"_preview/cam/"], "cam")
    assert not Previews.input_wanted([], "cam")  # nobody watching: no preview, no cost
    assert not Previews.input_wanted([b""], "cam")  # a subscriber to everything is no viewer
    assert not Previews.input_wanted([b"_preview/cam/smooth/", b"cam/"], "cam")
    assert not Previews.input_wanted([b"_preview/cam2/"], "cam")


def test_no_layer_can_take_the_input_name() -> None:
    protocol.check_name(INPUT, "layer")  # a valid name on the wire...
    layers = [{"type": "lowpass", "name": INPUT, "tau": 2.0}]
    with pytest.raises(ValidationError):  # ...that no layer can have
        Settings.model_validate({"worker": {"device": "cpu"}, "layers": layers})


# --- the view's side --------------------------------------------------------------------------


def test_the_input_is_the_first_tile_and_in_colour() -> None:
    hub = Hub()
    plane = np.linspace(-1, 1, 128, dtype=np.float32).reshape(1, 8, 16)
    hub.take(header(0, layer="a"), plane, display=True)
    hub.take(header(0, layer=INPUT, preview=True), red_left_blue_right(), display=True)
    state, due = Page(hub).tick("x")
    layers = state["streams"][0]["layers"]
    assert [x["layer"] for x in layers] == [INPUT, "a"]
    assert (layers[0]["input"], layers[1]["input"]) == (True, False)
    assert layers[0]["colormap"] == "rgb"
    assert (layers[0]["width"], layers[0]["height"], layers[0]["channels"]) == (16, 8, 3)
    shown = dict(due)[("cam", INPUT)]
    jpeg = Encoder(quality=95).jpeg(("cam", INPUT), "frame", shown)
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr.shape == (8, 16, 3)
    assert np.abs(bgr[4, 2].astype(int) - (0, 0, 255)).max() < 40  # red
    assert np.abs(bgr[4, 13].astype(int) - (255, 0, 0)).max() < 40  # blue


def test_a_gray_input_is_shown_as_it_is_not_stretched() -> None:
    hub = Hub()
    hub.take(header(0, layer=INPUT), np.full((1, 8, 8), 0.25, np.float32), display=True)
    lv = hub.layer("cam", INPUT)
    assert lv is not None
    shown = lv.shown("frame")
    assert shown is not None
    assert (shown.colormap, shown.lo, shown.hi) == ("gray", 0.0, 1.0)
    jpeg = Encoder(quality=95).jpeg(("cam", INPUT), "frame", shown)
    gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert abs(int(gray[4, 4]) - 64) <= 2  # 0.25 of white, not the map's end


def test_the_input_ends_with_its_stream() -> None:
    hub = Hub()
    frame_ = np.zeros((1, 4, 4), np.float32)
    for layer in (INPUT, "a", "b"):
        hub.take(header(0, layer=layer), frame_, display=True)
    hub.take(header(1, layer="a"), None, display=True)
    assert hub.streams["cam"].status(time.monotonic(), 2.0) == "live"
    hub.take(header(1, layer="b"), None, display=True)  # the input has no eos of its own
    assert hub.streams["cam"].status(time.monotonic(), 2.0) == "ended"
    assert hub.streams["cam"].layers[INPUT].ended


def test_a_streams_first_start_is_no_reset_but_a_restart_is() -> None:
    hub = Hub()
    frame_ = np.zeros((1, 4, 4), np.float32)
    hub.take(header(0, discontinuity=True), frame_, display=True)
    lv = hub.layer("cam", "a")
    assert lv is not None
    assert lv.resets == 0  # brand new
    hub.take(header(1), frame_, display=True)
    hub.take(header(0, session="s2", discontinuity=True), frame_, display=True)
    assert lv.resets == 1  # a new session without an end: the running state was lost
    hub.take(header(1, session="s2"), None, display=True)
    hub.take(header(0, session="s3", discontinuity=True), frame_, display=True)
    assert lv.resets == 1  # a start after the stream's end is a start
    hub.take(header(5, session="s3", discontinuity=True), frame_, display=True)
    assert lv.resets == 2  # a gap or a size change


def test_a_new_session_restarts_every_layers_ranges() -> None:
    hub = Hub()
    for layer in ("a", "b"):
        hub.take(header(0, layer=layer), np.full((1, 2, 2), -5.0, np.float32), display=True)
    for layer in ("a", "b"):
        hub.take(header(0, layer=layer, session="s2"), np.ones((1, 2, 2), np.float32),
                 display=True)  # fmt: skip
    assert [hub.streams["cam"].layers[x].run_min for x in ("a", "b")] == [1.0, 1.0]


def test_a_refused_handshake_is_in_the_pages_state() -> None:
    hub = Hub()
    assert Page(hub).tick("tcp://w:5556")[0]["refused"] is None
    hub.refused = "the worker refused this client's key"
    state, _ = Page(hub).tick("tcp://w:5556")
    assert (state["worker"], state["refused"]) == ("disconnected", hub.refused)
