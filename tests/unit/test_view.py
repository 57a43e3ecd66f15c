"""The view's pieces without sockets: colour maps, scaling, encoding, the hub, back-pressure."""

from __future__ import annotations

import math
import time
from typing import Any

import cv2
import numpy as np
import pytest

from streamconv.client.view import render
from streamconv.client.view.hub import HISTORY_MAX, Hub
from streamconv.client.view.page import Encoder, Page
from streamconv.client.view.server import image_message


def header(seq: int, *, stream: str = "cam0", layer: str = "a", **extra: Any) -> dict[str, Any]:
    return {"kind": "output", "stream": stream, "layer": layer, "session": "s1", "seq": seq,
            "t_ns": time.time_ns(), **extra}  # fmt: skip


# --- colour maps and scaling ---------------------------------------------------------------


def test_colour_tables_hit_their_anchors_exactly() -> None:
    div, seq = render.TABLES["diverging"], render.TABLES["sequential"]
    assert div.shape == seq.shape == (256, 3)
    assert tuple(div[0]) == render.DIVERGING_LOW
    assert tuple(div[127]) == tuple(div[128]) == render.DIVERGING_MID  # zero is grey
    assert tuple(div[255]) == render.DIVERGING_HIGH
    assert tuple(seq[0]) == render.SEQUENTIAL_ANCHORS[0]
    assert tuple(seq[255]) == render.SEQUENTIAL_ANCHORS[-1]
    assert render.hex_table("sequential")[0] == "#440154"
    assert render.hex_table("diverging")[255] == "#b40426"


def test_indices_map_lo_to_0_hi_to_255_and_clip() -> None:
    plane = np.array([[-2.0, -1.0, 0.0, 0.5, 1.0, 3.0, np.nan]], dtype=np.float32)
    got = render.to_indices(plane, -1.0, 1.0)
    assert got.tolist() == [[0, 0, 128, 191, 255, 255, 0]]  # 0.5 -> 191.25 -> 191
    assert render.to_indices(plane, 1.0, 1.0, flat=7).tolist() == [[7] * 7]  # flat frame


def test_signed_layers_get_a_symmetric_diverging_range() -> None:
    assert render.choose_colormap(-1e-9) == "diverging"
    assert render.choose_colormap(0.0) == "sequential"
    assert render.display_range("diverging", (-0.2, 0.8)) == (-0.8, 0.8)
    assert render.display_range("sequential", (0.2, 0.8)) == (0.2, 0.8)


def test_zero_is_grey_and_extremes_are_the_map_ends_in_the_image() -> None:
    plane = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    bgr = render.colourise(plane, "diverging", -1.0, 1.0)
    rgb = bgr[0, :, ::-1].tolist()
    assert rgb == [list(render.DIVERGING_LOW), list(render.DIVERGING_MID),
                   list(render.DIVERGING_HIGH)]  # fmt: skip
    flat = render.colourise(np.zeros((2, 2), np.float32), "diverging", 0.0, 0.0)
    assert (flat[..., ::-1] == render.DIVERGING_MID).all()


def test_channels_tile_in_a_grid_and_big_planes_scale_down() -> None:
    frame = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), np.float32)
    grid = render.tile(frame)
    assert grid.shape == (2 * 2, 3 * 3)  # 5 channels: 3 columns, 2 rows
    assert grid[0, 0] == 0
    assert grid[0, 3] == 1
    assert grid[2, 3] == 4
    assert grid[2, 6] == 0
    assert render.fit(np.ones((1080, 1920), np.float32), 640).shape == (360, 640)
    small = np.ones((10, 20), np.float32)
    assert render.fit(small, 640) is small


def test_jpeg_decodes_to_the_image() -> None:
    plane = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    bgr = render.colourise(plane, "sequential", 0.0, 1.0)
    data = render.encode_jpeg(bgr, 95)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == (48, 64, 3)
    assert np.abs(back.astype(int) - bgr.astype(int)).mean() < 3


def test_image_message_layout() -> None:
    msg = image_message(("cam0", "a"), 7, b"JPEG")
    n = int.from_bytes(msg[:4], "little")
    assert msg[4 + n :] == b"JPEG"
    assert msg[4 : 4 + n] == b'{"stream": "cam0", "layer": "a", "image": 7, "mime": "image/jpeg"}'


# --- the hub -------------------------------------------------------------------------------


def test_hub_counts_lost_outputs_and_resets_and_tracks_ranges() -> None:
    hub = Hub()
    frame = np.full((1, 4, 4), 2.0, np.float32)
    hub.take(header(0, discontinuity=True), frame, display=True)
    hub.take(header(1), frame * -1, display=True)
    hub.take(header(4), frame, display=True)  # 2 and 3 were lost
    lv = hub.layer("cam0", "a")
    assert lv is not None
    assert (lv.frames, lv.lost, lv.resets, lv.last_seq) == (3, 2, 0, 4)  # a start: no reset
    assert (lv.frame_min, lv.frame_max) == (2.0, 2.0)
    assert (lv.run_min, lv.run_max) == (-2.0, 2.0)
    assert lv.shown("running") is not None
    assert lv.shown("running").colormap == "diverging"
    hub.take(header(5, discontinuity=True), frame, display=True)  # a reset is not a loss
    assert (lv.lost, lv.resets) == (2, 1)
    hub.take(header(5), None, display=True)  # eos
    assert hub.streams["cam0"].status(time.monotonic(), 2.0) == "ended"


