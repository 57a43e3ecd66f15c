"""Sources that OpenCV's VideoCapture decodes: video files, webcams and stream URLs."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from streamconv.capture.sources.base import BaseSource, Options, Size, SourceKind
from streamconv.capture.sources.images import IMAGE_SUFFIXES
from streamconv.errors import SourceError

log = logging.getLogger(__name__)

URL_TIMEOUT_MS = 10_000
URL_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class VideoSource(BaseSource):
    """Frames from cv2.VideoCapture; `kind` is "file", "webcam" (an int index) or "url"."""

    def __init__(
        self,
        target: str | int,
        kind: str = "file",
        *,
        resize: Size | None = None,
        gray: bool = False,
        limit: int | None = None,
        loop: bool = False,
    ) -> None:
        if kind not in ("file", "webcam", "url"):
            msg = f"video source kind must be file, webcam or url, got {kind!r}"
            raise SourceError(msg)
        self.target, self.kind = target, kind
        self.live = kind != "file"
        super().__init__(resize=resize, gray=gray, limit=limit, loop=loop)
        self._cap = self._open()
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(fps) if math.isfinite(fps) and fps > 0 else None
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        finite = kind == "file" and math.isfinite(count) and count > 0
        self._count = int(count) if finite else None
        log.debug("opened %s: fps %s, frames %s", self, self._fps, self._count)

    def _open(self) -> cv2.VideoCapture:
        if self.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, URL_TIMEOUT_MS]
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, URL_TIMEOUT_MS]
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_ANY, params)
        elif self.kind == "webcam":
            cap = cv2.VideoCapture(int(self.target))
        else:
            if not Path(str(self.target)).is_file():
                msg = f"video file {self.target!r} does not exist: check the path"
                raise SourceError(msg)
            cap = cv2.VideoCapture(str(self.target))
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_error())
        return cap

    def _open_error(self) -> str:
        if self.kind == "webcam":
            return (
                f"cannot open webcam {self.target}: check /dev/video{self.target} exists, "
                "is not used by another program, and that you may read it (group 'video')"
            )
        if self.kind == "url":
            return (
                f"cannot open stream {self.target!r}: check the URL, that the server is "
                f"reachable within {URL_TIMEOUT_MS // 1000} s, and that FFmpeg supports it"
            )
        return (
            f"OpenCV cannot decode video file {self.target!r}: convert it, e.g. "
            "'ffmpeg -i INPUT -c:v libx264 out.mp4'"
        )

    @property
    def fps(self) -> float | None:
        return self._fps

    def _pass_length(self) -> int | None:
        return self._count

    def _read_pass(self, first: bool) -> Iterator[np.ndarray]:
        if not first:  # reopening is more reliable than seeking to frame 0 in every container
            self._cap.release()
            self._cap = self._open()
        while True:
            ok, frame = self._cap.read()
            if not ok or frame is None:
                return
            yield frame

    def close(self) -> None:
        self._cap.release()

    def __repr__(self) -> str:
        return f"VideoSource({self.kind} {self.target!r})"


def open_url(spec: str, options: Options) -> VideoSource:
    scheme = SCHEME_RE.match(spec)
    if scheme is None or scheme.group(1).lower() not in URL_SCHEMES:
        msg = f"URL {spec!r} has an unsupported scheme: use one of {sorted(URL_SCHEMES)}"
        raise SourceError(msg)
    return VideoSource(spec, "url", **options)


def is_video_file(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES


WEBCAM = SourceKind("webcam", str.isdigit, lambda spec, o: VideoSource(int(spec), "webcam", **o))
# Any scheme is claimed, so that 'ftp://...' is told its scheme, not that no file has that name.
URL = SourceKind("url", lambda spec: SCHEME_RE.match(spec) is not None, open_url)
VIDEO_FILE = SourceKind(
    "video file",
    is_video_file,
    lambda spec, o: VideoSource(str(Path(spec).expanduser()), "file", **o),
)
