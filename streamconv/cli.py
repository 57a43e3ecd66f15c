"""streamconv: stream video through stateful torch layers over ZeroMQ.

Roles: `worker` runs the layers, `capture` feeds it frames, `subscribe` reads its outputs,
`view` shows them live in a browser, `proxy` gives every shard's outputs one endpoint, `run`
starts them all on a source, `presets` lists the shipped configs.
Exit codes: 0 ok, 1 runtime error, 2 usage or config, 3 startup (no worker, port in use),
130 a second SIGTERM/SIGINT cut the shutdown short.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from streamconv.config import (
    Settings,
    SubscribeSettings,
    load_settings,
    preset_names,
    preset_text,
)
from streamconv.errors import (
    ConfigError,
    RefusedError,
    ShutdownCutError,
    SourceError,
    StartupError,
    StreamconvError,
)
from streamconv.logs import configure as configure_logging
from streamconv.wire.shards import parse_shards

log = logging.getLogger("streamconv")
DEFAULT_CONFIG = "default"  # a preset name or a file


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        msg = f"size must look like 320x240, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from e
    return w, h


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default when it has one; flags that override the config say so."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _logging_args(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given before or after the subcommand, neither default hides the other.
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging")  # fmt: skip
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   default=argparse.SUPPRESS, help="default: info, or [log] level")  # fmt: skip
    g.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                   help="json: one object per line (default: text)")  # fmt: skip


def _common(config: bool = True) -> argparse.ArgumentParser:
    """Options the subcommands take, after its name: `streamconv worker -v`."""
    p = argparse.ArgumentParser(add_help=False)
    _logging_args(p)
    if not config:  # `presets` and `keys` read no config: a --config there would do nothing
        return p
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"TOML config file or preset name ({', '.join(preset_names())}; default: default)",
    )
    return p


def _capture_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="video file, webcam index (0), URL, image folder/glob, "
        "'synthetic[:WxH[:FRAMES]]' or 'sample'",
    )
    p.add_argument("--stream", help="stream id (default: from the source name)")
    p.add_argument(
        "--mode",
        choices=["auto", "lossless", "live"],
        help="lossless waits for the worker; live drops (and counts) frames "
        "(default: auto, live for webcams and URLs)",
    )
    p.add_argument("--resize", type=_size, help="resize frames to WxH")
    p.add_argument("--gray", action="store_true", default=None, help="convert to gray first")
    p.add_argument("--limit", type=int, help="stop after this many frames")
    p.add_argument("--loop", action="store_true", default=None, help="replay a file forever")
    p.add_argument(
        "--realtime", action="store_true", default=None, help="pace frames at the source fps"
    )
    p.add_argument("--queue", type=int, help="frames queued before wait/drop (8 lossless, 2 live)")


def _client_keys(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CURVE (encrypted, authenticated sockets; README, Security)")
    g.add_argument("--curve-secret", type=Path, help="this client's secret certificate "
                   "(NAME.key_secret from `streamconv keys generate`)")  # fmt: skip
    g.add_argument("--curve-server", type=Path, help="the worker's public certificate (NAME.key)")


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto, cpu, cuda or cuda:INDEX (default: [worker] device, "
                   "auto in the presets)")  # fmt: skip
    p.add_argument("--chunk", type=int, help="frames per forward pass (default: [worker] chunk)")
    p.add_argument("--max-wait-ms", type=float, help="run a partial chunk after this long "
                   "(default: [worker] max_wait_ms)")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="streamconv", description=__doc__, formatter_class=_Help)
    root.add_argument("--version", action="version", version=f"streamconv {_version()}")
    _logging_args(root)
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common, plain = [_common()], [_common(config=False)]

    def add(name: str, text: str, config: bool = True) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text,
                              parents=common if config else plain,
                              formatter_class=_Help)  # fmt: skip

    w = add("worker", "run the worker: PULL frames, PUB layer outputs, serve HTTP health")
    _worker_args(w)
    w.add_argument("--input", help="input endpoint to bind (default tcp://127.0.0.1:5555)")
    w.add_argument("--output", help="output endpoint to bind (default tcp://127.0.0.1:5556)")
    w.add_argument("--http", help="HOST:PORT for health and metrics, or 'off' (default "
                   "127.0.0.1 and the input's port + 2: 5557 for 5555)")  # fmt: skip
    w.add_argument("--checkpoint-dir", type=Path, help="keep each stream's state here and resume "
                   "from it at start (README, Crash safety)")  # fmt: skip
    w.add_argument("--checkpoint-every", type=int, help="frames per stream between checkpoints "
                   "(default 256)")  # fmt: skip
    w.add_argument("--shm", action="store_true", default=None, help="also hand outputs to "
                   "subscribers on this host through shared memory (subscribe --shm)")  # fmt: skip
    w.add_argument("--pipeline", choices=("auto", "on", "off"), help="input, model and output "
                   "on three threads at once (default auto: on for a GPU)")  # fmt: skip
    w.add_argument("--record", type=Path, help="keep every input frame in this archive folder "
                   "(README, Record and replay)")  # fmt: skip
    g = w.add_argument_group("CURVE (encrypted, authenticated sockets; README, Security)")
    g.add_argument("--curve-secret", type=Path, help="the worker's secret certificate "
                   "(NAME.key_secret from `streamconv keys generate`)")  # fmt: skip
    g.add_argument("--curve-clients", type=Path, help="folder of the public certificates "
                   "(*.key) of the clients allowed to send and to subscribe")  # fmt: skip

    c = add("capture", "read a source and push its frames to a worker")
    _capture_args(c)
    c.add_argument("--connect", help="worker input endpoint (default: the config's [worker] "
                   "input, tcp://127.0.0.1:5555 in the presets)")  # fmt: skip
    c.add_argument("--wait", type=float, help="seconds to wait for a worker (default 30; 0 "
                   "forever)")  # fmt: skip
    c.add_argument("--output", help="the worker's output endpoint, where --wait-subscriber and "
                   "lossless resume after a worker crash listen (default: [worker] output of "
                   "--config, else the --connect port + 1: tcp://127.0.0.1:5556)")  # fmt: skip
    c.add_argument("--wait-subscriber", action="store_true", default=None,
                   help="send only once the worker has a subscriber for this stream")  # fmt: skip
    c.add_argument("--shards", help="EP,EP,...: worker input endpoints; the stream goes to "
                   "its owner by rendezvous hashing (README, Scaling out)")  # fmt: skip
    c.add_argument("--http", dest="serve_http", help="HOST:PORT for /healthz, /readyz, "
                   "/metrics and /status (default: off)")  # fmt: skip
    _client_keys(c)

    s = add("subscribe", "print per-layer frames/s and latency; save outputs")
    s.add_argument("--connect", action="append", help="worker output endpoint (default: the "
                   "config's [view] connect, else its [worker] output, tcp://127.0.0.1:5556 in "
                   "the presets); repeat it, or EP,EP,..., for every shard's")  # fmt: skip
    s.add_argument("--stream", help="only this stream, until its eos; exit code 4 if it lost "
                   "outputs or did not end")  # fmt: skip
    s.add_argument("--allow-loss", action="store_true", help="with --stream: exit 0 even if "
                   "outputs were lost (a live camera)")  # fmt: skip
    s.add_argument("--input", action="append", help="with --lossless: the worker's input "
                   "endpoint, where the acks go (default: each --connect port - 1)")  # fmt: skip
    s.add_argument(
        "--lossless",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hold lossless senders back while this subscriber is behind, instead "
        "of losing outputs (default: on with --save, --npy or --record; live "
        "streams never wait; acks go to the worker's input, output port - 1)",
    )
    s.add_argument(
        "--shm",
        action="store_true",
        help="read the outputs from the worker's shared memory (same host, worker --shm)",
    )
    s.add_argument("--layer", action="append", help="only this layer (repeatable)")
    s.add_argument("--save", type=Path, help="write a preview .mp4 per layer into this folder")
    s.add_argument("--npy", type=Path, help="write every output frame as .npy into this folder")
    s.add_argument("--record", type=Path, help="append every output to this Zarr store, one "
                   "array per stream, session and layer (README, Record and replay)")  # fmt: skip
    s.add_argument("--count", type=int, help="stop after this many frames (of every layer)")
    s.add_argument("--timeout", type=float, default=0, help="stop after this many idle s; 0: "
                   "never (ends at eos when --stream is given)")  # fmt: skip
    _client_keys(s)

    v = add("view", "serve a live web page of every stream's layers (a subscriber)")
    v.add_argument("--connect", action="append", help="worker output endpoint (default "
                   "tcp://127.0.0.1:5556); repeat it, or EP,EP,..., for every shard's")  # fmt: skip
    v.add_argument("--listen", help="HOST:PORT for the page (default 127.0.0.1:8080)")
    v.add_argument("--full", action="store_true", default=None, help="every full-size output "
                   "instead of the worker's previews (costs the worker more)")  # fmt: skip
    _client_keys(v)

    x = add("proxy", "one output endpoint for every shard's (XSUB/XPUB forwarder)")
    x.add_argument("--shards", help="EP,EP,...: the workers' output endpoints, or "
                   "dns://SERVICE:PORT, followed as workers come and go")  # fmt: skip
    x.add_argument("--http", dest="serve_http", help="HOST:PORT for /healthz, /readyz, "
                   "/metrics and /status, or 'off' (default 127.0.0.1 and --listen's port "
                   "+ 1)")  # fmt: skip
    x.add_argument("--listen", help="where subscribers connect (default tcp://127.0.0.1:5560)")
    x.add_argument("--allow-insecure", action="store_true", default=None,
                   help="let --listen bind a non-loopback address without CURVE")  # fmt: skip
    g = x.add_argument_group("CURVE (encrypted, authenticated sockets; README, Security)")
    g.add_argument("--curve-secret", type=Path, help="the proxy's secret certificate")
    g.add_argument("--curve-server", type=Path, help="the workers' public certificate (NAME.key)")
    g.add_argument("--curve-clients", type=Path, help="folder of the public certificates of "
                   "the subscribers it lets in")  # fmt: skip

    r = add("run", "capture + worker + subscriber in one command, then check exactness")
    _capture_args(r)
    _worker_args(r)
    r.add_argument("--out", type=Path, default=Path("out"), help="folder for previews")
    r.add_argument("--no-verify", action="store_true", help="skip the offline comparison")
    r.add_argument("--view", action="store_true", help="also serve the live page; the capture "
                   "starts once a page is open, paced in real time")  # fmt: skip
    r.add_argument("--listen", help="HOST:PORT for --view's page (default 127.0.0.1:8080)")
    r.add_argument("--curve", action="store_true", help="encrypt every socket with CURVE, "
                   "with throwaway keys made for this run")  # fmt: skip

    c = add("check", "check that the model streams exactly (chunked == whole, checkpoint "
            "round trip, batched == alone, on its device), describe it; exit 1 if not")  # fmt: skip
    c.add_argument("model_config", nargs="?", metavar="CONFIG",
                   help="TOML config file or preset name (default: --config)")  # fmt: skip
    c.add_argument("--device", help="auto, cpu, cuda or cuda:INDEX (default: [worker] device)")
    c.add_argument("--frames", type=int, default=40, help="frames in the random clip")
    c.add_argument("--size", type=_size, default=(640, 480),
                   help="WxH the time per frame is measured at")  # fmt: skip
    c.add_argument("--seed", type=int, default=0, help="of the random clip and chunkings")

    p = add("replay", "send a recorded interval of a stream to a worker again, as a new "
            "stream (lossless, with the original capture times)")  # fmt: skip
    p.add_argument("archive", type=Path, help="the archive folder (worker --record DIR)")
    p.add_argument("--stream", help="the recorded stream (default: the archive's only one)")
    p.add_argument("--session", help="its session id or a prefix (default: the latest, or "
                   "the one holding --from-time)")  # fmt: skip
    p.add_argument("--from-seq", type=int, help="first recorded seq of the interval")
    p.add_argument("--to-seq", type=int, help="last recorded seq of the interval")
    p.add_argument("--from-time", help="the interval's start, ISO 8601 (UTC unless given)")
    p.add_argument("--to-time", help="the interval's end, ISO 8601")
    p.add_argument("--warmup", default="0", help="frames before the interval sent first, so "
                   "the state is right at its start; 'auto': as far back as the --config "
                   "model remembers")  # fmt: skip
    p.add_argument("--as", dest="as_stream", help="the new stream id (default: ID-replay)")
    p.add_argument("--realtime", action="store_true", help="at the recorded frame rate")
    p.add_argument("--speed", type=float, help="at this multiple of the recorded frame rate")
    p.add_argument("--connect", help="worker input endpoint (default: the config's)")
    p.add_argument("--output", help="the worker's output (lossless resume; default: the "
                   "--connect port + 1)")  # fmt: skip
    p.add_argument("--wait", type=float, help="seconds to wait for a worker (default 30)")
    _client_keys(p)

    a = add("archive", "list what an input archive holds (streams, sessions, seqs, times, "
            "bytes)", config=False)  # fmt: skip
    a.add_argument("action", choices=["ls"], help="ls: list it")
    a.add_argument("dir", type=Path, help="the archive folder (worker --record DIR)")

    k = add("keys", "make CURVE key pairs (zmq.auth certificates)", config=False)
    k.add_argument("action", choices=["generate"], help="generate: write NAME.key and "
                   "NAME.key_secret (mode 0600) into DIR")  # fmt: skip
    k.add_argument("dir", type=Path, help="folder for the certificates")
    k.add_argument("--name", default="client", help="file name stem")

    p = add("presets", "list the shipped config presets, or print one to start a config from",
            config=False)  # fmt: skip
    p.add_argument("name", nargs="?", help="print this preset's TOML")
    return root


def _version() -> str:
    try:
        return metadata.version("streamconv")
    except metadata.PackageNotFoundError:
        return "unknown"


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings tree the flags give; flags left out give nothing (the config wins)."""

    def pick(**keys: Any) -> dict[str, Any]:
        return {k: v for k, v in keys.items() if v is not None}

    a = vars(args)
    worker = pick(device=a.get("device"), chunk=a.get("chunk"), max_wait_ms=a.get("max_wait_ms"),
                  http=a.get("http"))  # fmt: skip
    if args.command == "worker":
        worker |= pick(checkpoint_dir=a.get("checkpoint_dir"),
                       checkpoint_every=a.get("checkpoint_every"), shm=a.get("shm"),
                       pipeline=a.get("pipeline"))  # fmt: skip
        server = pick(curve_secret=a.get("curve_secret"), curve_clients=a.get("curve_clients"))
        for name in ("input", "output"):
            sock = pick(endpoint=a.get(name)) | server
            if sock:
                worker[name] = sock
    keys = pick(curve_secret=a.get("curve_secret"), curve_server=a.get("curve_server"))
    capture: dict[str, Any] = {}
    if "source" in a:
        capture = pick(source=a["source"], stream=a["stream"], mode=a["mode"],
                       resize=a["resize"], gray=a["gray"], limit=a["limit"], loop=a["loop"],
                       realtime=a["realtime"], wait_s=a.get("wait"), output=a.get("output"),
                       wait_subscriber=a.get("wait_subscriber"),
                       shards=a.get("shards"), http=a.get("serve_http"))  # fmt: skip
        connect = pick(endpoint=a.get("connect"), hwm=a.get("queue")) | keys
        if connect:
            capture["connect"] = connect
        if args.command == "run":
            capture.pop("output", None)
    if args.command == "replay":
        capture = pick(wait_s=a.get("wait"), output=a.get("output"))
        connect = pick(endpoint=a.get("connect")) | keys
        if connect:
            capture["connect"] = connect
    view: dict[str, Any] = {}
    if args.command in ("view", "run"):
        view = pick(listen=a.get("listen"), full=a.get("full"))
    if args.command in ("view", "subscribe") and (a.get("connect") or keys):
        endpoints = parse_shards(a.get("connect") or [])
        view["connect"] = pick(endpoint=endpoints[0] if endpoints else None) | keys
        if endpoints[1:]:
            view["more"] = endpoints[1:]
    level = "debug" if a.get("verbose") else a.get("log_level")
    logs = pick(level=level, format=a.get("log_format"))
    proxy: dict[str, Any] = {}
    if args.command == "proxy":
        proxy = pick(shards=a.get("shards"), listen=a.get("listen"),
                     allow_insecure=a.get("allow_insecure"), curve_secret=a.get("curve_secret"),
                     curve_server=a.get("curve_server"),
                     curve_clients=a.get("curve_clients"),
                     http=a.get("serve_http"))  # fmt: skip
    record = pick(dir=a.get("record")) if args.command == "worker" else {}
    tree = {"worker": worker, "capture": capture, "view": view, "proxy": proxy, "log": logs,
            "record": record}  # fmt: skip
    return {k: v for k, v in tree.items() if v}


