"""The settings tree for the roles: sockets as data, worker, capture, HTTP and logging.

`Settings` is the root of a config file: [worker], [capture], [view], [log] and the [[layers]].
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streamconv.config.layers import LayerSpec, Strict
from streamconv.usercode import check_spec

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
URL_PATTERN = r"^(tcp|ipc|inproc)://.+$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Url = Annotated[str, Field(pattern=URL_PATTERN)]
HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9_.:\[\]-]+):(?P<port>\d{1,5})$")


class SocketSettings(Strict):
    """One ZeroMQ socket, as data; `wire.transport.open_socket` makes it.

    A plain string in a config file, an environment variable or a flag is its endpoint, with
    the role's defaults for the rest: `input = "tcp://0.0.0.0:5555"`.
    """

    endpoint: Url
    bind: bool = False
    hwm: int = Field(default=8, ge=1, description="messages queued before back-pressure")
    linger_ms: int = Field(default=0, ge=0, description="how long close() may flush")
    max_message_bytes: int = Field(
        default=-1, ge=-1, description="receiving side: a larger part disconnects its sender"
    )
    curve_secret: Path | None = Field(
        default=None, description="CURVE: this end's secret certificate (NAME.key_secret)"
    )
    curve_server: Path | None = Field(
        default=None, description="CURVE client: the worker's public certificate (NAME.key)"
    )
    curve_clients: Path | None = Field(
        default=None, description="CURVE server: folder of the clients' public certificates"
    )

    @model_validator(mode="before")
    @classmethod
    def _endpoint_shorthand(cls, data: Any) -> Any:
        return {"endpoint": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _curve_pairs(self) -> SocketSettings:
        if (self.curve_server or self.curve_clients) and not self.curve_secret:
            msg = "CURVE needs curve_secret (this end's NAME.key_secret) as well"
            raise ValueError(msg)
        if self.curve_secret and self.bind and not self.curve_clients:
            msg = "a CURVE server socket needs curve_clients (a folder of allowed NAME.key files)"
            raise ValueError(msg)
        if self.curve_secret and not self.bind and not self.curve_server:
            msg = "a CURVE client socket needs curve_server (the worker's NAME.key)"
            raise ValueError(msg)
        return self

    @property
    def curve(self) -> bool:
        return self.curve_secret is not None

    def client_keys(self) -> dict[str, Any]:
        """The CURVE client keys, as the transport's shorthands take them: one SocketSettings
        gives the same keys to every socket its holder opens toward the worker."""
        return {"curve_secret": self.curve_secret, "curve_server": self.curve_server}

    def exposed(self) -> bool:
        """Plaintext off loopback: reachable from other machines without CURVE (a role that
        binds such a socket refuses it unless told allow_insecure)."""
        return not self.local() and not self.curve

    def local(self) -> bool:
        """ipc://, inproc:// and loopback TCP endpoints: only this machine can reach them."""
        if not self.endpoint.startswith("tcp://"):
            return True
        host = self.endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
        return host in ("localhost", "::1") or host.startswith("127.")


class InputSocket(SocketSettings):
    """The worker's PULL: frames from every sender (bound)."""

    endpoint: Url = "tcp://127.0.0.1:5555"
    bind: bool = True
    hwm: int = Field(default=8, ge=1, description="frames queued per sender connection")


class OutputSocket(SocketSettings):
    """The worker's XPUB: layer outputs to every subscriber (bound)."""

    endpoint: Url = "tcp://127.0.0.1:5556"
    bind: bool = True
    hwm: int = Field(
        default=1000, ge=1, description="messages queued per subscriber; a slower one loses some"
    )


QUEUE_BY_MODE = {"lossless": 8, "live": 2}
LINGER_BY_MODE = {"lossless": 5000, "live": 1000}


