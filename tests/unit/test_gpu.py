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
from tests.conftest import REPO
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
    settings = load_settings(REPO / "streamconv/presets/retina.toml")
    frames = np.random.default_rng(0).integers(0, 255, (20, 48, 64), dtype=np.uint8)
    results = {}
    configure_torch(settings.worker)
    for device in ("cpu", "cuda"):
        model = build_model(settings, torch.device(device))
        engine = Engine(model, device=torch.device(device), dtype=torch.float32, chunk=3)
        out = []
        for i, f in enumerate(frames):
            out += engine.submit(InputMessage("frame", "s", "x", i, 0, f), 0.0)
        out += engine.flush_all()
        results[device] = np.concatenate(
            [r.layers["ganglion"] for r in out if isinstance(r, ChunkResult)]
        )
    assert results["cuda"].shape == (20, 1, 48, 64)
    assert rel_err(results["cuda"], results["cpu"]) < 1e-4
