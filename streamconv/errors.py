"""The exception tree: one base class, a few subclasses callers can tell apart."""


class StreamconvError(Exception):
    """Base of every error streamconv raises on purpose."""


class ConfigError(StreamconvError):
    """A setting, config file or environment variable is invalid."""


class ProtocolError(StreamconvError):
    """A message on the wire does not follow docs/PROTOCOL.md."""


class SourceError(StreamconvError):
    """A frame source cannot be opened or read."""


class ShapeError(StreamconvError, ValueError):
    """An input's shape does not fit a layer or its carried temporal state."""


class StartupError(StreamconvError):
    """A role could not start, e.g. its endpoint is already in use."""