class CaptureSocket(SocketSettings):
    """A capture's PUSH to the worker (connects), and the `Sender`'s socket settings.

    hwm 0: 8 frames lossless, 2 live; linger_ms -1: 5000 ms lossless, 1000 ms live
    (`for_mode` fills them in).
    """

    endpoint: Url = "tcp://127.0.0.1:5555"
    hwm: int = Field(default=0, ge=0, description="frames queued; 0 picks by mode")
    linger_ms: int = Field(
        default=-1, ge=-1, description="how long close() may flush queued frames; -1 picks by mode"
    )

    @field_validator("hwm", mode="before")
    @classmethod
    def _queue(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 0:
            msg = f"queue size must be >= 1 (0 picks by mode), got {value}"
            raise ValueError(msg)
        return value

    def for_mode(self, mode: str) -> CaptureSocket:
        """These settings with the queue and linger picked by `mode` where left to it."""
        hwm = self.hwm or QUEUE_BY_MODE[mode]
        linger_ms = LINGER_BY_MODE[mode] if self.linger_ms < 0 else self.linger_ms
        return self.model_copy(update={"hwm": hwm, "linger_ms": linger_ms})


def parse_http(value: str) -> tuple[str, int] | None:
    """'HOST:PORT' -> (host, port); 'off' -> None. Port 0 picks a free port."""
    if value == "off":
        return None
    match = HOST_PORT.fullmatch(value)
    if match is None or int(match["port"]) > 65535:
        msg = f"must be HOST:PORT (e.g. 127.0.0.1:5557) or 'off', got {value!r}"
        raise ValueError(msg)
    return match["host"].strip("[]"), int(match["port"])


class WorkerSettings(Strict):
    input: InputSocket = InputSocket()
    output: OutputSocket = OutputSocket()
    http: str = Field(
        default="127.0.0.1:5557",
        description="HOST:PORT for /healthz, /readyz, /metrics and /status; 'off' for none "
        "(default: 127.0.0.1 and the input's TCP port + 2, so 5557 for 5555)",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:INDEX")
    dtype: Literal["float32", "float16", "bfloat16", "float64"] = "float32"
    chunk: int = Field(default=8, ge=1, le=4096)
    max_wait_ms: float = Field(default=20.0, ge=0)
    color: Literal["as-is", "gray", "rgb"] = "gray"
    in_channels: int = Field(default=1, ge=1, description="input channels for color 'as-is'")
    output_dtype: Literal["float32", "float16", "uint8"] = "float32"
    max_message_bytes: int = Field(default=64 * 2**20, ge=1024)
    max_streams: int = Field(default=64, ge=1)
    max_batch: int = Field(
        default=0,
        ge=0,
        description="chunks of several streams due together (same frame size) run in one "
        "forward pass, up to this many streams; 1 runs every stream alone; 0: 32 on a GPU, "
        "1 on the CPU (where a bigger working set falls out of the cache: bench/streams.py)",
    )
    idle_timeout_s: float = Field(
        default=60.0, gt=0, description="free a stream's state after this long without input"
    )
    shutdown_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="at SIGTERM, the most time spent finishing chunks in hand; the rest is "
        "counted and logged as not flushed",
    )
    live_drop_oldest: bool = Field(
        default=True,
        description="a live stream the worker cannot keep up with keeps its newest chunk of "
        "frames; older waiting ones are dropped and counted (live_dropped)",
    )
    checkpoint_dir: Path | None = Field(
        default=None, description="write each stream's state here, and resume from it at start"
    )
    checkpoint_every: int = Field(
        default=256, ge=1, description="frames run per stream between checkpoints"
    )
    checkpoint_interval_s: float = Field(
        default=0, ge=0, description="also checkpoint a stream this often (0: by frames only)"
    )
    checkpoint_retention_s: float = Field(
        default=86400, gt=0, description="older checkpoints are removed at start"
    )
    shards: list[Url] = Field(
        default_factory=list,
        description="every worker's input endpoint as the captures list them (--shards): with "
        "`shard`, this worker restores, prunes and removes only the checkpoints of streams it "
        "owns, so workers can share one checkpoint folder",
    )
    shard: str | None = Field(default=None, description="this worker's own entry in `shards`")
    preview_fps: float = Field(
        default=10.0,
        ge=0,
        description="previews per second per stream and layer for viewers "
        "(sent only while one subscribes to _preview/); 0: none",
    )
    preview_side: int = Field(
        default=320, ge=16, description="previews fit this many pixels a side"
    )
    allow_insecure: bool = Field(
        default=False,
        description="let input/output bind a non-loopback address without CURVE",
    )
    max_streams_per_key: int = Field(
        default=16, ge=1, description="streams one sender (one CURVE key) may hold at once"
    )
    max_frame_pixels: int = Field(
        default=3840 * 2160, ge=1, description="larger frames are refused (width x height)"
    )
    state_budget_mb: float = Field(
        default=4096, gt=0, description="memory for all streams' state; a stream over it is refused"
    )
    tf32: bool = Field(
        default=False,
        description="let CUDA convolutions use TF32 (faster on Ampere+, ~1e-3 relative error)",
    )
    threads: int = Field(
        default=1,
        ge=0,
        description="torch CPU threads; 0 keeps torch's default (all cores). One leaves the "
        "cores to capture and subscribers and keeps live latency low (BENCHMARKS.md)",
    )
    pipeline: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="read and decode input, run the model, and publish outputs on three "
        "threads at once: 'on'; one after the other on one thread: 'off'; 'auto': on when the "
        "model runs on a GPU (on the CPU one thread measured faster, BENCHMARKS.md)",
    )
    keep_freed_mb: int = Field(
        default=256,
        ge=0,
        le=2047,  # glibc takes it in a C int of bytes
        description="freed memory malloc keeps for reuse instead of handing it back to the "
        "OS (glibc): saves the page faults of every frame's fresh buffers; 0: glibc's default",
    )
    shm: bool = Field(
        default=False,
        description="also hand outputs to subscribers on this host through shared memory "
        "(Subscriber(shm=True), subscribe --shm): only a header crosses the socket",
    )
    shm_mb: int = Field(default=128, ge=1, description="the shared-memory ring's size")
    reload_http: bool = Field(
        default=False,
        description="POST /reload on the HTTP port loads [model] weights again (SIGHUP always "
        "does); off by default: anyone who reaches the port could swap the weights",
    )
    startup_check: bool = Field(
        default=True,
        description="check at start that the model streams exactly (chunked == whole, "
        "checkpoint round trip, batched == alone) and refuse it if not; `streamconv check` "
        "runs the whole check",
    )

    @model_validator(mode="before")
    @classmethod
    def _http_follows_input(cls, data: Any) -> Any:
        # Two workers given their own input ports must not collide on the HTTP port.
        if not isinstance(data, dict) or "http" in data:
            return data
        sock = data.get("input")
        endpoint = sock.get("endpoint") if isinstance(sock, dict) else sock
        endpoint = endpoint.endpoint if isinstance(endpoint, SocketSettings) else endpoint
        plus = _port_plus(endpoint, 2) if isinstance(endpoint, str) else None
        return data if plus is None else data | {"http": "127.0.0.1:" + plus.rsplit(":", 1)[1]}

    @field_validator("http")
    @classmethod
    def _http(cls, value: str) -> str:
        parse_http(value)
        return value

    @field_validator("shards", mode="before")
    @classmethod
    def _shard_list(cls, value: Any) -> Any:
        return split_list(value)

    @model_validator(mode="after")
    def _own_shard(self) -> WorkerSettings:
        if (self.shard is None) != (not self.shards):
            msg = "set shard and shards together: this worker's entry and the whole list"
            raise ValueError(msg)
        if self.shard is not None and self.shard not in self.shards:
            msg = f"shard {self.shard!r} is not in shards {self.shards}"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _exposed(self, info: ValidationInfo) -> WorkerSettings:
        # Only a worker binds these. A capture or subscriber loaded from the same file (or the
        # image's environment, which binds 0.0.0.0) must not be refused for the worker's sockets.
        role = (info.context or {}).get("role")
        if role not in (None, "worker"):
            return self
        for name, sock in (("input", self.input), ("output", self.output)):
            if sock.exposed() and not self.allow_insecure:
                msg = (
                    f"{name} {sock.endpoint} is reachable from other machines without CURVE: "
                    "anyone could feed or read every stream. Set --curve-secret and "
                    "--curve-clients (keys from `streamconv keys generate`), or allow it "
                    "explicitly with allow_insecure = true ([worker], or "
                    "STREAMCONV_WORKER__ALLOW_INSECURE=true)"
                )
                raise ValueError(msg)
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if re.fullmatch(r"auto|cpu|cuda(:\d{1,2})?", value) is None:
            msg = f"must be auto, cpu, cuda or cuda:INDEX (e.g. cuda:1), got {value!r}"
            raise ValueError(msg)
        return value


