"""streamconv: a streaming video-processing daemon with exact stateful memory Conv3d layers."""

__version__ = "0.1.0"