def _subscribe_settings(args: argparse.Namespace, settings: Settings) -> SubscribeSettings:
    # The endpoint flags went into [view] (a subscriber like view); what they left out, the
    # file gives.
    return SubscribeSettings(
        connect=settings.view.connect, more=settings.view.more, stream=args.stream,
        layers=args.layer or [], lossless=args.lossless, inputs=args.input or [],
        save=args.save, npy=args.npy, record=args.record, shm=args.shm, count=args.count,
        timeout_s=args.timeout,
        allow_loss=args.allow_loss,
    )  # fmt: skip


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        from streamconv.worker.role import Worker

        Worker(settings).run()
        return 0
    if args.command == "replay":
        from streamconv.archive.commands import replay

        return replay(args, settings)
    if args.command == "check":
        from streamconv.worker import check

        return check.run(settings, args.frames, args.size, args.seed)
    if args.command == "capture":
        from streamconv.capture.role import Capture

        Capture(settings.capture, progress=True).run()
        return 0
    if args.command == "subscribe":
        from streamconv.client.subscribe import subscribe

        expect = [spec.name for spec in settings.layers if spec.publish]
        return subscribe(_subscribe_settings(args, settings), expect=args.layer or expect)
    if args.command == "proxy":
        from streamconv.proxy import Proxy

        Proxy(settings.proxy).run()
        return 0
    if args.command == "view":
        from streamconv.client.view.role import View

        View(settings.view).run()
        return 0
    from streamconv.run import run_pipeline

    return run_pipeline(settings, args.out, verify=not args.no_verify, view=args.view,
                        curve=args.curve)  # fmt: skip


