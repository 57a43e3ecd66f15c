"""The worker's memory settings: malloc keeps freed memory for reuse (worker/memory.py), and
which schedule `pipeline` gives (worker/parts.threaded)."""

from __future__ import annotations

import platform

import pytest
import torch
from pydantic import ValidationError

from streamconv.config import WorkerSettings
from streamconv.worker.memory import keep_freed_memory
from streamconv.worker.parts import threaded


def test_freed_memory_is_kept_on_glibc_and_zero_leaves_malloc_alone() -> None:
    assert keep_freed_memory(0) is False
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory(256) is on_glibc
    with pytest.raises(ValidationError, match="keep_freed_mb"):
        WorkerSettings(keep_freed_mb=4096)  # more than glibc's C int of bytes holds


@pytest.mark.parametrize(
    ("pipeline", "device", "expected"),
    [("auto", "cpu", False), ("auto", "cuda", True), ("on", "cpu", True), ("off", "cuda", False)],
)
def test_auto_pipelines_the_worker_on_a_gpu_only(
    pipeline: str, device: str, expected: bool
) -> None:
    settings = WorkerSettings(pipeline=pipeline)  # type: ignore[arg-type]
    assert threaded(settings, torch.device(device)) is expected
