"""A sequence of still images (a folder, a glob or one file) read with cv2.imread."""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from streamconv.capture.sources.base import BaseSource, Options, Size, SourceKind
from streamconv.errors import SourceError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
)
# Keep 16-bit depth and single-channel images as they are; drop alpha.
IMREAD_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH


def natural_key(path: Path) -> list[str | int]:
    """Sort 'f2.png' before 'f10.png'; re.split alternates text and digits, so types align."""
    parts = re.split(r"(\d+)", str(path))
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def images_in(folder: Path) -> list[Path]:
    """The image files directly in `folder`, in natural name order."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=natural_key)


def read_image(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path), IMREAD_FLAGS)
    if frame is None:
        msg = f"cannot read image {path}: not an image OpenCV can decode, or unreadable"
        raise SourceError(msg)
    return frame


class ImageSource(BaseSource):
    """The images at `paths`, in the order given; all must share one shape and dtype."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        fps: float | None = None,
        resize: Size | None = None,
        gray: bool = False,
        limit: int | None = None,
        loop: bool = False,
    ) -> None:
        super().__init__(resize=resize, gray=gray, limit=limit, loop=loop)
        if not paths:
            msg = "image source needs at least one image"
            raise SourceError(msg)
        self.paths = list(paths)
        first = read_image(self.paths[0])  # fail at open, not at the first frame
        self.shape, self.dtype = first.shape, first.dtype
        self._fps = fps

    @property
    def fps(self) -> float | None:
        return self._fps

    def _pass_length(self) -> int | None:
        return len(self.paths)

    def _read_pass(self, first: bool) -> Iterator[np.ndarray]:
        for path in self.paths:
            frame = read_image(path)
            if frame.shape != self.shape or frame.dtype != self.dtype:
                msg = (
                    f"image {path} is {frame.shape} {frame.dtype}, but {self.paths[0]} is "
                    f"{self.shape} {self.dtype}: all images of a source must match "
                    "(resize them, or use --resize)"
                )
                raise SourceError(msg)
            yield frame

    def __repr__(self) -> str:
        return f"ImageSource({len(self.paths)} images from {self.paths[0].parent})"


def open_folder(spec: str, options: Options) -> ImageSource:
    paths = images_in(Path(spec).expanduser())
    if not paths:
        msg = f"folder {spec!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        raise SourceError(msg)
    return ImageSource(paths, **options)


def open_glob(spec: str, options: Options) -> ImageSource:
    matches = [Path(p) for p in glob.glob(str(Path(spec).expanduser())) if Path(p).is_file()]
    if not matches:
        msg = f"glob {spec!r} matches no files: check the pattern and quote it in the shell"
        raise SourceError(msg)
    return ImageSource(sorted(matches, key=natural_key), **options)


def is_image_file(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


FOLDER = SourceKind("image folder", lambda spec: Path(spec).expanduser().is_dir(), open_folder)
IMAGE_FILE = SourceKind(
    "image file", is_image_file, lambda spec, o: ImageSource([Path(spec).expanduser()], **o)
)
# After the files: a file whose name holds a wildcard character is that file, not a pattern.
GLOB = SourceKind("image glob", lambda spec: any(c in spec for c in "*?["), open_glob)
