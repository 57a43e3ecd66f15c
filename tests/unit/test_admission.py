"""Admission without sockets: ownership, the per-key quota, frame size and the state budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamconv.config import load_settings
from streamconv.errors import Drop
from streamconv.model import build_model, state_bytes_per_pixel
from streamconv.worker.admission import Admission


@dataclass
class Held:
    owner: str | None
    shape: tuple[int, ...] | None


def admission(**kw: float) -> Admission:
    base = {"max_streams_per_key": 2, "max_frame_pixels": 10_000, "budget_bytes": 100_000,
            "bytes_per_pixel": 10.0}  # fmt: skip
    return Admission(**(base | kw))  # type: ignore[arg-type]


def test_frames_over_the_pixel_limit_are_refused() -> None:
    a = admission()
    assert a.frame("s", (1, 100, 100), None, {}) is None  # exactly the limit
    refused = a.frame("s", (1, 100, 101), None, {})
    assert refused is not None
    assert refused.reason is Drop.FRAME_TOO_LARGE
    assert "101x100" in refused.detail


def test_a_stream_belongs_to_its_key_and_without_keys_nobody_owns_anything() -> None:
    a = admission()
    held = {"cam": Held("alice", (1, 10, 10))}
    assert a.frame("cam", (1, 10, 10), "alice", held) is None
    refused = a.frame("cam", (1, 10, 10), "carol", held)
    assert refused is not None
    assert refused.reason is Drop.NOT_OWNER
    end = a.end("cam", "carol", held)
    assert end is not None
    assert end.reason is Drop.NOT_OWNER
    assert a.end("cam", "alice", held) is None
    assert a.end("other", "carol", held) is None  # nobody holds it: nothing to protect
    plain = {"cam": Held(None, (1, 10, 10))}
    assert a.frame("cam", (1, 10, 10), None, plain) is None


def test_the_quota_counts_streams_per_key() -> None:
    a = admission()
    held = {"a1": Held("alice", (1, 5, 5)), "a2": Held("alice", (1, 5, 5))}
    refused = a.frame("a3", (1, 5, 5), "alice", held)
    assert refused is not None
    assert refused.reason is Drop.QUOTA
    assert a.frame("a1", (1, 5, 5), "alice", held) is None  # its own streams go on
    assert a.frame("c1", (1, 5, 5), "carol", held) is None  # other keys are not affected
    assert a.frame("n1", (1, 5, 5), None, {f"n{i}": Held(None, None) for i in range(9)}) is None


def test_the_budget_refuses_new_streams_and_growth_but_not_shrinking() -> None:
    a = admission()  # 10 bytes per pixel, 100,000 bytes: 10,000 pixels in all
    held = {"big": Held(None, (1, 80, 100))}  # 80,000 bytes
    assert a.used(held.values()) == 80_000
    assert a.frame("small", (1, 20, 100), None, held) is None  # exactly 100,000
    refused = a.frame("small", (1, 21, 100), None, held)
    assert refused is not None
    assert refused.reason is Drop.OVER_BUDGET
    two = held | {"small": Held(None, (1, 10, 100))}  # 90,000 bytes
    grow = a.frame("big", (1, 95, 100), None, two)  # a size change counts the difference
    assert grow is not None
    assert grow.reason is Drop.OVER_BUDGET
    assert a.frame("big", (1, 90, 100), None, two) is None  # 100,000: fits
    assert a.frame("big", (1, 40, 100), None, held) is None  # shrinking always fits
    over = {"x": Held(None, (1, 100, 100)), "y": Held(None, (1, 50, 100))}  # already over
    assert a.frame("x", (1, 50, 100), None, over) is None  # shrinking still allowed


def test_state_bytes_per_pixel_matches_the_state_the_model_carries() -> None:
    settings = load_settings("default", {"worker": {"chunk": 4}}, environ={})
    model = build_model(settings, torch.device("cpu"))
    per_pixel = state_bytes_per_pixel(model, settings.worker, torch.device("cpu"), torch.float32)
    x = torch.zeros(1, 1, 4, 48, 64)
    with torch.inference_mode():
        _, state = model.step(x, None)
    carried = sum(
        t.numel() * t.element_size()
        for layer in state.values()
        for t in (layer.values() if isinstance(layer, dict) else [layer])
        if isinstance(t, torch.Tensor)
    )
    assert per_pixel == carried / (48 * 64) + 4 * 1 * 4
    assert np.isclose(per_pixel * 48 * 64, carried + 4 * 48 * 64 * 4)
