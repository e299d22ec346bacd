"""What a DTLS server or client reports through ``events_received()``."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["DtlsEvent", "HandshakeComplete", "HandshakeFailed", "PeerClosed"]


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The handshake with ``addr`` is over: application records flow both ways.

    Attributes:
        addr: the peer's address (None on the client).
        identity: who the client proved to be (server side): its PSK identity, or the last
            Common Name of its verified certificate's subject; None otherwise (and always on
            the client). The broker makes it the MQTT user name.
        peer_certificate: the peer's verified certificate in the shape of
            :meth:`ssl.SSLSocket.getpeercert` (``subject``, ``issuer``, ``notAfter`` ...), or
            None (PSK, or no certificate).
    """

    addr: Hashable | None
    identity: str | None
    peer_certificate: dict[str, object] | None


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake with ``addr`` failed or timed out; its state is gone.

    Attributes:
        addr: the peer's address (None on the client).
        reason: one sentence naming the cause ("unknown PSK identity", "server certificate not
            trusted", "handshake timed out" ...).
    """

    addr: Hashable | None
    reason: str


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer ended an established association (close_notify, or a fatal alert); its state
    is gone. A new handshake from the same address starts afresh.

    Attributes:
        addr: the peer's address (None on the client).
    """

    addr: Hashable | None


DtlsEvent = HandshakeComplete | HandshakeFailed | PeerClosed