def test_superseded_outputs_count_but_are_not_kept() -> None:
    hub = Hub()
    frame = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    hub.take(header(0), frame, display=True)
    hub.take(header(1), frame + 100, display=False)
    lv = hub.layer("cam0", "a")
    assert lv is not None
    assert (lv.frames, lv.version, lv.frame_max) == (2, 1, 15.0)  # the plane is frame 0's
    assert lv.history[-1][1] is None  # no mean for a frame not scanned
    assert lv.history[-1][2] == 110.0  # but the probe pixel (centre: x=2, y=2) is read
    assert len(lv.history) == 2


def test_history_and_streams_are_bounded() -> None:
    hub = Hub(max_streams=2)
    frame = np.zeros((1, 2, 2), np.float32)
    for i in range(HISTORY_MAX + 10):
        hub.take(header(i), frame, display=False)
    assert len(hub.streams["cam0"].layers["a"].history) == HISTORY_MAX
    for name in ("b", "c", "d"):
        hub.take(header(0, stream=name), frame, display=True)
    assert set(hub.streams) == {"c", "d"}
    assert hub.evicted == 2


def test_a_wide_frame_is_kept_at_display_size_only() -> None:
    hub = Hub(max_side=64)
    hub.take(header(0), np.ones((2, 480, 640), np.float32), display=True)
    lv = hub.layer("cam0", "a")
    assert lv is not None
    assert lv.plane is not None
    assert lv.shape == (2, 480, 640)
    assert max(lv.plane.shape) <= 64


def test_nan_and_inf_do_not_break_the_ranges() -> None:
    hub = Hub()
    frame = np.array([[[np.nan, np.inf], [1.0, -1.0]]], np.float32)
    hub.take(header(0), frame, display=True)
    lv = hub.layer("cam0", "a")
    assert lv is not None
    assert (lv.frame_min, lv.frame_max) == (-1.0, 1.0)
    hub.take(header(1), np.full((1, 2, 2), np.nan, np.float32), display=True)
    assert math.isnan(lv.frame_min)


# --- pages: the newest only, never a queue ---------------------------------------------------


def test_a_stalled_page_has_at_most_one_pending_frame_per_layer() -> None:
    hub = Hub()
    page = Page(hub)
    for seq in range(200):  # the page does not tick while 200 frames x 3 layers arrive
        for layer in ("a", "b", "c"):
            hub.take(header(seq, layer=layer), np.full((1, 8, 8), seq, np.float32), display=True)
    state, due = page.tick("tcp://x")
    assert sorted(key for key, _ in due) == [("cam0", "a"), ("cam0", "b"), ("cam0", "c")]
    assert all(shown.version == 200 and shown.plane[0, 0] == 199 for _, shown in due)
    for key, shown in due:
        page.mark_sent(key, shown.version)
    assert page.tick("tcp://x")[1] == []  # nothing new: nothing to send
    layer = state["streams"][0]["layers"][0]
    assert layer["frames"] == 200
    assert layer["lost"] == 0
    assert len(layer["points"]) == 200
    assert page.tick("tcp://x")[0]["streams"][0]["layers"][0]["points"] == []


def test_pages_share_one_encode_per_version_and_scaling() -> None:
    hub = Hub()
    hub.take(header(0), np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 8, 8), display=True)
    encoder = Encoder(quality=80)
    for page in (Page(hub), Page(hub), Page(hub, scaling="running")):
        _, due = page.tick("x")
        for key, shown in due:
            assert encoder.jpeg(key, page.scaling, shown)[:2] == b"\xff\xd8"  # a JPEG
    assert encoder.encoded == 2
    encoder.forget(set())
    assert encoder._cache == {}


def test_page_options_are_validated() -> None:
    hub = Hub()
    hub.take(header(0), np.zeros((1, 10, 10), np.float32), display=True)
    page = Page(hub)
    page.options({"scaling": "bogus", "plot": 3, "probe": "x"})
    assert (page.scaling, page.plot) == ("frame", "mean")
    page.options(
        {"scaling": "running", "plot": "pixel", "probe": {"stream": "cam0", "x": 2, "y": 0.3}}
    )
    assert (page.scaling, page.plot) == ("running", "pixel")
    assert hub.streams["cam0"].probe == (1.0, 0.3)
    hub.take(header(1), np.arange(100, dtype=np.float32).reshape(1, 10, 10), display=True)
    assert hub.streams["cam0"].layers["a"].history[-1][2] == 39.0  # row 3, last column


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_state_is_valid_json_without_nan(value: float) -> None:
    import json

    hub = Hub()
    hub.take(header(0), np.full((1, 2, 2), value, np.float32), display=True)
    state, _ = Page(hub).tick("x")
    json.loads(json.dumps(state, allow_nan=False))


