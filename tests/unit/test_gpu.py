"""The CUDA path gives the CPU result. Skipped cleanly where torch sees no GPU (CI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamconv.config import load_settings
from streamconv.layers import MemoryConv3d
from streamconv.model import build_model, configure_torch
from streamconv.wire.protocol import InputMessage
from streamconv.worker.engine import ChunkResult, Engine
from tests.conftest import PRESETS
from tests.unit.reference import rel_err

torch.backends.cudnn.allow_tf32 = False  # TF32 rounds to ~1e-3: compare true float32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_memory_conv_on_cuda_equals_cpu(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cpu = MemoryConv3d(3, 8, (3, 3, 3), padding_mode="reflect", dilation=2)
    x = torch.randn(1, 3, 40, 64, 64)
    expected = cpu.run(x)
    gpu = MemoryConv3d(3, 8, (3, 3, 3), padding_mode="reflect", dilation=2, channels_last=True)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda", dtype)
    streamed = gpu.run(x, dt=3)
    assert isinstance(streamed, torch.Tensor)
    assert streamed.device.type == "cpu"  # run gathers off the GPU
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    assert rel_err(streamed.float().numpy(), expected.numpy()) < tol


def test_engine_on_cuda_equals_cpu_through_pinned_staging() -> None:
    settings = load_settings(PRESETS / "retina.toml")
    frames = np.random.default_rng(0).integers(0, 255, (20, 48, 64), dtype=np.uint8)
    results = {}
    configure_torch(settings.worker)
    for device in ("cpu", "cuda"):
        model = build_model(settings, torch.device(device))
        engine = Engine.build(model, device=torch.device(device), dtype=torch.float32, chunk=3)
        out = []
        for i, f in enumerate(frames):
            out += engine.submit(InputMessage("frame", "s", "x", i, 0, f), 0.0)
        out += engine.flush_all()
        results[device] = np.concatenate(
            [r.layers["ganglion"] for r in out if isinstance(r, ChunkResult)]
        )
    assert results["cuda"].shape == (20, 1, 48, 64)
    assert rel_err(results["cuda"], results["cpu"]) < 1e-4


def _streams_through(engine: Engine, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every stream's frames in one read per frame index (as a worker behind its input
    reads them), the filled chunks run batched; -> stream -> ganglion (T, C, H, W)."""
    out: list[object] = []
    for i in range(max(len(c) for c in clips.values())):
        for name, clip in clips.items():
            if i < len(clip):
                out += engine.submit(InputMessage("frame", name, "x", i, 0, clip[i]), 0.0)
        out += engine.run_ready()
    out += engine.flush_all()
    got: dict[str, list[np.ndarray]] = {}
    for r in out:
        if isinstance(r, ChunkResult):
            values = r.layers["ganglion"].astype(np.float64)
            if "ganglion" in r.quant:  # uint8: value = byte * scale + offset, per frame
                scales, offsets = r.quant["ganglion"]
                values = values * np.array(scales)[:, None, None, None]
                values += np.array(offsets)[:, None, None, None]
            got.setdefault(r.stream, []).append(values)
    return {name: np.concatenate(parts) for name, parts in got.items()}


@pytest.mark.parametrize(
    ("dtype", "output_dtype", "tol"),
    [("float32", "float32", 1e-5), ("float16", "float16", 5e-3), ("float32", "uint8", 1e-2)],
)
def test_batched_cuda_streams_match_the_float64_reference(
    dtype: str, output_dtype: str, tol: float
) -> None:
    """Five streams (two frame sizes) batched on the GPU, uint8 pixels divided there, only
    one copy back per pass: each equals its own float64 offline run on the CPU."""
    rng = np.random.default_rng(1)
    sizes = {"a": (48, 64), "b": (48, 64), "c": (48, 64), "d": (30, 40), "e": (48, 64)}
    clips = {s: rng.integers(0, 256, (11, *hw), dtype=np.uint8) for s, hw in sizes.items()}
    worker = {"device": "cuda", "dtype": dtype, "http": "off"}
    settings = load_settings("retina", {"worker": worker}, environ={})
    configure_torch(settings.worker)
    model = build_model(settings, torch.device("cuda"))
    engine = Engine.build(model, device=torch.device("cuda"), dtype=model.opl.weight.dtype, chunk=4,
                    output_dtype=output_dtype, max_batch=32)  # fmt: skip
    assert engine.batcher.device_pixels  # uint8 up, divided on the device
    got = _streams_through(engine, clips)
    assert engine.batcher.passes < 5 * 3  # streams shared passes
    assert engine.batcher.bytes_up == sum(c.size for c in clips.values())  # 1 byte a pixel
    ref_settings = load_settings("retina", {"worker": {"device": "cpu", "dtype": "float64"}},
                                 environ={})  # fmt: skip
    reference = build_model(ref_settings, torch.device("cpu"))
    for name, clip in clips.items():
        x = torch.from_numpy(clip[None, None].astype(np.float64) / 255.0)
        reference.reset()
        want = reference.run(x)["ganglion"][0].transpose(0, 1).numpy()  # type: ignore[index]
        assert got[name].shape == want.shape
        assert rel_err(got[name], want) < tol, name
