"""One registry from URL scheme to stream opener.

``mqtt://host:1883`` and ``tcp://host:1883`` open a TCP stream, ``mqtts://host:8883`` (alias
``ssl://``) a TLS stream, ``ws://host:8080/mqtt`` and ``wss://host:8443/mqtt`` a WebSocket
stream (the path defaults to ``/mqtt``; needs the ``websockets`` package), ``mqtt-udp://host:1884``
MQTT over UDP with the reliability layer of docs/udp.md, and ``mqtts-dtls://host:8884`` the same
over DTLS 1.2 (needs ``python-mbedtls``).

TLS settings (:class:`~mqttv5.transport.tls.TlsConfig`) reach the opener in
:attr:`Endpoint.tls`: ``open_url(url, tls=...)`` sets it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, unquote, urlsplit

from ..protocol.errors import MqttError
from .base import Stream
from .tcp import open_tcp
from .tls import TlsConfig, open_tls

if TYPE_CHECKING:
    from .dtls import DtlsClientSettings
    from .udp.reliability import UdpSettings

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
    dtls: DtlsClientSettings | None = field(default=None, compare=False)
    udp: UdpSettings | None = field(default=None, compare=False)

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
    url: str | Endpoint,
    *,
    connect_timeout: float | None = 10.0,
    tls: TlsConfig | None = None,
    dtls: DtlsClientSettings | None = None,
    udp: UdpSettings | None = None,
) -> Stream:
    """Open a stream to ``url`` with the transport its scheme is registered to.

    Args:
        url: the broker URL (or a parsed :class:`Endpoint`).
        connect_timeout: seconds for the connection (and the TLS and WebSocket handshakes).
        tls: TLS settings; only for a TLS scheme (``mqtts://``, ``wss://``, and
            ``mqtts-dtls://``, where its CA and certificate files apply): with ``mqtt://`` they
            would silently not apply, so that is an error.
        dtls: DTLS settings (PSK or certificates) for ``mqtts-dtls://``; they win over ``tls``.
        udp: reliability settings (``mtu``, ``rto_min`` ...) for ``mqtt-udp://`` and
            ``mqtts-dtls://``.

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
    if dtls is not None or udp is not None:
        if endpoint.scheme not in _OPENERS_UDP:
            what = "DTLS" if dtls is not None else "UDP"
            raise MqttError(f"{what} settings given for {endpoint}, which does not use UDP")
        if dtls is not None and endpoint.scheme != "mqtts-dtls":
            raise MqttError(f"DTLS settings given for {endpoint}: use mqtts-dtls://")
        endpoint = dataclasses.replace(endpoint, dtls=dtls, udp=udp)
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


async def _open_udp(endpoint: Endpoint, connect_timeout: float | None) -> Stream:
    from .udp.endpoint import open_udp

    dtls = None
    if endpoint.scheme == "mqtts-dtls":
        dtls = endpoint.dtls or _dtls_from_tls(endpoint)
    return await open_udp(
        endpoint.host,
        endpoint.port,
        settings=endpoint.udp,
        dtls=dtls,
        connect_timeout=connect_timeout,
    )


def _dtls_from_tls(endpoint: Endpoint) -> DtlsClientSettings:
    """DTLS with certificates, from the TLS settings (CA, client certificate, host name)."""
    try:
        from .dtls import DtlsClientSettings
    except ImportError as exc:
        raise MqttError("mqtts-dtls:// needs python-mbedtls: pip install 'mqttv5[dtls]'") from exc
    tls = endpoint.tls or TlsConfig()
    if tls.ca_file is None:
        raise MqttError(
            "mqtts-dtls:// needs a PSK (psk_identity and psk) or a CA file to verify the server"
        )
    return DtlsClientSettings(
        cafile=tls.ca_file,
        certfile=tls.cert_file,
        keyfile=tls.key_file,
        server_hostname=None if tls.insecure else (tls.server_hostname or endpoint.host),
    )


register_scheme("mqtt", _open_tcp, 1883)
register_scheme("tcp", _open_tcp, 1883)
register_scheme("mqtts", _open_tls, 8883)
register_scheme("ssl", _open_tls, 8883)
register_scheme("ws", _open_websocket, 8080)
register_scheme("wss", _open_websocket, 8443)
register_scheme("mqtt-udp", _open_udp, 1884)
register_scheme("mqtts-dtls", _open_udp, 8884)
_OPENERS_UDP: Final = frozenset({"mqtt-udp", "mqtts-dtls"})
