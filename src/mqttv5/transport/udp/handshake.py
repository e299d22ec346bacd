"""Connection set-up and path validation: stateless cookies, challenges, the client's handshake.

Server side, :class:`CookieIssuer` holds no per-peer state. A cookie is an HMAC over the
client's nonce and its address, keyed by a secret that changes every :data:`EPOCH` seconds; a
cookie from the current or the previous epoch is accepted (so it lives 30 to 60 s). A
challenge nonce for a connection that shows up at a new address is made the same way, so
answering it proves the client receives datagrams at that address.

Client side, :class:`ClientHandshake` walks HELLO -> COOKIE -> CONNECT -> ACCEPT -> confirmed,
retransmitting its current datagram with exponential backoff until the next step arrives or
the handshake timeout passes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Hashable
from enum import IntEnum
from typing import Final

from .wire import (
    COOKIE_SIZE,
    NONCE_SIZE,
    PeerParameters,
    encode_connect,
    encode_hello,
    encode_ping,
)

__all__ = ["EPOCH", "ClientHandshake", "CookieIssuer", "HandshakePhase"]

#: Seconds per secret epoch; cookies and challenges of this and the previous epoch are valid.
EPOCH: Final = 30.0


class CookieIssuer:
    """Makes and checks cookies and challenge nonces; stateless per peer.

    Args:
        secret: the master secret (at least 16 bytes). Each epoch's key is
            ``HMAC-SHA256(secret, "mqttv5-udp epoch" || epoch as signed 64-bit)``, so the key
            rotates every :data:`EPOCH` seconds and a leaked epoch key says nothing of the next.
    """

    __slots__ = ("_keys", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("secret: at least 16 bytes")
        self._secret = secret
        self._keys: dict[int, bytes] = {}

    def _key(self, epoch: int) -> bytes:
        key = self._keys.get(epoch)
        if key is None:
            if len(self._keys) >= 4:  # keep the few epochs in use
                for old in sorted(self._keys)[:-2]:
                    del self._keys[old]
            label = b"mqttv5-udp epoch" + epoch.to_bytes(8, "big", signed=True)
            key = hmac.new(self._secret, label, hashlib.sha256).digest()
            self._keys[epoch] = key
        return key

    @staticmethod
    def _epoch(now: float) -> int:
        return math.floor(now / EPOCH)

    def _mac(self, epoch: int, label: bytes, *parts: bytes) -> bytes:
        return hmac.new(self._key(epoch), label + b"".join(parts), hashlib.sha256).digest()

    def cookie(self, nonce: bytes, addr: Hashable, now: float) -> bytes:
        """The cookie for a HELLO with ``nonce`` from ``addr``."""
        mac = self._mac(self._epoch(now), b"cookie", nonce, _addr(addr))
        return mac[:COOKIE_SIZE]

    def check_cookie(self, cookie: bytes, nonce: bytes, addr: Hashable, now: float) -> bool:
        """Whether ``cookie`` was made for ``nonce`` and ``addr`` in this or the last epoch."""
        epoch = self._epoch(now)
        where = _addr(addr)
        return any(
            hmac.compare_digest(cookie, self._mac(e, b"cookie", nonce, where)[:COOKIE_SIZE])
            for e in (epoch, epoch - 1)
        )

    def challenge(self, connection_id: bytes, addr: Hashable, now: float) -> bytes:
        """The challenge nonce for ``connection_id`` at ``addr``."""
        mac = self._mac(self._epoch(now), b"challenge", connection_id, _addr(addr))
        return mac[:NONCE_SIZE]

    def check_challenge(
        self, nonce: bytes, connection_id: bytes, addr: Hashable, now: float
    ) -> bool:
        """Whether ``nonce`` answers a challenge sent to ``addr`` in this or the last epoch."""
        epoch = self._epoch(now)
        where = _addr(addr)
        return any(
            hmac.compare_digest(
                nonce, self._mac(e, b"challenge", connection_id, where)[:NONCE_SIZE]
            )
            for e in (epoch, epoch - 1)
        )


def _addr(addr: Hashable) -> bytes:
    # Addresses are opaque to this layer; their repr binds a cookie to (host, port, ...).
    return repr(addr).encode("utf-8", "backslashreplace")


class HandshakePhase(IntEnum):
    """Where a client's set-up stands."""

    HELLO = 0  # sending HELLO, waiting for COOKIE
    CONNECT = 1  # sending CONNECT with the cookie, waiting for ACCEPT
    CONFIRM = 2  # accepted; sending PING until the server shows it heard us
    DONE = 3


class ClientHandshake:
    """The client's set-up: its current datagram, retransmission timer and deadline.

    Args:
        nonce: 8 random bytes naming this attempt.
        params: what the client advertises in CONNECT.
        now: the current time.
        rto: the first retransmission timeout (doubles on each retransmission).
        rto_max: the largest retransmission timeout.
        timeout: seconds from now until the handshake has failed.
    """

    __slots__ = (
        "_datagram",
        "_rto_max",
        "_sent_at",
        "_transmissions",
        "cookie",
        "deadline",
        "nonce",
        "params",
        "phase",
        "retransmit_at",
        "rto",
    )

    def __init__(
        self,
        nonce: bytes,
        params: PeerParameters,
        now: float,
        rto: float,
        rto_max: float,
        timeout: float,
    ) -> None:
        self.nonce = nonce
        self.params = params
        self.phase = HandshakePhase.HELLO
        self.cookie = b""
        self.deadline = now + timeout
        self.rto = rto  # the caller lowers it once it has an RTT sample
        self._rto_max = rto_max
        self._datagram = encode_hello(nonce)
        self._transmissions = 0
        self._sent_at = now
        self.retransmit_at: float | None = now  # due at once

    def datagram_due(self, now: float) -> bytes | None:
        """The datagram to (re)send now, if one is due; arms the next retransmission."""
        if self.retransmit_at is None or now < self.retransmit_at:
            return None
        backoff = self.rto * (1 << min(self._transmissions, 30))
        self._transmissions += 1
        self._sent_at = now
        self.retransmit_at = now + min(backoff, self._rto_max)
        return self._datagram

    def _next(self, phase: HandshakePhase, datagram: bytes, now: float) -> float | None:
        """Move to ``phase``; return an RTT sample if the answered datagram was sent once."""
        sample = now - self._sent_at if self._transmissions == 1 else None
        self.phase = phase
        self._datagram = datagram
        self._transmissions = 0
        self.retransmit_at = now
        return sample

    def on_cookie(self, cookie: bytes, now: float) -> float | None:
        """A COOKIE for our nonce: send CONNECT with it. Returns an RTT sample, if any."""
        if self.phase > HandshakePhase.CONNECT:
            return None
        if self.phase == HandshakePhase.CONNECT and cookie == self.cookie:
            return None  # a duplicate
        self.cookie = cookie
        return self._next(
            HandshakePhase.CONNECT, encode_connect(self.nonce, cookie, self.params), now
        )

    def on_accept(self, connection_id: bytes, now: float) -> float | None:
        """ACCEPT: confirm with PINGs until the server answers. Returns an RTT sample, if any."""
        return self._next(HandshakePhase.CONFIRM, encode_ping(connection_id), now)

    def on_confirmed(self) -> None:
        """The server sent something on the connection: set-up is over."""
        self.phase = HandshakePhase.DONE
        self.retransmit_at = None