# --- previews: the worker's side and the wire -------------------------------------------------


def test_previews_wait_for_their_time_and_the_newest_wins() -> None:
    from streamconv.worker.previews import Previews

    p = Previews(fps=10, side=320)
    assert p.offer("s", "a", lambda: ["first"], discontinuity=True, now=0.0) == ["first"]
    assert p.offer("s", "a", lambda: ["older"], discontinuity=False, now=0.05) is None
    assert p.offer("s", "a", lambda: ["newer"], discontinuity=False, now=0.06) is None
    assert p.due(now=0.09) == []
    assert p.due(now=0.11) == [["newer"]]  # one message: the older one was replaced
    assert p.due(now=0.5) == []
    assert p.take_reset("s", "a") is True  # the first offer's discontinuity, once
    assert p.take_reset("s", "a") is False
    assert p.offer("s", "a", lambda: ["x"], discontinuity=False, now=0.55) == ["x"]
    assert p.offer("s", "a", lambda: ["y"], discontinuity=False, now=0.56) is None
    assert p.due(now=0.57, stream="s") == [["y"]]  # at eos: sent whatever the time


def test_a_preview_is_a_subsample_scaled_back_from_uint8() -> None:
    from streamconv.worker.previews import Previews

    p = Previews(fps=10, side=320)
    frame = np.arange(2 * 480 * 640, dtype=np.float32).reshape(2, 480, 640)
    small = p.shrink(frame)
    assert small.shape == (2, 240, 320)
    assert small[1, 3, 5] == frame[1, 6, 10]
    q = np.full((1, 10, 10), 4, np.uint8)
    assert p.shrink(q, scale=0.5, offset=-1.0)[0, 0, 0] == 1.0


def test_preview_messages_round_trip_and_ordinary_subscribers_skip_them() -> None:
    from streamconv.wire import protocol

    small = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    parts = protocol.encode_preview("cam", "a", "s" * 32, 41, 123, small, full_shape=(1, 30, 40),
                                    discontinuity=True, lost=2, fps=30.0)  # fmt: skip
    assert parts[0] == b"_preview/cam/a/"
    assert not parts[0].startswith(protocol.stream_topic("cam"))  # a stream's subscribers miss it
    head, array = protocol.decode_output(parts)
    assert head["preview"] is True
    assert (head["seq"], head["full_shape"], head["lost"]) == (41, [1, 30, 40], 2)
    assert head["discontinuity"] is True
    assert array is not None
    assert np.abs(array - small).max() <= 2 / 255 / 2 + 1e-6
    eos = protocol.encode_output_eos("cam", "a", "s" * 32, 42, preview=True)
    assert eos[0] == b"_preview/cam/a/"
    assert protocol.decode_output(eos)[0]["preview"] is True


def test_the_hub_reads_a_layers_rate_and_counts_from_previews() -> None:
    hub = Hub()
    start = time.monotonic()
    for i, seq in enumerate(range(9, 300, 10)):  # every 10th output of a 300 outputs/s layer
        head = header(seq, preview=True, full_shape=[1, 480, 640], lost=3,
                      discontinuity=i == 0)  # fmt: skip
        hub.take(head, np.zeros((1, 240, 320), np.float32), display=True)
        lv = hub.layer("cam0", "a")
        assert lv is not None
        lv.arrivals[-1] = (
            start + seq / 300,
            *lv.arrivals[-1][1:],
        )  # arrival times of a 300/s layer
    lv = hub.layer("cam0", "a")
    assert lv is not None
    assert (lv.frames, lv.lost, lv.resets, lv.shape) == (300, 3, 0, (1, 480, 640))
    fps, _ = lv.rate(start + 299 / 300)
    assert fps == pytest.approx(300, rel=1e-6)


def test_the_last_frame_shows_even_when_its_eos_arrives_in_the_same_read() -> None:
    """A busy view reads the last outputs and the end together: the newest frame of each
    layer must still be displayed (an eos after it once hid it)."""
    from streamconv.client.view.role import View
    from streamconv.config import ViewSettings
    from streamconv.wire import protocol

    view = View(ViewSettings(full=True))
    frames = [np.full((1, 6, 8), v, np.float32) for v in (0.25, 0.75)]
    batch = [protocol.encode_output("a", "L", "s", i, 0, f) for i, f in enumerate(frames)]
    batch.append(protocol.encode_output_eos("a", "L", "s", 2))
    # As the subscriber hands them over: decoded, in the order read.
    view._show([protocol.decode_output([memoryview(bytes(p)) for p in parts]) for parts in batch])
    layer = view.hub.streams["a"].layers["L"]
    assert layer.version == 1  # the newest frame was kept for display
    assert layer.header is not None
    assert layer.header["seq"] == 1
    assert layer.ended
