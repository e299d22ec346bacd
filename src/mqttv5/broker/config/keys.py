"""Constants, and the declaration table every configuration key is built with (``_key``),
with the small value checks the keys share."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

_T = TypeVar("_T")

#: Default port of each listener type (IANA: 1883 MQTT, 8883 MQTT over TLS).
DEFAULT_PORTS: Final[Mapping[str, int]] = {
    "tcp": 1883,
    "tls": 8883,
    "ws": 8080,
    "wss": 8443,
    "udp": 1884,
    "dtls": 8884,
}
LISTENER_TYPES: Final[tuple[str, ...]] = tuple(DEFAULT_PORTS)
#: Listener types that speak TLS (need ``certfile`` and ``keyfile``).
TLS_LISTENER_TYPES: Final[frozenset[str]] = frozenset({"tls", "wss"})
#: Listener types that speak UDP (the reliability layer of docs/udp.md).
UDP_LISTENER_TYPES: Final[frozenset[str]] = frozenset({"udp", "dtls"})
#: Listener types that speak WebSocket.
WS_LISTENER_TYPES: Final[frozenset[str]] = frozenset({"ws", "wss"})
#: Minimum TLS versions ``tls_version`` may name.
TLS_VERSIONS: Final[tuple[str, ...]] = ("tlsv1.2", "tlsv1.3")

# Largest packet MQTT can frame: 1 byte of fixed header, a 4-byte Remaining Length, and
# 268,435,455 bytes of remaining length (MQTT 5.0 section 2.1.4).
_MAX_PACKET: Final = 268_435_460
_U16: Final = 65_535
_U32: Final = 4_294_967_295
_PORT_BY_TYPE: Final = -1  # sentinel: "the default port of this listener's type"


# --- the declaration table ------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """What the loader, the validator and the reference know about one configuration key.

    Attributes:
        doc: description for the reference (Markdown; one paragraph).
        minimum: smallest allowed number (inclusive), if any.
        maximum: largest allowed number (inclusive), if any.
        above: exclusive lower bound for numbers that must be positive (timeouts).
        choices: the allowed strings of an enumerated setting.
        check: extra rule; returns an error message or None.
        default_doc: how the reference shows the default when the literal would mislead.
        rule_doc: how the reference shows the allowed values when ``check`` is used.
    """

    doc: str
    minimum: int | None = None
    maximum: int | None = None
    above: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None
    default_doc: str | None = None
    rule_doc: str | None = None


def _key(default: _T, doc: str, **rules: Any) -> _T:
    """Declare a setting with a default: ``field(default=...)`` plus its :class:`KeySpec`."""
    return field(default=default, metadata={"spec": KeySpec(doc, **rules)})


def _spec(doc: str, **rules: Any) -> dict[str, KeySpec]:
    """The ``metadata`` of a list-valued setting, declared with ``field(default_factory=...)``."""
    return {"spec": KeySpec(doc, **rules)}


def _unlimited_or_positive(value: int) -> str | None:
    return None if value == -1 or value >= 1 else "must be -1 (unlimited) or at least 1"


def _protocol_versions(value: list[int]) -> str | None:
    if not value:
        return "must list at least one protocol version"
    return None if set(value) <= {3, 4, 5} else "must contain only 3, 4 and 5"


def _no_nul(value: str) -> str | None:
    # [MQTT-1.5.4-2] a UTF-8 string never contains U+0000; an id built from this would be malformed.
    return "must not contain U+0000" if "\x00" in value else None


def _host(value: str) -> str | None:
    if not value or value != value.strip() or any(c.isspace() for c in value):
        return "must be an IP address or host name (e.g. 127.0.0.1, ::, localhost)"
    return None


def _mount_point(value: str) -> str | None:
    if any(c in value for c in "+#\x00"):
        return "must not contain the wildcards + or # (or U+0000)"
    return None


def _alpn(value: list[str]) -> str | None:
    for name in value:
        if not 0 < len(name.encode()) <= 255:
            return "each protocol name must be 1 to 255 bytes"
    return None


def _subprotocols(value: list[str]) -> str | None:
    if not value:
        return 'must list at least one subprotocol (e.g. ["mqtt"])'
    if any(not name or any(c.isspace() or c == "," for c in name) for name in value):
        return "must be tokens without spaces or commas"
    return None


def _networks(value: list[str]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or network (e.g. 10.0.0.1, 10.0.0.0/8, ::1)"
    return None


def _ws_path(value: str) -> str | None:
    return None if value == "" or value.startswith("/") else 'must be empty or start with "/"'


_PROTOCOL_DOC = "3 = MQTT 3.1, 4 = MQTT 3.1.1, 5 = MQTT 5.0"
