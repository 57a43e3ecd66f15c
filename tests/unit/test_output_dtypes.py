"""Output dtypes: the engine converts where the tensor lives; the wire decodes back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamconv.config import load_settings
from streamconv.model import build_model
from streamconv.wire import protocol
from streamconv.wire.protocol import InputMessage
from streamconv.wire.quant import quantise
from streamconv.worker.engine import ChunkResult, Engine
from streamconv.worker.outputs import _quantize_cpu, quantize_torch
from streamconv.worker.publisher import Publisher
from streamconv.worker.stats import Stats
from tests.helpers import RETINA, preset_layers

FRAMES = np.random.default_rng(1).integers(0, 255, (10, 24, 32, 3), dtype=np.uint8)


def run(output_dtype: str) -> list[ChunkResult]:
    model = build_model(load_settings(RETINA), torch.device("cpu"))
    eng = Engine.build(
        model, device=torch.device("cpu"), dtype=torch.float32, chunk=4, output_dtype=output_dtype
    )
    out = []
    for i, f in enumerate(FRAMES):
        out += eng.submit(InputMessage("frame", "s", "x", i, 0, f), 0.0)
    return [r for r in out + eng.flush_all() if isinstance(r, ChunkResult)]


def stacked(results: list[ChunkResult], layer: str) -> np.ndarray:
    return np.concatenate([r.layers[layer] for r in results])


def test_float16_output_is_converted_in_the_engine() -> None:
    exact = stacked(run("float32"), "opl")
    half = stacked(run("float16"), "opl")
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), exact, rtol=1e-3, atol=1e-3)


def test_uint8_output_decodes_within_half_a_step_per_frame() -> None:
    exact = run("float32")
    quant = run("uint8")
    for layer in ("opl", "ganglion"):
        for r_exact, r_q in zip(exact, quant, strict=True):
            scales, offsets = r_q.quant[layer]
            assert r_q.layers[layer].dtype == np.uint8
            for i in range(len(r_q.seqs)):
                decoded = r_q.layers[layer][i] * np.float32(scales[i]) + np.float32(offsets[i])
                err = np.abs(decoded - r_exact.layers[layer][i]).max()
                assert err <= scales[i] * 0.5 + 1e-6, (layer, i)


class _Capture:
    """A stand-in PUB socket that keeps what is sent (the real one is tested end to end)."""

    def __init__(self) -> None:
        self.sent: list[list[object]] = []

    def send_multipart(self, parts: list[object], flags: int = 0, copy: bool = True) -> None:
        self.sent.append([bytes(memoryview(p)) for p in parts])


@pytest.mark.parametrize("output_dtype", ["float32", "float16", "uint8"])
def test_published_messages_decode_to_the_engine_output(output_dtype: str) -> None:
    exact = run("float32")
    sock = _Capture()
    layers = list(preset_layers(RETINA))
    stats = Stats()
    Publisher(sock, layers, output_dtype, stats).publish(run(output_dtype))  # type: ignore[arg-type]
    assert stats.counts["published"] == 4 * len(FRAMES)
    assert len(sock.sent) == 4 * len(FRAMES)
    for parts in sock.sent:
        header, array = protocol.decode_output(parts)
        assert header["dtype"] == output_dtype
        assert array is not None
        expected = stacked(exact, header["layer"])[header["seq"]]
        bound = {"float32": 0.0, "float16": 2e-3}.get(output_dtype)
        if bound is None:
            bound = header["scale"] * 0.5 + 1e-6  # half a quantisation step
        assert np.abs(array - expected).max() <= bound


def frames_to_quantise() -> torch.Tensor:
    """(T, C, H, W) frames for the quantisers: random ranges, a flat frame, a tiny range."""
    frames = torch.rand(6, 2, 16, 20) * 3 - 1
    frames[3] = 0.25  # flat: scale 1, every byte 0
    frames[4] = 0.0
    frames[4, 0, 0, 0] = 1e-40  # a subnormal range: flat too (wire/quant.py)
    frames[5] = torch.linspace(-5e3, 7e3, 640).reshape(2, 16, 20)
    return frames


def test_the_gpu_quantiser_agrees_with_the_cpu_one() -> None:
    # The torch path runs on CUDA in production; here it runs on the CPU against quantise:
    # the same arithmetic, so the same scale, offset and bytes.
    frames = frames_to_quantise()
    q, step_lo = quantize_torch(frames[None])
    q_t, scales_t, offsets_t = q[0].numpy(), step_lo[0, :, 0].tolist(), step_lo[0, :, 1].tolist()
    for i, frame in enumerate(frames.numpy()):
        q_n, scale_n, offset_n = quantise(frame)
        assert (scales_t[i], offsets_t[i]) == (scale_n, offset_n)
        assert np.array_equal(q_t[i], q_n), i
    assert np.all(q_t[3] == 0)


def test_the_opencv_quantiser_agrees_with_quantise() -> None:
    # OpenCV rounds ties to even: a byte may differ by one, the scale and offset may not.
    frames = frames_to_quantise().numpy()
    data, step_lo = _quantize_cpu(frames[None])
    for i, frame in enumerate(frames):
        q_n, scale_n, offset_n = quantise(frame)
        assert tuple(step_lo[0, i]) == (scale_n, offset_n)
        assert np.abs(data[0, i].astype(int) - q_n.astype(int)).max() <= 1, i
    assert np.all(data[0, 3] == 0)


def test_the_torch_quantiser_survives_a_tiny_range() -> None:
    # A range of 1e-40 (subnormal): 1/step would overflow float32 to inf and give garbage;
    # the rule calls such a frame flat (scale 1, bytes 0: each value within 1e-40 of offset).
    frames = torch.zeros(2, 1, 4, 4)
    frames[0, 0, 0, 0] = 1e-40
    frames[1] = torch.linspace(0, 1, 16).reshape(1, 4, 4)
    q4, step_lo = quantize_torch(frames[None])
    q, scales, offsets = q4[0], step_lo[0, :, 0].tolist(), step_lo[0, :, 1].tolist()
    assert int(q[0].sum()) == 0
    assert scales[0] == 1.0
    assert q[1].min() == 0
    assert q[1].max() == 255
    assert offsets == [0.0, 0.0]
