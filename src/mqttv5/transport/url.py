"""One registry from URL scheme to stream opener.

``mqtt://host:1883`` and ``tcp://host:1883`` open a TCP stream, ``mqtts://host:8883`` (alias
``ssl://``) a TLS stream, ``ws://host:8080/mqtt`` and ``wss://host:8443/mqtt`` a WebSocket
stream (the path defaults to ``/mqtt``; needs the ``websockets`` package). ``mqtt-udp://`` and
``mqtts-dtls://`` are registered as placeholders that raise a clear
:class:`~mqttv5.protocol.errors.MqttError` until their transport lands and calls
:func:`register_scheme` with a real opener.

TLS settings (:class:`~mqttv5.transport.tls.TlsConfig`) reach the opener in
:attr:`Endpoint.tls`: ``open_url(url, tls=...)`` sets it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

from ..protocol.errors import MqttError
from .base import Stream
from .tcp import open_tcp
from .tls import TlsConfig, open_tls

__all__ = [
    "Endpoint",
    "TLS_SCHEMES",
    "Opener",
    "open_url",
    "parse_url",
    "register_scheme",
    "registered_schemes",
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed broker URL.

    Attributes:
        scheme: lower-case scheme (``mqtt``, ``tcp``, ``mqtts`` ...).
        host: host name or address (IPv6 without brackets).
        port: the port, or the scheme's default.
        path: the path (WebSocket transports use it; ``/mqtt`` by default there).
        username: user name embedded in the URL, if any.
        password: password embedded in the URL, if any.
        query: query parameters (last value wins).
        tls: TLS settings for ``mqtts://`` and ``wss://`` (None: verify the server against the
            system's CAs, no client certificate).
    """

    scheme: str
    host: str
    port: int
    path: str = ""
    username: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    tls: TlsConfig | None = field(default=None, compare=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


Opener = Callable[[Endpoint, float | None], Awaitable[Stream]]
"""``opener(endpoint, connect_timeout) -> Stream``: opens one connection."""

_OPENERS: dict[str, Opener] = {}
_DEFAULT_PORTS: dict[str, int] = {}


def register_scheme(scheme: str, opener: Opener, default_port: int) -> None:
    """Make ``scheme://`` URLs open with ``opener`` (replaces any earlier registration)."""
    _OPENERS[scheme.lower()] = opener
    _DEFAULT_PORTS[scheme.lower()] = default_port


def registered_schemes() -> list[str]:
    """The schemes :func:`open_url` knows (placeholders included)."""
    return sorted(_OPENERS)


def parse_url(url: str) -> Endpoint:
    """Parse ``scheme://[user[:password]@]host[:port][/path][?query]``.

    A bare ``host`` or ``host:port`` means ``mqtt://``.

    Raises:
        MqttError: the URL is malformed or its scheme is unknown.
    """
    if "://" not in url:
        url = "mqtt://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MqttError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _OPENERS:
        known = ", ".join(f"{s}://" for s in registered_schemes())
        raise MqttError(f"unknown URL scheme {scheme!r} in {url!r} (known: {known})")
    host = parts.hostname or "localhost"
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return Endpoint(
        scheme,
        host,
        port if port is not None else _DEFAULT_PORTS[scheme],
        parts.path,
        unquote(parts.username) if parts.username is not None else None,
        unquote(parts.password) if parts.password is not None else None,
        query,
    )


#: Schemes whose transport uses TLS (the ones ``tls`` settings apply to).
TLS_SCHEMES: Final = frozenset({"mqtts", "ssl", "wss", "mqtts-dtls"})


async def open_url(
    url: str | Endpoint, *, connect_timeout: float | None = 10.0, tls: TlsConfig | None = None
) -> Stream:
    """Open a stream to ``url`` with the transport its scheme is registered to.

    Args:
        url: the broker URL (or a parsed :class:`Endpoint`).
        connect_timeout: seconds for the connection (and the TLS and WebSocket handshakes).
        tls: TLS settings; only for a TLS scheme (``mqtts://``, ``wss://``): with ``mqtt://``
            they would silently not apply, so that is an error.

    Raises:
        MqttError: unknown scheme, a transport that is not available yet, or ``tls`` with a
            scheme that does not use TLS.
        TransportError: the connection attempt failed (:class:`~.base.TlsError` for the TLS
            handshake, :class:`~.base.WebSocketError` for the WebSocket upgrade).
    """
    endpoint = parse_url(url) if isinstance(url, str) else url
    if tls is not None:
        if endpoint.scheme not in TLS_SCHEMES:
            raise MqttError(
                f"TLS settings given for {endpoint}, which does not use TLS: "
                "use mqtts:// (or wss://)"
            )
        endpoint = dataclasses.replace(endpoint, tls=tls)
    return await _OPENERS[endpoint.scheme](endpoint, connect_timeout)


async def _open_tcp(endpoint: Endpoint, connect_timeout: float | None) -> Stream:
    return await open_tcp(endpoint.host, endpoint.port, connect_timeout=connect_timeout)


async def _open_tls(endpoint: Endpoint, connect_timeout: float | None) -> Stream:
    return await open_tls(
        endpoint.host, endpoint.port, tls=endpoint.tls, connect_timeout=connect_timeout
    )


async def _open_websocket(endpoint: Endpoint, connect_timeout: float | None) -> Stream:
    try:
        from .websocket import DEFAULT_PATH, open_websocket
    except ImportError as exc:
        raise MqttError(
            f"scheme {endpoint.scheme}:// needs the websockets package: pip install 'mqttv5[ws]'"
        ) from exc
    path = endpoint.path or DEFAULT_PATH
    if endpoint.query:
        path += "?" + "&".join(f"{k}={v}" for k, v in endpoint.query.items())
    return await open_websocket(
        endpoint.host,
        endpoint.port,
        path,
        tls=endpoint.tls,
        secure=endpoint.scheme == "wss",
        connect_timeout=connect_timeout,
    )


def _placeholder(scheme: str, needs: str) -> Opener:
    async def opener(endpoint: Endpoint, connect_timeout: float | None) -> Stream:
        raise MqttError(f"scheme {scheme}:// needs {needs}, which is not available yet")

    return opener


register_scheme("mqtt", _open_tcp, 1883)
register_scheme("tcp", _open_tcp, 1883)
register_scheme("mqtts", _open_tls, 8883)
register_scheme("ssl", _open_tls, 8883)
register_scheme("ws", _open_websocket, 8080)
register_scheme("wss", _open_websocket, 8443)
_PLACEHOLDERS: Final = (
    ("mqtt-udp", "the UDP transport", 1884),
    ("mqtts-dtls", "the DTLS transport", 8884),
)
for _scheme, _needs, _port in _PLACEHOLDERS:
    register_scheme(_scheme, _placeholder(_scheme, _needs), _port)
