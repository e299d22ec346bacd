"""The server side without I/O: stateless cookies, demultiplexing by connection id, per-address
and total limits, and migration of a connection to a new address.

Before a client's cookie checks out the server keeps nothing about it, and every answer it
sends to an address it has not validated is no larger than the datagram that caused it
(COOKIE <= HELLO, ACCEPT <= CONNECT, RESET and CHALLENGE <= what they answer), so it can be
used neither to exhaust memory nor to amplify a reflection attack.

A datagram for a known connection id from another address than the connection's is not
trusted (anyone on the path can copy a connection id): it is dropped and answered with a
CHALLENGE to the new address. The connection moves only when a RESUME from that address
carries both the challenge nonce (the client receives there) and the resume token (it is the
client), and then the token rotates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeAlias

from .handshake import CookieIssuer
from .reliability import CLOSED, ReliableConnection, UdpSettings
from .wire import (
    CHALLENGE_SIZE,
    CID_SIZE,
    HANDSHAKE_MIN_SIZE,
    MAGIC,
    Accept,
    Ack,
    Close,
    Connect,
    ConnectionDatagram,
    Cookie,
    Data,
    Hello,
    Ping,
    Resume,
    encode_challenge,
    encode_cookie,
    encode_reset,
    parse_untrusted,
)

__all__ = ["ConnectionMigrated", "NewConnection", "ServerEvent", "ServerStats", "UdpServer"]

log = logging.getLogger("mqttv5.transport.udp")


@dataclass(slots=True)
class NewConnection:
    """A client's CONNECT checked out: ``conn`` is new, at ``addr``."""

    conn: ReliableConnection
    addr: Hashable


@dataclass(slots=True)
class ConnectionMigrated:
    """``conn`` moved from ``old`` to ``new`` (CHALLENGE and RESUME checked out)."""

    conn: ReliableConnection
    old: Hashable
    new: Hashable


ServerEvent: TypeAlias = NewConnection | ConnectionMigrated


@dataclass(slots=True)
class ServerStats:
    """Counters of a :class:`UdpServer` (connections keep their own in ``conn.stats``)."""

    datagrams_received: int = 0
    datagrams_dropped: int = 0  # total; by cause in drops_by_cause
    drops_by_cause: dict[str, int] = field(default_factory=dict)
    cookies_sent: int = 0
    cookies_rejected: int = 0
    connections_created: int = 0
    connections_refused: int = 0
    challenges_sent: int = 0
    resets_sent: int = 0
    migrations: int = 0


def _host(addr: Hashable) -> Hashable:
    """What per-address limits count by: the host of a (host, port, ...) tuple."""
    return addr[0] if isinstance(addr, tuple) and addr else addr