def presets(name: str | None) -> int:
    if name is None:
        print("\n".join(preset_names()))
        print("(streamconv presets NAME prints one; --config NAME uses it)", file=sys.stderr)
    else:
        print(preset_text(name), end="")
    return 0


def keys(folder: Path, name: str) -> int:
    from streamconv.wire.curve import generate

    public, secret = generate(folder, name)
    print(f"wrote {public} (public: give it to the other end) and {secret} (secret, mode 0600)")
    return 0


class _StoppedEarly(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM before a role installed its own handler (e.g. `docker stop` during startup)."""


def _stop_early(signum: int, frame: object) -> None:
    raise _StoppedEarly


def main(argv: list[str] | None = None) -> int:
    # Until a role takes over SIGTERM, it ends the command cleanly (exit 0), not with 143.
    previous = signal.signal(signal.SIGTERM, _stop_early)
    try:
        return _main(argv)
    except _StoppedEarly:
        print("streamconv: stopped before it had started", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "presets":
            return presets(args.name)
        if args.command == "keys":
            return keys(args.dir, args.name)
        if args.command == "archive":
            from streamconv.archive.commands import ls

            return ls(args.dir)
        config = getattr(args, "model_config", None) or args.config
        settings = load_settings(config, overrides(args), role=args.command)
        configure_logging(settings.log.level, settings.log.format)
        return dispatch(args, settings)
    except (ConfigError, SourceError) as e:
        print(f"streamconv: {e}", file=sys.stderr)
        return 2
    except StartupError as e:
        print(f"streamconv: {e}", file=sys.stderr)
        return 3
    except RefusedError as e:
        print(f"streamconv: {e}", file=sys.stderr)
        return 5
    except ShutdownCutError as e:
        print(f"streamconv: {e}", file=sys.stderr)
        return 130
    except StreamconvError as e:
        print(f"streamconv: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("streamconv: interrupted", file=sys.stderr)
        return 130
