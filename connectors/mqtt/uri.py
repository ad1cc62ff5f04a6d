"""``mqtt://`` URIs: parsing them, and the client they name.

``mqtt://HOST:PORT/TOPIC`` (the port defaults to 1883; 8883 with ``tls=1``), the topic being the rest of the path
with its wildcards as they are (``mqtt://127.0.0.1/sensors/+/temperature``, ``mqtt://broker/plant/#``), credentials
in the URI (``mqtt://user:secret@broker/sensors/#``) or as options, and options as a query string
(``?qos=1&client_id=edge-1&tls=1&tls_ca=ca.pem``).

(This package is ``connectors.mqtt``; ``import paho`` in it is the client library.)
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote

from connectors.options import query_options

__all__ = ["connect", "parse_uri"]

DEFAULT_PORT, DEFAULT_TLS_PORT = 1883, 8883
_INT_OPTIONS = {"qos", "max_message_bytes", "keepalive", "max_queued"}
_BOOL_OPTIONS = {"tls", "check_finite", "retain", "clean_session"}
#: The client reconnects by itself after a lost connection, waiting from this many seconds up to the next.
RECONNECT_DELAY_S = (0.1, 5.0)


def parse_uri(uri: str) -> tuple[str, int, str, dict[str, Any]]:
    """``(host, port, topic, options)`` of an ``mqtt://`` URI, query options converted to their types.

    >>> parse_uri("mqtt://127.0.0.1:1884/plant/+/temp?qos=1&tls=0")
    ('127.0.0.1', 1884, 'plant/+/temp', {'qos': 1, 'tls': False})
    >>> parse_uri("mqtt://bob:s3cret@broker/sensors/#")
    ('broker', 1883, 'sensors/#', {'username': 'bob', 'password': 's3cret'})
    """
    rest = uri.split(":", 1)[1]
    if not rest.startswith("//"):
        raise ValueError(f"{uri!r}: write mqtt://HOST:PORT/TOPIC")
    authority, _, path = rest[2:].partition("/")
    topic, _, query = path.partition("?")
    topic = unquote(topic)
    options: dict[str, Any] = {}
    credentials, at, hostport = authority.rpartition("@")
    if at:
        user, colon, password = credentials.partition(":")
        options["username"] = unquote(user)
        if colon:
            options["password"] = unquote(password)
    host, colon, port = hostport.rpartition(":") if not hostport.endswith("]") else (hostport, "", "")
    if not colon:
        host, port = hostport, ""
    host = host.strip("[]")
    if not host or not topic:
        raise ValueError(f"{uri!r} needs a host and a topic; e.g. mqtt://127.0.0.1:1883/sensors/#")
    options.update(query_options(query, _INT_OPTIONS, _BOOL_OPTIONS))
    default = DEFAULT_TLS_PORT if options.get("tls") else DEFAULT_PORT
    return host, int(port) if port else default, topic, options


def connect(host: str, port: int, client_id: str, *, clean_session: bool = False, manual_ack: bool = False,
            username: str | None = None, password: str | None = None, tls: bool = False,
            tls_ca: str | None = None, keepalive: int = 30, max_queued: int = 0, on_connect: Any = None,
            on_disconnect: Any = None, on_message: Any = None) -> Any:
    """A started client (MQTT 3.1.1): it connects in the background, and reconnects by itself when the connection
    is lost, so that a broker away at start-up or later is never fatal. ``max_queued``: the most messages it holds
    for publishing (0: no limit)."""
    try:
        from paho.mqtt.client import CallbackAPIVersion, Client
    except ImportError:
        raise ImportError("mqtt:// needs the paho-mqtt client: pip install 'streammas[mqtt]'") from None
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                    manual_ack=manual_ack)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(*RECONNECT_DELAY_S)
    client.max_queued_messages_set(max_queued)
    client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
    client.connect_async(host, port, keepalive=keepalive)
    client.loop_start()
    return client