class UdpServer:
    """Stateless cookie check, demultiplexing by connection id, per-address limits, migration.

    Feed every datagram to :meth:`datagram_received`; send :meth:`datagrams_to_send` (the
    server's own stateless replies) and, for the connection it returned, that connection's
    ``datagrams_to_send(now)`` to :meth:`address_of` it; act on :meth:`events_received`.

    Args:
        settings: the settings of every connection.
        secret: master secret of cookies and challenges (at least 16 bytes); random when None.
            Servers that share a socket address through a load balancer share it.
        max_connections: connections at once; a CONNECT beyond it gets a RESET.
        max_connections_per_address: connections at once from one host (the first element of
            a tuple address); a CONNECT beyond it gets a RESET.
        rng: source of connection ids, tokens and (when ``secret`` is None) the secret.

    Raises:
        ValueError: invalid settings, a short secret, or a limit below 1.
    """

    def __init__(
        self,
        settings: UdpSettings,
        *,
        secret: bytes | None = None,
        max_connections: int = 10_000,
        max_connections_per_address: int = 64,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        settings.validate()
        if max_connections < 1:
            raise ValueError("max_connections: must be >= 1")
        if max_connections_per_address < 1:
            raise ValueError("max_connections_per_address: must be >= 1")
        self.settings = settings
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self._rng = rng
        self._issuer = CookieIssuer(secret if secret is not None else rng(32))
        self._by_cid: dict[bytes, ReliableConnection] = {}
        self._per_host: dict[Hashable, int] = {}
        self._setup: dict[tuple[Hashable, bytes], ReliableConnection] = {}  # (addr, nonce)
        self._setup_key: dict[ReliableConnection, tuple[Hashable, bytes]] = {}
        self._replies: list[tuple[bytes, Hashable]] = []
        self._events: list[ServerEvent] = []
        self.stats = ServerStats()

    # --- public API --------------------------------------------------------------------------

    def datagram_received(
        self, data: bytes, addr: Hashable, now: float
    ) -> ReliableConnection | None:
        """Take one datagram from ``addr``. Never raises; anything bad is dropped and counted.

        Returns:
            The connection it was for (then call its ``datagrams_to_send(now)`` and
            ``events_received()``), or None when it was dropped or was set-up traffic that
            created nothing. Then call :meth:`datagrams_to_send` and :meth:`events_received`.
        """
        self.stats.datagrams_received += 1
        if len(data) < 2 or data[0] != MAGIC:
            self._drop("bad magic")
            return None
        datagram = parse_untrusted(data)
        match datagram:
            case None:
                self._drop("malformed")
            case Hello():
                self._hello(datagram, len(data), addr, now)
            case Connect():
                return self._connect(datagram, len(data), addr, now)
            case Resume():
                return self._resume(datagram, len(data), addr, now)
            case Cookie() | Accept():
                self._drop("unexpected")
            case _:
                return self._for_connection(datagram, len(data), addr, now)
        return None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Hashable]]:
        """The server's stateless replies (COOKIE, CHALLENGE, RESET) with their addresses.

        Each connection's own datagrams come from its ``datagrams_to_send(now)`` and go to
        :meth:`address_of` it.
        """
        replies, self._replies = self._replies, []
        return replies

    def events_received(self) -> list[ServerEvent]:
        """New connections and migrations since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def address_of(self, conn: ReliableConnection) -> Hashable:
        """The connection's current address (still answered after :meth:`forget`)."""
        return conn.peer_address

    def forget(self, conn: ReliableConnection) -> None:
        """Drop a connection (after its ``ConnectionTerminated``). Idempotent.

        Its connection id is then unknown: a later datagram for it gets a RESET.
        """
        cid = conn.connection_id
        if cid is None or self._by_cid.get(cid) is not conn:
            return
        del self._by_cid[cid]
        self._release_host(conn.peer_address)
        key = self._setup_key.pop(conn, None)
        if key is not None:
            self._setup.pop(key, None)

    def connections(self) -> int:
        """Connections the server knows (not yet forgotten)."""
        return len(self._by_cid)

    # --- set-up ------------------------------------------------------------------------------

    def _hello(self, d: Hello, size: int, addr: Hashable, now: float) -> None:
        if size < HANDSHAKE_MIN_SIZE:
            self._drop("short hello")  # an answer could amplify
            return
        self._send_cookie(d.nonce, addr, now)

    def _send_cookie(self, nonce: bytes, addr: Hashable, now: float) -> None:
        self._replies.append((encode_cookie(nonce, self._issuer.cookie(nonce, addr, now)), addr))
        self.stats.cookies_sent += 1

    def _connect(
        self, d: Connect, size: int, addr: Hashable, now: float
    ) -> ReliableConnection | None:
        if size < HANDSHAKE_MIN_SIZE:
            self._drop("short connect")
            return None
        existing = self._setup.get((addr, d.nonce))
        if existing is not None:  # ACCEPT was lost: answer the retransmitted CONNECT again
            existing._resend_accept()
            return existing
        if not self._issuer.check_cookie(d.cookie, d.nonce, addr, now):
            self.stats.cookies_rejected += 1
            self._drop("bad cookie")
            self._send_cookie(d.nonce, addr, now)  # an expired cookie: here is a fresh one
            return None
        host = _host(addr)
        if len(self._by_cid) >= self.max_connections:
            self._refuse(d.nonce, addr, "too many connections")
            return None
        if self._per_host.get(host, 0) >= self.max_connections_per_address:
            self._refuse(d.nonce, addr, "too many connections from address")
            return None
        cid = self._rng(CID_SIZE)
        while len(cid) != CID_SIZE or cid in self._by_cid:
            cid = self._rng(CID_SIZE)
        conn = ReliableConnection._accepted(self.settings, now, d, cid, self._rng)
        conn.peer_address = addr
        self._by_cid[cid] = conn
        self._per_host[host] = self._per_host.get(host, 0) + 1
        self._setup[(addr, d.nonce)] = conn
        self._setup_key[conn] = (addr, d.nonce)
        self.stats.connections_created += 1
        self._events.append(NewConnection(conn, addr))
        log.debug("= UDP connection %s from %s", cid.hex(), addr)
        return conn

    def _refuse(self, nonce: bytes, addr: Hashable, cause: str) -> None:
        self._drop(cause)
        self.stats.connections_refused += 1
        self._reset(nonce, addr)  # RESET with the nonce: the client fails at once

    # --- established connections -------------------------------------------------------------

    def _for_connection(
        self, d: ConnectionDatagram, size: int, addr: Hashable, now: float
    ) -> ReliableConnection | None:
        cid = d.connection_id
        conn = self._by_cid.get(cid)
        if conn is None:
            self._drop("unknown connection")
            if isinstance(d, Data | Ack | Ping | Close):  # what a client sends; never a loop
                self._reset(cid, addr)
            return None
        if addr != conn.peer_address:
            self._drop("unvalidated address")
            self._challenge(conn, cid, size, addr, now)
            return None
        conn._stats.datagrams_received += 1
        conn._receive(d, now)
        return conn

    def _challenge(
        self, conn: ReliableConnection, cid: bytes, size: int, addr: Hashable, now: float
    ) -> None:
        if size < CHALLENGE_SIZE or conn.state is CLOSED:
            return  # a CHALLENGE would be larger than what it answers
        nonce = self._issuer.challenge(cid, addr, now)
        self._replies.append((encode_challenge(cid, nonce), addr))
        self.stats.challenges_sent += 1

    def _resume(
        self, d: Resume, size: int, addr: Hashable, now: float
    ) -> ReliableConnection | None:
        cid = d.connection_id
        conn = self._by_cid.get(cid)
        if conn is None:
            self._drop("unknown connection")
            self._reset(cid, addr)
            return None
        if conn.state is CLOSED:
            self._drop("closed")
            return None
        match = conn._token_matches(d.token)
        if not match:
            self._drop("bad token")
            return None
        old = conn.peer_address
        if addr == old:
            conn._resumed(now, rotate=match == 2)
            return conn
        if not self._issuer.check_challenge(d.nonce, cid, addr, now):
            self._drop("unvalidated address")
            self._challenge(conn, cid, size, addr, now)  # prove you receive there first
            return None
        new_host, old_host = _host(addr), _host(old)
        if new_host != old_host:
            if self._per_host.get(new_host, 0) >= self.max_connections_per_address:
                self._drop("too many connections from address")
                return None
            self._release_host(old)
            self._per_host[new_host] = self._per_host.get(new_host, 0) + 1
        conn.peer_address = addr
        self.stats.migrations += 1
        conn._resumed(now, rotate=match == 2, old=old, new=addr)
        self._events.append(ConnectionMigrated(conn, old, addr))
        log.debug("= UDP connection %s moved from %s to %s", cid.hex(), old, addr)
        return conn

    # --- helpers -----------------------------------------------------------------------------

    def _reset(self, connection_id: bytes, addr: Hashable) -> None:
        # Every caller answers a parsed datagram, and none is shorter than a RESET.
        self._replies.append((encode_reset(connection_id), addr))
        self.stats.resets_sent += 1

    def _release_host(self, addr: Hashable) -> None:
        host = _host(addr)
        count = self._per_host.get(host, 0) - 1
        if count > 0:
            self._per_host[host] = count
        else:
            self._per_host.pop(host, None)

    def _drop(self, cause: str) -> None:
        stats = self.stats
        stats.datagrams_dropped += 1
        stats.drops_by_cause[cause] = stats.drops_by_cause.get(cause, 0) + 1
