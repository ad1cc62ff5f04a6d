"""CurveZMQ authentication and encryption for the ZeroMQ connectors, configured with key files.

Keys are ZeroMQ certificate files as ``zmq.auth.create_certificates`` writes them (``NAME.key`` holds
the public key, ``NAME.key_secret`` both keys); create a pair with::

    python -m connectors.curve KEYS_DIR NAME

Roles: the *server* (usually the side that binds, e.g. the service's PULL source) holds its secret key
and may restrict clients to the public keys in a directory; a *client* knows the server's public key
and holds its own key pair (an ephemeral pair is made when it has none, which only a server accepting
any client takes). A peer without Curve, or with a key the server does not list, is refused during the
handshake: nothing it sends is ever delivered.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveOptions:
    """Curve settings of one socket; all paths. ``server_key`` set makes the socket a client.

    A socket with neither ``secret_key`` nor ``server_key`` has no Curve; with a ``secret_key`` alone it is a
    server.

    Parameters
    ----------
    secret_key : str or None, default None
        This socket's own certificate (``NAME.key_secret``).
    server_key : str or None, default None
        The server's public certificate (clients only).
    authorized_keys : str or None, default None
        Directory of client public certificates (servers only).

    Examples
    --------
    >>> CurveOptions(secret_key="server.key_secret").is_server, CurveOptions(server_key="server.key").is_server
    (True, False)
    """

    secret_key: str | None = None  # this socket's own certificate (NAME.key_secret)
    server_key: str | None = None  # the server's public certificate (clients only)
    authorized_keys: str | None = None  # directory of client public certificates (servers only)

    @property
    def enabled(self) -> bool:
        return bool(self.secret_key or self.server_key)

    @property
    def is_server(self) -> bool:
        return self.enabled and not self.server_key

    @classmethod
    def from_keywords(cls, curve: CurveOptions | None, keywords: Mapping[str, Any], owner: str) -> CurveOptions:
        """``curve`` (or no Curve) with the fields that ``keywords`` spell ``curve_secret_key``,
        ``curve_server_key`` and ``curve_authorized_keys`` (the spelling of connector options, URI query
        strings and ``streammas send``) set over it; any other keyword is ``owner``'s ``TypeError``.

        >>> CurveOptions.from_keywords(None, {"curve_server_key": "server.key"}, "ZmqProducer").server_key
        'server.key'
        >>> CurveOptions.from_keywords(None, {"hwn": 10}, "ZmqSink")
        Traceback (most recent call last):
        TypeError: ZmqSink() got an unexpected keyword argument 'hwn'
        """
        fields: dict[str, str | None] = {}
        for key, value in keywords.items():
            if key not in KEYWORDS:
                raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}")
            if value is not None:
                fields[KEYWORDS[key]] = value
        return replace(curve or cls(), **fields)


#: The keyword that spells each :class:`CurveOptions` field in connector options and URI query strings.
KEYWORDS = {
    "curve_secret_key": "secret_key",
    "curve_server_key": "server_key",
    "curve_authorized_keys": "authorized_keys",
}


def _load(path: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Curve key file {path!r} does not exist")
    public, secret_key = zmq.auth.load_certificate(path)
    if secret and not secret_key:
        raise ValueError(f"{path!r} holds no secret key (use the NAME.key_secret file)")
    return public, secret_key


def configure(socket: zmq.Socket, context: zmq.Context, options: CurveOptions) -> ThreadAuthenticator | None:
    """Set up Curve on ``socket`` before it binds or connects. For a server, start and return the
    authenticator (one per context; stop it when the socket closes)."""
    if not options.enabled:
        return None
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq has no CurveZMQ support")
    if options.is_server:
        if options.authorized_keys is not None and not os.path.isdir(options.authorized_keys):
            raise FileNotFoundError(f"authorized keys directory {options.authorized_keys!r} does not exist")
        public, secret = _load(options.secret_key, secret=True)
        if options.authorized_keys is None:
            _log.info("Curve server: accepting any client that knows this server's public key")
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(
            domain="*",
            location=options.authorized_keys if options.authorized_keys else zmq.auth.CURVE_ALLOW_ANY,
        )
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        return auth
    if options.authorized_keys:
        raise ValueError("curve_authorized_keys is for the server side; a client gives curve_server_key")
    server_public, _ = _load(options.server_key, secret=False)
    if options.secret_key:
        public, secret = _load(options.secret_key, secret=True)
    else:
        public, secret = zmq.curve_keypair()
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
    return None


def create_keys(directory: str, name: str) -> tuple[str, str]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory``; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return public, secret


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.curve", description="Create a Curve key pair.")
    parser.add_argument("directory")
    parser.add_argument("name")
    args = parser.parse_args(argv)
    public, secret = create_keys(args.directory, args.name)
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
