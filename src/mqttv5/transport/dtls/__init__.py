"""DTLS 1.2 for MQTT over UDP, on python-mbedtls (sans-I/O).

Layering, outermost first: UDP -> DTLS -> the reliability/fragment header -> MQTT bytes. One
plaintext datagram of the layer above is one DTLS application record is one UDP datagram.

:class:`DtlsServer` serves every peer of a listener (demultiplexed by address, stateless
cookie first, handshakes bounded); :class:`DtlsClient` talks to one server. Both take bytes
and ``now`` and return bytes, events and deadlines: the asyncio glue owns the socket and the
timer. python-mbedtls is imported only when one of them is made; without it they raise
:class:`DtlsUnavailable` ("DTLS needs python-mbedtls: pip install 'mqttv5[dtls]'").

See docs/dtls.md for the library choice, PSK files, certificates and limits.
"""

from __future__ import annotations

from .client import DtlsClient
from .engine import MISSING_MBEDTLS, RECORD_OVERHEAD, DtlsError, DtlsUnavailable
from .events import DtlsEvent, HandshakeComplete, HandshakeFailed, PeerClosed
from .server import DtlsServer
from .settings import DEFAULT_MTU, DtlsClientSettings, DtlsServerSettings, load_psk_file

__all__ = [
    "DEFAULT_MTU",
    "MISSING_MBEDTLS",
    "RECORD_OVERHEAD",
    "DtlsClient",
    "DtlsClientSettings",
    "DtlsError",
    "DtlsEvent",
    "DtlsServer",
    "DtlsServerSettings",
    "DtlsUnavailable",
    "HandshakeComplete",
    "HandshakeFailed",
    "PeerClosed",
    "load_psk_file",
]
