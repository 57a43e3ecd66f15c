"""Frame producers behind one small interface (`Source`), and `open_source` to pick one by spec.

Specs: a video file; a folder of images or a glob ('frames/*.png'); one image file; a webcam
index ('0'); a stream URL OpenCV can open (rtsp://, rtsps://, http://, https://, ...);
'synthetic', 'synthetic:WxH' or 'synthetic:WxH:FRAMES' for the built-in pattern.
This package never imports torch.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from streamconv.capture.sources.base import BaseSource, Size, Source, transform
from streamconv.capture.sources.images import IMAGE_SUFFIXES, ImageSource, images_in, natural_key
from streamconv.capture.sources.memory import ArraySource
from streamconv.capture.sources.synthetic import (
    DEFAULT_SIZE,
    SyntheticSource,
    synthetic_frame,
    write_sample_video,
)
from streamconv.capture.sources.video import VideoSource
from streamconv.errors import SourceError

__all__ = [
    "ArraySource",
    "BaseSource",
    "ImageSource",
    "Size",
    "Source",
    "SyntheticSource",
    "VideoSource",
    "open_source",
    "sample_clip",
    "synthetic_frame",
    "transform",
    "write_sample_video",
]

URL_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
SYNTHETIC_RE = re.compile(r"synthetic(?::(\d+)x(\d+)(?::(\d+))?)?")
SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
SPEC_HELP = (
    "use a video file, a folder or glob of images, a webcam index like '0', an rtsp:// or "
    "http(s):// URL, 'synthetic[:WxH[:FRAMES]]' or 'sample' (the built-in clip)"
)


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


def open_source(
    spec: str,
    *,
    resize: Size | None = None,
    gray: bool = False,
    limit: int | None = None,
    loop: bool = False,
) -> BaseSource:
    """Open the source that `spec` names; raises SourceError saying what is wrong and the fix.

    Options: `resize` to (W, H), `gray` (BGR -> GRAY), `limit` (at most this many frames),
    `loop` (restart at the end; files, images and synthetic only).
    """
    options: dict[str, Any] = {"resize": resize, "gray": gray, "limit": limit, "loop": loop}
    spec = spec.strip()
    if not spec:
        msg = f"empty source spec: {SPEC_HELP}"
        raise SourceError(msg)
    if spec == "sample":
        return VideoSource(str(sample_clip()), "file", **options)
    if spec.startswith("synthetic"):
        match = SYNTHETIC_RE.fullmatch(spec)
        if match is None:
            msg = (
                f"bad synthetic spec {spec!r}: write 'synthetic', 'synthetic:640x480' or "
                "'synthetic:640x480:100' (width x height : frames)"
            )
            raise SourceError(msg)
        width, height, frames = match.groups()
        size = (int(width), int(height)) if width else DEFAULT_SIZE
        return SyntheticSource(*size, frames=int(frames) if frames else 300, **options)
    if spec.isdigit():
        return VideoSource(int(spec), "webcam", **options)
    scheme = SCHEME_RE.match(spec)
    if scheme is not None:
        if scheme.group(1).lower() not in URL_SCHEMES:
            msg = f"URL {spec!r} has an unsupported scheme: use one of {sorted(URL_SCHEMES)}"
            raise SourceError(msg)
        return VideoSource(spec, "url", **options)
    path = Path(spec).expanduser()
    if path.is_dir():
        paths = images_in(path)
        if not paths:
            msg = f"folder {spec!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            raise SourceError(msg)
        return ImageSource(paths, **options)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageSource([path], **options)
        return VideoSource(str(path), "file", **options)
    if any(c in spec for c in "*?["):
        matches = [Path(p) for p in glob.glob(str(path)) if Path(p).is_file()]
        if not matches:
            msg = f"glob {spec!r} matches no files: check the pattern and quote it in the shell"
            raise SourceError(msg)
        return ImageSource(sorted(matches, key=natural_key), **options)
    msg = f"source {spec!r} does not exist: {SPEC_HELP}"
    raise SourceError(msg)
