"""Stream -> shard routing: rendezvous (highest random weight) hashing over a shard list.

Every stream has one owner among the shards: the shard whose hash with the stream id is the
highest. All captures compute it alone and agree, with no coordinator; adding or removing a
shard moves only the streams that must move (those it takes, or those it held). A shard is
known by its host's first two DNS labels and port (`identity`), so list stable names (a
StatefulSet's pod DNS names, `tcp://streamconv-worker-0.streamconv-worker:5555`, short or
fully qualified: the same shard), never addresses that change.
`dns://NAME:PORT` stands for every address NAME resolves to (a Kubernetes headless service
lists its ready pods), each named by its reverse lookup (a StatefulSet pod's stable DNS name)
where there is one. Stdlib only: the capture (no torch) and the tests use it.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterable, Sequence

from streamconv.errors import ConfigError


def identity(shard: str) -> str:
    """What a shard is known by: the first two labels of its host name and its port, so that
    `tcp://streamconv-worker-0.streamconv-worker:5555` (pod.service) and the fully qualified
    name a reverse lookup gives (`...-0.streamconv-worker.default.svc.cluster.local`) are the
    same shard, while `gpu.rack1.example` and `gpu.rack2.example` stay two. A one-label host,
    an IP address, or anything else is known by the whole endpoint."""
    scheme, _, rest = shard.partition("://")
    host, _, port = rest.rpartition(":")
    labels = host.split(".")
    if scheme != "tcp" or not port.isdigit() or len(labels) < 2 or host.startswith("["):
        return shard
    if host.replace(".", "").isdigit():  # an IPv4 address: every label counts
        return shard
    return f"{labels[0]}.{labels[1]}:{port}"


def weight(stream: str, shard: str) -> int:
    """The stream's random weight on a shard: a 64-bit hash, the same on every machine."""
    key = identity(shard)
    digest = hashlib.blake2b(f"{key}\n{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(stream: str, shards: Sequence[str]) -> str:
    """The shard that owns `stream`: the highest weight (ties, never seen in practice, go to
    the larger name, so the choice never depends on the list's order)."""
    if not shards:
        msg = "no shards to route to: list at least one worker input endpoint"
        raise ConfigError(msg)
    return max(shards, key=lambda shard: (weight(stream, shard), identity(shard), shard))


def parse_shards(value: str | Iterable[str]) -> list[str]:
    """'EP,EP,...' (or a list of such) -> the endpoints, in order, without duplicates."""
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    shards: list[str] = []
    for item in (p.strip() for p in items):
        if not item:
            continue
        if "://" not in item:
            msg = (
                f"shard {item!r} is not an endpoint like tcp://worker-0.workers:5555 "
                "(or dns://SERVICE:PORT)"
            )
            raise ConfigError(msg)
        if item not in shards:
            shards.append(item)
    return shards


def resolve(shards: Sequence[str]) -> list[str]:
    """The shard list with every `dns://NAME:PORT` replaced by the endpoints NAME resolves to
    now (sorted, named by reverse lookup where there is one); ConfigError if NAME does not
    resolve. Other entries stay as they are."""
    out: list[str] = []
    for spec in shards:
        if not spec.startswith("dns://"):
            out.append(spec)
            continue
        host, _, port = spec[len("dns://") :].rpartition(":")
        if not host or not port.isdigit():
            msg = f"shard {spec!r}: write dns://NAME:PORT"
            raise ConfigError(msg)
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as e:
            msg = f"shard {spec!r}: {host} does not resolve ({e})"
            raise ConfigError(msg) from e
        for address in sorted({str(info[4][0]) for info in infos}):
            try:
                name = socket.gethostbyaddr(address)[0]
            except OSError:
                name = address
            out.append(f"tcp://[{name}]:{port}" if ":" in name else f"tcp://{name}:{port}")
    return list(dict.fromkeys(out))