class CaptureSettings(Strict):
    """A capture: where frames come from and how they are sent."""

    source: str | None = None
    stream: Name | None = None
    connect: CaptureSocket = CaptureSocket()
    mode: Literal["auto", "lossless", "live"] = "auto"
    resize: tuple[int, int] | None = None
    gray: bool = False
    limit: int | None = Field(default=None, ge=1)
    loop: bool = False
    realtime: bool = False
    wait_s: float = Field(
        default=30.0, ge=0, description="how long to wait for a worker (0: forever)"
    )
    output: Url | None = Field(
        default=None,
        description="the worker's output endpoint, for wait_subscriber and lossless resume "
        "(default: the connect endpoint's port + 1, e.g. tcp://127.0.0.1:5556)",
    )
    resume: bool = Field(
        default=True,
        description="lossless: keep recent frames and send again what a restarted worker lacks",
    )
    wait_subscriber: bool = Field(
        default=False,
        description="send frame 0 only once the worker has a subscriber for this stream",
    )
    shards: list[str] = Field(
        default_factory=list,
        description="worker input endpoints to shard streams over (rendezvous hashing on the "
        "stream id picks one; every capture agrees), or dns://SERVICE:PORT for every address "
        "the name resolves to; instead of connect",
    )

    http: str = Field(
        default="off",
        description="HOST:PORT for /healthz, /readyz, /metrics and /status; 'off' (the "
        "default: many captures share a host, and a port each would collide)",
    )

    @field_validator("shards", mode="before")
    @classmethod
    def _shard_list(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("stream", mode="before")
    @classmethod
    def _stream(cls, value: Any) -> Any:
        if isinstance(value, str) and re.fullmatch(NAME_PATTERN, value) is None:
            msg = f"{value!r} is not a stream name: pick another stream id (1-64 of A-Za-z0-9_.-)"
            raise ValueError(msg)
        return value

    @field_validator("http")
    @classmethod
    def _http(cls, value: str) -> str:
        parse_http(value)
        return value


class ViewSocket(SocketSettings):
    """The view's SUB to the worker's outputs (connects)."""

    endpoint: Url = "tcp://127.0.0.1:5556"
    hwm: int = Field(
        default=64, ge=1, description="outputs queued; more are dropped by the worker's XPUB"
    )


class ViewSettings(Strict):
    """`streamconv view`: a subscriber that serves a live page of every stream's layers."""

    connect: ViewSocket = ViewSocket()
    more: list[Url] = Field(
        default_factory=list,
        description="more worker outputs to fan in (every shard's; the keys of connect apply)",
    )
    listen: str = Field(default="127.0.0.1:8080", description="HOST:PORT the page is served on")
    fps: float = Field(default=10.0, gt=0, le=120, description="page updates per second, at most")
    full: bool = Field(
        default=False,
        description="take every full-size output instead of the worker's previews (exact "
        "ranges and a sample per frame; costs the worker as much as another subscriber)",
    )
    quality: int = Field(default=85, ge=10, le=100, description="JPEG quality of the images")
    max_side: int = Field(
        default=640, ge=16, description="images are scaled down to fit this many pixels a side"
    )
    history_s: float = Field(default=5.0, gt=0, le=600, description="seconds of the live plots")
    stale_s: float = Field(
        default=2.0, gt=0, description="a stream without outputs this long is shown as stale"
    )
    max_streams: int = Field(
        default=32, ge=1, description="streams kept; the longest-silent one goes first"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if parse_http(value) is None:
            msg = "must be HOST:PORT (e.g. 127.0.0.1:8080)"
            raise ValueError(msg)
        return value


class SubscribeSettings(Strict):
    """`streamconv subscribe`: which outputs to take, from where, and where to write them.

    Made by the CLI from its flags and the config's [view] connect (keys included), not read
    from a config section of its own.
    """

    connect: ViewSocket = ViewSocket()
    more: list[Url] = Field(default_factory=list, description="more worker outputs to fan in")
    stream: str | None = None
    layers: list[str] = Field(default_factory=list, description="only these layers")
    lossless: bool | None = Field(default=None, description="None: on with save, npy, record")
    inputs: list[str] = Field(default_factory=list, description="lossless: where acks go")
    save: Path | None = None
    npy: Path | None = None
    record: Path | None = Field(default=None, description="a Zarr store of every output")
    shm: bool = Field(default=False, description="payloads from the worker's shared memory")
    count: int | None = None
    timeout_s: float = Field(default=0, description="stop after this many idle s; 0: never")
    allow_loss: bool = False

    @property
    def endpoints(self) -> list[str]:
        return [self.connect.endpoint, *self.more]


def split_list(value: Any) -> Any:
    """'a,b, c' -> ['a', 'b', 'c'] (a list from an environment variable or a flag)."""
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


def derive_output(connect: str) -> str | None:
    """The worker's output endpoint by convention: the input's TCP port + 1."""
    return _port_plus(connect, 1)


def derive_input(output: str) -> str | None:
    """The worker's input endpoint by convention: the output's TCP port - 1."""
    return _port_plus(output, -1)


def _port_plus(endpoint: str, delta: int) -> str | None:
    match = re.fullmatch(r"tcp://(?P<host>.+):(?P<port>\d{1,5})", endpoint)
    if match is None or not 0 < int(match["port"]) + delta <= 65535:
        return None
    return f"tcp://{match['host']}:{int(match['port']) + delta}"


class LogSettings(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    stats_every_s: float = Field(default=10.0, ge=0, description="periodic stats line; 0: off")


class ProxySettings(Strict):
    """`streamconv proxy`: one output endpoint for every shard's (an XSUB/XPUB forwarder)."""

    shards: list[str] = Field(
        default_factory=list,
        description="the workers' output endpoints to fan in, or dns://SERVICE:PORT for every "
        "address the name resolves to (resolved again every 10 s: workers come and go)",
    )
    listen: Url = Field(
        default="tcp://127.0.0.1:5560", description="where subscribers connect (bound)"
    )
    hwm: int = Field(default=1000, ge=1, description="messages queued per side")
    allow_insecure: bool = Field(
        default=False, description="let listen bind a non-loopback address without CURVE"
    )
    curve_secret: Path | None = Field(
        default=None, description="the proxy's secret certificate, for both sides (CURVE)"
    )
    curve_server: Path | None = Field(
        default=None, description="the workers' public certificate (as a client of theirs)"
    )
    curve_clients: Path | None = Field(
        default=None, description="folder of the subscribers' public certificates it lets in"
    )

    http: str | None = Field(
        default=None,
        description="HOST:PORT for /healthz, /readyz, /metrics and /status; 'off' for none "
        "(default: 127.0.0.1 and the listen port + 1, e.g. 127.0.0.1:5561)",
    )

    @field_validator("shards", mode="before")
    @classmethod
    def _shard_list(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("http")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None:
            parse_http(value)
        return value

    def listen_socket(self) -> SocketSettings:
        """The XPUB the subscribers connect to (bound; a CURVE server with curve_clients)."""
        return SocketSettings(
            endpoint=self.listen,
            bind=True,
            hwm=self.hwm,
            curve_secret=self.curve_secret,
            curve_clients=self.curve_clients,
        )

    def upstream(self, endpoint: str) -> SocketSettings:
        """The XSUB toward one worker's output (a CURVE client of it)."""
        return SocketSettings(
            endpoint=endpoint,
            hwm=self.hwm,
            curve_secret=self.curve_secret,
            curve_server=self.curve_server,
        )

    def http_address(self) -> str:
        """`http`, or by default loopback on the listen port + 1 ('off' if that has none)."""
        if self.http is not None:
            return self.http
        after = derive_output(self.listen)
        return f"127.0.0.1:{after.rsplit(':', 1)[1]}" if after else "off"


class RecordSettings(Strict):
    """[record]: the worker keeps the input frames of the streams it records (README, Record
    and replay); off unless `dir` is set (`--record DIR`)."""

    dir: Path | None = Field(default=None, description="the archive's folder; unset: off")
    streams: list[str] = Field(
        default_factory=lambda: ["*"], description="stream id patterns to record (fnmatch)"
    )
    segment_frames: int = Field(default=64, ge=1, le=4096, description="frames per segment")
    segment_s: float = Field(
        default=1.0, gt=0, description="a segment closes this long after its first frame"
    )
    level: int = Field(
        default=1, ge=0, le=22, description="zstd level, lossless either way; 0: uncompressed"
    )
    lossy_quality: int = Field(
        default=0,
        ge=0,
        le=100,
        description="0: lossless; 1-100: 8-bit frames as JPEG of this "
        "quality, for long retention (a replay is then not exact)",
    )
    ttl_s: float = Field(default=0, ge=0, description="segments older are removed; 0: kept")
    max_stream_bytes: int = Field(
        default=0, ge=0, description="per stream, the oldest segments beyond go; 0: no limit"
    )
    max_bytes: int = Field(
        default=0, ge=0, description="in all, the oldest segments beyond go; 0: no limit"
    )


class ModelSettings(Strict):
    """[model]: a whole model from your own code, instead of [[layers]], and fitted weights
    for either. Paths are relative to the config file."""

    factory: str | None = Field(
        default=None,
        description="'package.module:build' or 'file.py:build', returning a streamconv Layer "
        "(its Output names become the published layers)",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="the factory's arguments")
    weights: Path | None = Field(
        default=None,
        description="fitted weights (.safetensors, or .pt read weights-only), keyed as the "
        "model's state_dict(), loaded strictly",
    )
    root: Path | None = Field(
        default=None, description="folder searched for the factory's module too (the config's)"
    )

    @field_validator("factory")
    @classmethod
    def _spec(cls, value: str | None) -> str | None:
        return None if value is None else check_spec(value)


class Settings(Strict):
    """A config file: [worker], [capture], [view], [log], [model] and the [[layers]] pipeline."""

    worker: WorkerSettings = WorkerSettings()
    capture: CaptureSettings = CaptureSettings()
    view: ViewSettings = ViewSettings()
    proxy: ProxySettings = ProxySettings()
    log: LogSettings = LogSettings()
    model: ModelSettings = ModelSettings()
    record: RecordSettings = RecordSettings()
    layers: list[LayerSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_model(self) -> Settings:
        if self.model.factory is not None and self.layers:
            msg = "give [model] factory or [[layers]], not both"
            raise ValueError(msg)
        if self.model.factory is None and not self.layers:
            msg = "no model: no [[layers]] and no [model] factory (give one of them)"
            raise ValueError(msg)
        names = [layer.name for layer in self.layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"layer names must be unique, repeated: {dupes}"
            raise ValueError(msg)
        return self
