"""One registry from URL scheme to stream opener.

``mqtt://host:1883`` and ``tcp://host:1883`` open a TCP stream now. ``mqtts://``, ``ws://``,
``wss://``, ``mqtt-udp://`` and ``mqtts-dtls://`` are registered as placeholders that raise a
clear :class:`~mqttv5.protocol.errors.MqttError` until their transport lands and calls
:func:`register_scheme` with a real opener.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

from ..protocol.errors import MqttError
from .base import Stream
from .tcp import open_tcp

__all__ = [
    "Endpoint",
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
    """

    scheme: str
    host: str
    port: int
    path: str = ""
    username: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)

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


async def open_url(url: str | Endpoint, *, connect_timeout: float | None = 10.0) -> Stream:
    """Open a stream to ``url`` with the transport its scheme is registered to.

    Raises:
        MqttError: unknown scheme, or a transport that is not available yet.
        TransportError: the connection attempt failed.
    """
    endpoint = parse_url(url) if isinstance(url, str) else url
    return await _OPENERS[endpoint.scheme](endpoint, connect_timeout)


async def _open_tcp(endpoint: Endpoint, connect_timeout: float | None) -> Stream:
    return await open_tcp(endpoint.host, endpoint.port, connect_timeout=connect_timeout)


def _placeholder(scheme: str, needs: str) -> Opener:
    async def opener(endpoint: Endpoint, connect_timeout: float | None) -> Stream:
        raise MqttError(f"scheme {scheme}:// needs {needs}, which is not available yet")

    return opener


register_scheme("mqtt", _open_tcp, 1883)
register_scheme("tcp", _open_tcp, 1883)
_PLACEHOLDERS: Final = (
    ("mqtts", "the TLS transport", 8883),
    ("ssl", "the TLS transport", 8883),
    ("ws", "the WebSocket transport", 8080),
    ("wss", "the WebSocket transport over TLS", 8443),
    ("mqtt-udp", "the UDP transport", 1884),
    ("mqtts-dtls", "the DTLS transport", 8884),
)
for _scheme, _needs, _port in _PLACEHOLDERS:
    register_scheme(_scheme, _placeholder(_scheme, _needs), _port)
