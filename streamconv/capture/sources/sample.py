"""'sample': the built-in clip, the synthetic pattern written once as a small .mp4."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from streamconv.capture.sources.base import SourceKind
from streamconv.capture.sources.synthetic import write_sample_video
from streamconv.capture.sources.video import VideoSource

_PRIVATE: list[Path] = []  # this process's own folder for the clip, removed at exit


def sample_clip(path: Path | None = None) -> Path:
    """The built-in sample clip ('sample'): 120 frames of the synthetic pattern, 160x120,
    written once as an .mp4 at `path`. By default in a folder of this process's own (mode
    0700, removed at exit): a file at a shared, guessable temporary path could be anyone's."""
    if path is None:
        if not _PRIVATE:
            folder = Path(tempfile.mkdtemp(prefix="streamconv-sample-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            _PRIVATE.append(folder)
        path = _PRIVATE[0] / "sample.mp4"
    if not path.exists():
        folder_ = path.parent
        folder_.mkdir(parents=True, exist_ok=True)
        partial = folder_ / f".{path.name}.{os.getpid()}.mp4"  # atomic: no half-written clip
        write_sample_video(partial, frames=120, size=(160, 120), fps=30.0)
        partial.replace(path)
    return path


SAMPLE = SourceKind(
    "sample", lambda spec: spec == "sample", lambda spec, o: VideoSource(str(sample_clip()), **o)
)
