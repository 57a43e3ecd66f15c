"""The npy sink: every output frame as its own .npy file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamconv.client.sinks.base import safe_name


class NpyWriter:
    """One .npy per output frame: {stream}_{layer}_{session8}_{seq:06d}.npy, (C, H, W); every
    part of the name passes safe_name (a sender's session may hold '/')."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, header: dict[str, Any], frame: np.ndarray) -> None:
        # The session keeps a second run (or a looped file) from overwriting the first.
        stream, layer = safe_name(header["stream"]), safe_name(header["layer"])
        session = safe_name(str(header["session"])[:8])
        np.save(self.folder / f"{stream}_{layer}_{session}_{int(header['seq']):06d}.npy", frame)

    def close(self) -> list[Path]:
        # Each file is whole once np.save returns; one per frame is too many to name.
        return []
