"""CURVE keys and the ZAP authenticator: encrypted, authenticated sockets (libzmq + zmq.auth).

Key files are zmq.auth certificates: `NAME.key` (public) and `NAME.key_secret` (both keys).
A worker socket is a CURVE server with its own secret key and an allow list of client public
keys (a folder of certificates), checked by pyzmq's ZAP authenticator; the authenticated key of
every message is then available to the worker (`peer_key`). A client has its own key pair and
the server's public key. Bad key files are ConfigErrors naming the file; keys are never logged.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamconv.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, repr=False)
class KeyPair:
    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never print a secret key, even in a traceback
        return f"KeyPair(public={self.public.decode()[:8]}...)"


def generate(folder: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (mode 0600) into `folder`; never overwrites."""
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            msg = f"{path} exists; remove it first or pick another --name"
            raise ConfigError(msg)
    old = os.umask(0o077)  # the secret is never readable by others, not even for a moment
    try:
        zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old)
    secret.chmod(0o600)
    public.chmod(0o644)
    return public, secret


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        msg = f"{what} {path}: no such file"
        raise ConfigError(msg)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError, KeyError, IndexError) as e:
        msg = f"{what} {path} is not a ZeroMQ certificate ({e}); see `streamconv keys generate`"
        raise ConfigError(msg) from e
    if public is None or len(public) != 40:
        msg = f"{what} {path} has no valid public key"
        raise ConfigError(msg)
    return public, secret


def load_secret(path: Path) -> KeyPair:
    """This end's key pair from a NAME.key_secret file (warns when others may read it)."""
    public, secret = _load(path, "secret certificate")
    if secret is None or len(secret) != 40:
        msg = (
            f"secret certificate {path} holds no secret key (is it the public NAME.key?); "
            "pass the NAME.key_secret file"
        )
        raise ConfigError(msg)
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("secret certificate %s is readable by others: chmod 600 it", path)
    return KeyPair(public, secret)


def load_public(path: Path) -> bytes:
    """A public key from a certificate (NAME.key; a NAME.key_secret works too)."""
    return _load(path, "public certificate")[0]


def load_allowed(folder: Path) -> set[bytes]:
    """The public keys of every certificate (*.key) in `folder`: the clients allowed in."""
    if not folder.is_dir():
        msg = f"allowed-clients folder {folder}: no such directory"
        raise ConfigError(msg)
    keys = {load_public(path) for path in sorted(folder.glob("*.key"))}
    if not keys:
        msg = f"allowed-clients folder {folder} holds no *.key certificates"
        raise ConfigError(msg)
    return keys


class _Allow:
    """A ZAP credentials provider: is this client key on the socket's allow list?"""

    def __init__(self, keys: set[bytes], guard: Guard) -> None:
        self.keys, self.guard = keys, guard

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:  # both z85, as certificates hold them
            return True
        self.guard.refuse(key)
        return False


class Guard:
    """One ZAP authenticator per context; each CURVE server socket gets its own domain."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("streamconv.zap"))
        self.auth.start()
        self.domains = 0
        self._named: set[bytes] = set()

    def allow(self, keys: set[bytes]) -> str:
        """A new ZAP domain letting in exactly `keys`."""
        self.domains += 1
        domain = f"streamconv-{self.domains}"
        self.auth.configure_curve_callback(domain, credentials_provider=_Allow(keys, self))
        return domain

    def refuse(self, key: bytes) -> None:
        """Name the key in the log (the worker counts refusals from its socket monitors)."""
        if len(self._named) < 100 and key not in self._named:  # once per key, not per retry
            self._named.add(key)
            log.warning("refused a client with an unknown CURVE key %s (counted)", key.decode())

    def stop(self) -> None:
        self.auth.stop()


def serve(sock: zmq.Socket[Any], pair: KeyPair, domain: str) -> None:
    """Make `sock` a CURVE server (before bind)."""
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)


def client(sock: zmq.Socket[Any], pair: KeyPair, server: bytes) -> None:
    """Make `sock` a CURVE client of the server with public key `server` (before connect)."""
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server)


def peer_key(frame: zmq.Frame) -> str | None:
    """The authenticated public key (z85) of the client that sent `frame`; None without CURVE."""
    try:
        key = frame.get("User-Id")
    except (zmq.ZMQError, KeyError):
        return None
    return key if isinstance(key, str) else None
