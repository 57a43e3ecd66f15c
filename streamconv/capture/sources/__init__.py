"""Frame producers behind one small interface (`Source`), and `open_source` to pick one by spec.

Specs: a video file; a folder of images or a glob ('frames/*.png'); one image file; a webcam
index ('0'); a stream URL OpenCV can open (rtsp://, rtsps://, http://, https://, ...);
'synthetic', 'synthetic:WxH' or 'synthetic:WxH:FRAMES' for the built-in pattern; 'sample'.
Each is a `SourceKind` (how it recognises its spec, how it opens it) registered in KINDS.
This package never imports torch.
"""

from __future__ import annotations

from streamconv.capture.sources.base import (
    BaseSource,
    Options,
    Size,
    Source,
    SourceKind,
    transform,
)
from streamconv.capture.sources.images import FOLDER, GLOB, IMAGE_FILE, ImageSource
from streamconv.capture.sources.memory import ArraySource
from streamconv.capture.sources.sample import SAMPLE, sample_clip
from streamconv.capture.sources.synthetic import (
    SYNTHETIC,
    SyntheticSource,
    synthetic_frame,
    write_sample_video,
)
from streamconv.capture.sources.video import URL, VIDEO_FILE, WEBCAM, VideoSource
from streamconv.errors import SourceError

__all__ = [
    "KINDS",
    "ArraySource",
    "BaseSource",
    "ImageSource",
    "Size",
    "Source",
    "SourceKind",
    "SyntheticSource",
    "VideoSource",
    "open_source",
    "sample_clip",
    "synthetic_frame",
    "transform",
    "write_sample_video",
]

# Tried in this order; the first that recognises a spec opens it. Names before paths (a file
# called 'sample' is still the clip), URLs before paths, files before globs.
KINDS: tuple[SourceKind, ...] = (
    SAMPLE,
    SYNTHETIC,
    WEBCAM,
    URL,
    FOLDER,
    IMAGE_FILE,
    VIDEO_FILE,
    GLOB,
)
SPEC_HELP = (
    "use a video file, a folder or glob of images, a webcam index like '0', an rtsp:// or "
    "http(s):// URL, 'synthetic[:WxH[:FRAMES]]' or 'sample' (the built-in clip)"
)


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
    options: Options = {"resize": resize, "gray": gray, "limit": limit, "loop": loop}
    spec = spec.strip()
    if not spec:
        msg = f"empty source spec: {SPEC_HELP}"
        raise SourceError(msg)
    for kind in KINDS:
        if kind.recognises(spec):
            return kind.open(spec, options)
    msg = f"source {spec!r} does not exist: {SPEC_HELP}"
    raise SourceError(msg)
