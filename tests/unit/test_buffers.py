"""Chunk buffers are taken again only once nothing refers to them (worker/buffers.py): a view,
a tensor or an output that aliases one keeps it from being overwritten."""

from __future__ import annotations

import numpy as np
import torch

from streamconv.config import Settings
from streamconv.model import build_model
from streamconv.worker.buffers import Buffers
from tests.unit.test_engine import CPU, chunks, clip, engine, frame, take

PASS_THROUGH = build_model(
    Settings.model_validate(
        {"worker": {"device": "cpu"},
         "layers": [{"name": "out", "type": "nonlinearity", "kind": "identity"}]}
    ),
    CPU,
)  # fmt: skip


def test_a_buffer_is_taken_again_only_when_nothing_refers_to_it() -> None:
    pool = Buffers()
    a = pool.take((2, 1, 4, 4), np.float32)
    b = pool.take((2, 1, 4, 4), np.float32)
    assert a is not b  # `a` is still held
    view, tensor = b[1], torch.from_numpy(a)
    del a, b
    c = pool.take((2, 1, 4, 4), np.float32)
    assert c is not view.base
    assert not np.shares_memory(c, view)
    assert not np.shares_memory(c, tensor.numpy())
    del view, c
    d = pool.take((2, 1, 4, 4), np.float32)  # the one only the view held: free now
    assert pool.reused == 1
    assert not np.shares_memory(d, tensor.numpy())
    assert pool.take((2, 1, 4, 4), np.uint8).dtype == np.uint8  # another kind: its own


def test_at_most_keep_buffers_are_kept() -> None:
    pool = Buffers(keep=2)
    held = [pool.take((8,), np.float32) for _ in range(5)]
    assert pool.made == 5
    del held
    for _ in range(4):
        pool.take((8,), np.float32)
    assert pool.made == 5  # the two kept ones, in turn
    assert pool.reused == 4


def test_outputs_that_alias_their_chunk_are_never_overwritten_by_later_chunks() -> None:
    """A pass-through output is a view of its chunk's buffer. Kept (as ZeroMQ keeps an unsent
    message), later chunks must go elsewhere; let go, the buffer is used again."""
    frames = clip(12)
    eng = engine(chunk=2, model=PASS_THROUGH)
    kept = []
    for seq in range(12):
        kept += chunks(take(eng, frame(seq, frames[seq]), 0.0))
    assert [r.seqs for r in kept] == [[2 * i, 2 * i + 1] for i in range(6)]
    for r in kept:
        for i, seq in enumerate(r.seqs):
            for name in r.layers:
                assert np.array_equal(r.layers[name][i], frames[seq][None] / np.float32(255))
    assert eng.buffers.reused == 0
    kept.clear()
    for seq in range(12, 16):
        take(eng, frame(seq, frames[seq % 12]), 0.0)
    assert eng.buffers.reused > 0
