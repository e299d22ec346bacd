"""asyncio glue for MQTT over UDP and DTLS: one datagram socket, one timer per connection.

The sans-I/O layers (:mod:`.reliability`, :mod:`.server`, :mod:`mqttv5.transport.dtls`) do the
protocol work; this module moves their datagrams to and from a socket and presents each
reliable connection to the layer above as an ordinary :class:`asyncio.Transport`. The broker's
``ClientHandler`` and the client's stream are therefore the same code for TCP and UDP
(aioquic's ``QuicServer`` / ``QuicConnectionProtocol`` split, in miniature).

Outermost first: UDP socket -> DTLS (when used) -> reliability / fragment header -> MQTT bytes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from ..base import PeerInfo, TlsError, TransportError
from ..dtls.events import HandshakeComplete, HandshakeFailed, PeerClosed
from ..tcp import TcpStream, _StreamProtocol
from .reliability import (
    AddressMigrated,
    Connected,
    ConnectionTerminated,
    DataReceived,
    PathSuspect,
    ReliableConnection,
    UdpSettings,
)
from .server import ConnectionMigrated, NewConnection, UdpServer

if TYPE_CHECKING:
    from ..dtls import DtlsClient, DtlsClientSettings, DtlsServer

__all__ = ["ReliableTransport", "UdpClientEndpoint", "UdpServerEndpoint", "open_udp"]

log = logging.getLogger("mqttv5.transport.udp")

IPV4_MTU: Final = 1472  # largest UDP payload on a 1500-byte link: 1500 - 20 (IPv4) - 8 (UDP)
IPV6_MTU: Final = 1452  # 1500 - 40 (IPv6) - 8 (UDP)
_HIGH_WATER: Final = 1 << 20
_READ_LIMIT: Final = 1 << 20
_CLOSE_WAIT: Final = 5.0  # how long a graceful close may wait for the peer's acknowledgements


class _Endpoint(Protocol):
    """What a :class:`ReliableTransport` needs of the socket it lives on."""

    loop: asyncio.AbstractEventLoop

    def send_datagrams(self, transport: ReliableTransport, datagrams: list[bytes]) -> None:
        """Send a connection's datagrams to its peer."""

    def peer_of(self, transport: ReliableTransport) -> Hashable:
        """The peer's current address."""

    def sockname(self) -> Any:
        """The socket's own address."""

    def connected(self, transport: ReliableTransport) -> None:
        """The connection's set-up finished (client side)."""

    def path_suspect(self, transport: ReliableTransport) -> None:
        """The peer has gone quiet while data waits (client side: try RESUME)."""

    def terminated(self, transport: ReliableTransport) -> None:
        """The connection ended."""


class ReliableTransport(asyncio.Transport):
    """One reliable UDP connection as an :class:`asyncio.Transport`.

    ``write`` queues a message on the :class:`ReliableConnection` and sends what its congestion
    window allows at once; acknowledgements, retransmissions and keep-alives run on one
    ``loop.call_at`` timer per connection, re-armed only when the connection's deadline moves.
    Write flow control counts queued plus unacknowledged bytes. While reading is paused, the
    connection advertises a zero window and what still arrives is held here (acknowledgements
    of our own data still count, so a paused reader never stalls its own sending).
    """

    def __init__(
        self,
        endpoint: _Endpoint,
        conn: ReliableConnection,
        protocol: asyncio.Protocol,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)  # asyncio keeps it as self._extra
        self._endpoint = endpoint
        self.conn = conn
        self._protocol = protocol
        self._closing = False
        self._finished = False
        self._reading = True
        self._held: list[bytes] = []
        self._high = _HIGH_WATER
        self._low = _HIGH_WATER // 4
        self._write_paused = False
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0  # uvloop's handle for a deadline already past has no when()
        self._busy = False
        self._again = False
        self._close_deadline: asyncio.TimerHandle | None = None
        self.termination_reason = ""  # why the connection ended ("closed", "refused" ...)

    # --- asyncio.Transport ----------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername`` (follows a migration), ``sockname``, ``peercert`` (DTLS), ``socket``
        (None: the socket is shared by every connection of the listener)."""
        if name == "peername":
            return self._endpoint.peer_of(self)
        if name == "sockname":
            return self._endpoint.sockname()
        return super().get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` as one message (fragmented below when larger than a datagram), or
        as several when it is larger than the largest message: the bytes are a stream to the
        layer above, so where a message ends does not matter to it. Dropped once the
        connection is closing (as a socket transport drops writes after a close)."""
        conn = self.conn
        if self._closing or not data or conn.sending_closed:
            return
        limit = conn.max_message
        if len(data) <= limit:
            conn.send(bytes(data))
        else:
            view = memoryview(data)
            for start in range(0, len(view), limit):
                conn.send(bytes(view[start : start + limit]))
        self.pump()

    def writelines(self, list_of_data: Any) -> None:
        """Queue the pieces as one message."""
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        """Deliver what is queued, then close the connection with the peer (bounded wait)."""
        if self._closing:
            return
        self._closing = True
        self.conn.close(self._endpoint.loop.time())
        self._close_deadline = self._endpoint.loop.call_later(_CLOSE_WAIT, self.abort)
        self.pump()

    def abort(self) -> None:
        """Close at once: one CLOSE datagram, queued data discarded."""
        self._closing = True
        if self._finished:
            return
        self.conn.abort(self._endpoint.loop.time())
        self.pump()
        self._finish(None)

    def is_closing(self) -> bool:
        """True once :meth:`close` or :meth:`abort` was called, or the connection ended."""
        return self._closing or self._finished

    def pause_reading(self) -> None:
        """Ask the peer to stop sending until :meth:`resume_reading` (a zero window); what
        still arrives meanwhile is held here."""
        self._reading = False
        self.conn.pause_receiving(True)

    def resume_reading(self) -> None:
        """Deliver the held messages and go on delivering."""
        if self._reading:
            return
        self._reading = True
        self.conn.pause_receiving(False)
        held, self._held = self._held, []
        for data in held:
            if self._finished or not self._reading:
                self._held.append(data)
            else:
                self._protocol.data_received(data)
        self.pump()  # the window update

    def is_reading(self) -> bool:
        """Whether received messages are delivered."""
        return self._reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Flow-control marks over queued plus unacknowledged bytes."""
        self._high = _HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        """Bytes queued or sent and not yet acknowledged."""
        return self.conn.buffered_bytes()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The flow-control marks (low, high)."""
        return self._low, self._high

    def can_write_eof(self) -> bool:
        """No half-close."""
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol."""
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol."""
        return self._protocol

    def set_idle_timeout(self, seconds: float) -> None:
        """Raise the connection's idle expiry (the broker: at least 1.5 x MQTT Keep Alive)."""
        self.conn.set_idle_timeout(seconds)
        self.pump()

    # --- driving the connection -----------------------------------------------------------------

    def pump(self) -> None:
        """Send what the connection has to send, act on its events, re-arm its timer."""
        if self._busy:  # a protocol callback wrote: the outer call loops once more
            self._again = True
            return
        self._busy = True
        try:
            self._again = True
            while self._again and not self._finished:
                self._again = False
                self._pump_once()
        finally:
            self._busy = False

    def _pump_once(self) -> None:
        conn = self.conn
        now = self._endpoint.loop.time()
        datagrams = conn.datagrams_to_send(now)
        if datagrams:
            self._endpoint.send_datagrams(self, datagrams)
        for event in conn.events_received():
            self._event(event)
            if self._finished:
                return
        self._rearm(conn.get_timer())
        size = conn.buffered_bytes()
        if self._write_paused:
            if size <= self._low:
                self._write_paused = False
                self._protocol.resume_writing()
        elif size > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def _event(self, event: object) -> None:
        if isinstance(event, DataReceived):
            if self._reading and not self._held:
                self._protocol.data_received(event.data)
            else:
                self._held.append(event.data)
        elif isinstance(event, ConnectionTerminated):
            self.termination_reason = event.reason
            exc = None  # a close, or our own abort (as TCP's abort: connection_lost(None))
            if event.reason != "closed" and (event.by_peer or event.reason != "aborted"):
                exc = ConnectionResetError(f"UDP connection lost: {event.reason}")
            self._finish(exc)
        elif isinstance(event, PathSuspect):
            self._endpoint.path_suspect(self)
        elif isinstance(event, AddressMigrated):
            log.info("= connection moved from %s to %s", event.old, event.new)
        elif isinstance(event, Connected):
            self._endpoint.connected(self)

    def _rearm(self, deadline: float | None) -> None:
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            if self._timer_at == deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self._endpoint.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._finished:
            return
        self.conn.handle_timer(self._endpoint.loop.time())
        self.pump()

    def _finish(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._closing = True
        for handle in (self._timer, self._close_deadline):
            if handle is not None:
                handle.cancel()
        self._timer = self._close_deadline = None
        self._endpoint.terminated(self)
        self._protocol.connection_lost(exc)


class _Timer:
    """One re-armable loop timer (a DTLS layer's handshake deadline)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.Handle | None = None
        self._at = 0.0

    def set(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (loop time) instead of any earlier setting; None: never.
        Setting the same deadline again costs nothing (it is set after every datagram)."""
        if deadline is not None and self._handle is not None and deadline == self._at:
            return
        self.cancel()
        if deadline is not None:
            self._at = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        """Do not fire."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback()


# --- server ------------------------------------------------------------------------------------


def psk_certificate(identity: str) -> dict[str, Any]:
    """A DTLS PSK identity in the shape of ``ssl.SSLSocket.getpeercert()``, so certificate
    authentication (identity as user name) treats it like a certificate's Common Name."""
    return {"subject": ((("commonName", identity),),), "psk_identity": identity}


class UdpServerEndpoint(asyncio.DatagramProtocol):
    """A UDP (or, with ``dtls``, DTLS) listener socket.

    Datagrams are decrypted per source address (DTLS), then handed to the sans-I/O
    :class:`UdpServer`, which checks cookies, demultiplexes by connection id and migrates a
    connection whose client changed address. Every new connection gets a protocol from
    ``protocol_factory`` (the broker's ``ClientHandler``) on a :class:`ReliableTransport`.

    Args:
        settings: reliability settings of every connection.
        protocol_factory: makes the protocol of a new connection.
        dtls: the DTLS server, for a ``dtls`` listener.
        max_connections_per_address: connections one source address may hold (0: no limit).
        name: the listener's name for log lines.
    """

    def __init__(
        self,
        settings: UdpSettings,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        dtls: DtlsServer | None = None,
        max_connections_per_address: int = 0,
        name: str = "udp",
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.settings = settings
        self.protocol_factory = protocol_factory
        self.dtls = dtls
        self.name = name
        limit = max_connections_per_address if max_connections_per_address > 0 else 1 << 30
        self.server = UdpServer(settings, max_connections_per_address=limit)
        self.transport: asyncio.DatagramTransport | None = None
        self._by_conn: dict[ReliableConnection, ReliableTransport] = {}
        self._identities: dict[Hashable, dict[str, Any] | None] = {}
        self._dtls_timer = _Timer(self.loop, self._on_dtls_timer)
        self._closed: asyncio.Future[None] = self.loop.create_future()

    # --- asyncio.DatagramProtocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the datagram transport."""
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Decrypt (DTLS), demultiplex and drive the connection the datagram is for."""
        now = self.loop.time()
        if self.dtls is None:
            self._plain_received(data, addr, now)
            return
        try:
            plaintexts = self.dtls.datagram_received(data, addr, now)
        finally:
            self._after_dtls()
        for plaintext in plaintexts:
            self._plain_received(plaintext, addr, now)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for an earlier datagram: the reliability layer copes; log only."""
        log.debug("! %s: %s", self.name, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed: every connection ends."""
        for transport in list(self._by_conn.values()):
            transport._finish(exc if exc is not None else ConnectionResetError("listener closed"))
        self._dtls_timer.cancel()
        if not self._closed.done():
            self._closed.set_result(None)

    # --- the sans-I/O layers --------------------------------------------------------------------

    def _plain_received(self, data: bytes, addr: Hashable, now: float) -> None:
        conn = self.server.datagram_received(data, addr, now)
        self._server_events()
        for reply, to in self.server.datagrams_to_send(now):
            self._sendto(reply, to)
        if conn is not None:
            transport = self._by_conn.get(conn)
            if transport is not None:
                transport.pump()

    def _server_events(self) -> None:
        for event in self.server.events_received():
            if isinstance(event, NewConnection):
                self._accept(event.conn, event.addr)
            elif isinstance(event, ConnectionMigrated):
                self._migrated(event.conn, event.old, event.new)

    def _accept(self, conn: ReliableConnection, addr: Hashable) -> None:
        extra: dict[str, Any] = {"socket": None}
        if self.dtls is not None:
            extra["peercert"] = self._identities.get(addr)
        protocol = self.protocol_factory()
        transport = ReliableTransport(self, conn, protocol, extra)
        self._by_conn[conn] = transport
        protocol.connection_made(transport)
        transport.pump()

    def _migrated(self, conn: ReliableConnection, old: Hashable, new: Hashable) -> None:
        transport = self._by_conn.get(conn)
        if transport is None:
            return
        if self.dtls is not None:
            # A new address means a new DTLS association: it must be the same identity.
            before = transport.get_extra_info("peercert")
            after = self._identities.get(new)
            if _identity(before) != _identity(after):
                log.warning(
                    "! %s: refused to move a connection to %s: other identity", self.name, new
                )
                transport.abort()
                return
            self.dtls.forget(old)
            self._identities.pop(old, None)
        log.info("= %s: client moved from %s to %s", self.name, _show(old), _show(new))

    def _after_dtls(self) -> None:
        dtls = self.dtls
        assert dtls is not None
        for event in dtls.events_received():
            if isinstance(event, HandshakeComplete):
                # an association no reliable connection takes up is closed after idle_timeout
                self.loop.call_later(self.settings.idle_timeout, self._unused, event.addr)
                if event.peer_certificate:
                    self._identities[event.addr] = event.peer_certificate
                elif event.identity is not None:
                    self._identities[event.addr] = psk_certificate(event.identity)
                else:
                    self._identities[event.addr] = None
            elif isinstance(event, HandshakeFailed):
                log.info(
                    "! %s: DTLS handshake with %s failed: %s",
                    self.name,
                    _show(event.addr),
                    event.reason,
                )
                self._identities.pop(event.addr, None)
            elif isinstance(event, PeerClosed):
                self._identities.pop(event.addr, None)
        if self.transport is not None:
            for datagram, addr in dtls.datagrams_to_send():
                self.transport.sendto(datagram, cast(Any, addr))
        self._dtls_timer.set(dtls.get_timer())

    def _on_dtls_timer(self) -> None:
        if self.dtls is not None:
            self.dtls.handle_timer(self.loop.time())
            self._after_dtls()

    def _unused(self, addr: Hashable) -> None:
        """Close ``addr``'s DTLS association if no connection uses it (a peer that went quiet
        after its handshake must not hold ~50 KiB for ever)."""
        dtls = self.dtls
        if dtls is None or not dtls.is_established(addr):
            return
        if any(self.server.address_of(conn) == addr for conn in self._by_conn):
            return
        log.info("x %s: DTLS association with %s unused; closed", self.name, _show(addr))
        dtls.close(addr)
        self._identities.pop(addr, None)
        self._after_dtls()

    def _sendto(self, datagram: bytes, addr: Hashable) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.dtls is None:
            self.transport.sendto(datagram, cast(Any, addr))
        elif self.dtls.is_established(addr):  # else: its association ended; nothing to say
            self.dtls.send(addr, datagram)
            self._after_dtls()

    # --- _Endpoint ------------------------------------------------------------------------------

    def send_datagrams(self, transport: ReliableTransport, datagrams: list[bytes]) -> None:
        """Send a connection's datagrams to its current address."""
        if self.transport is None or self.transport.is_closing():
            return
        addr = self.server.address_of(transport.conn)
        if self.dtls is None:
            sendto = self.transport.sendto
            for datagram in datagrams:
                sendto(datagram, cast(Any, addr))
            return
        if not self.dtls.is_established(addr):
            return  # the association ended first (close_notify, a new handshake): drop them
        for datagram in datagrams:
            self.dtls.send(addr, datagram)
        self._after_dtls()

    def connected(self, transport: ReliableTransport) -> None:
        """Server connections start connected (``NewConnection``)."""

    def path_suspect(self, transport: ReliableTransport) -> None:
        """Only clients resume."""

    def peer_of(self, transport: ReliableTransport) -> Hashable:
        """The connection's current address."""
        return self.server.address_of(transport.conn)

    def sockname(self) -> Any:
        """The listener's own address."""
        return None if self.transport is None else self.transport.get_extra_info("sockname")

    def terminated(self, transport: ReliableTransport) -> None:
        """Forget a finished connection (and its DTLS association)."""
        conn = transport.conn
        if self._by_conn.pop(conn, None) is None:
            return
        addr = self.server.address_of(conn)
        self.server.forget(conn)
        if self.dtls is not None:
            self.dtls.close(addr)
            self._identities.pop(addr, None)
            self._after_dtls()

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Open connections on this listener."""
        return len(self._by_conn)

    def close(self) -> None:
        """Stop: abort every connection (the broker has already said goodbye), close the socket."""
        for transport in list(self._by_conn.values()):
            transport.abort()
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await self._closed


def _identity(cert: dict[str, Any] | None) -> object:
    return None if not cert else cert.get("subject")


def _show(addr: Hashable) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        return f"{host}:{addr[1]}"
    return str(addr)


# --- client ------------------------------------------------------------------------------------


class UdpClientEndpoint(asyncio.DatagramProtocol):
    """The client's connected UDP socket: DTLS handshake (when used), then one
    :class:`ReliableTransport` whose protocol is the stream's :class:`_StreamProtocol`.

    When the server has gone quiet while data waits (``PathSuspect``: the client's address may
    have changed under a NAT), plain UDP sends RESUME with the connection's token; DTLS first
    makes a new handshake (a DTLS association is bound to the old address), then RESUMEs.
    """

    def __init__(
        self,
        settings: UdpSettings,
        address: str,
        dtls_settings: DtlsClientSettings | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.settings = settings
        self.address = address
        self.dtls_settings = dtls_settings
        self.dtls: DtlsClient | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.reliable: ReliableTransport | None = None
        self.stream_protocol = _StreamProtocol(_READ_LIMIT)
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self._dtls_timer = _Timer(self.loop, self._on_dtls_timer)
        self._resuming = False
        self.peer_certificate: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the DTLS handshake, or the reliability handshake at once. Over IPv6 the
        default datagram size is 1452 (a 1500-byte link less the larger IP header)."""
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_INET6:
            if self.settings.mtu == IPV4_MTU:
                self.settings = replace(self.settings, mtu=IPV6_MTU)
            if self.dtls_settings is not None and self.dtls_settings.mtu == IPV4_MTU:
                self.dtls_settings = replace(self.dtls_settings, mtu=IPV6_MTU)
        if self.dtls_settings is not None:
            self._start_dtls()
        else:
            self._start_reliable()

    def _start_dtls(self) -> None:
        from ..dtls import DtlsClient

        assert self.dtls_settings is not None
        self.dtls = DtlsClient(self.dtls_settings)
        self.dtls.start(self.loop.time())
        self._after_dtls()

    def _start_reliable(self) -> None:
        settings = self.settings
        if self.dtls is not None:
            settings = replace(settings, overhead=settings.overhead + self.dtls.overhead)
        conn = ReliableConnection.client(settings, self.loop.time())
        self.reliable = ReliableTransport(self, conn, self.stream_protocol, {"socket": None})
        self.reliable.pump()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Decrypt (DTLS) and feed the reliable connection."""
        now = self.loop.time()
        if self.dtls is not None:
            plaintexts = self.dtls.datagram_received(data, now)
            self._after_dtls()
        else:
            plaintexts = [data]
        reliable = self.reliable
        if reliable is None:
            return
        for plaintext in plaintexts:
            reliable.conn.receive_datagram(plaintext, now)
        if plaintexts:
            reliable.pump()

    def error_received(self, exc: Exception) -> None:
        """ICMP port unreachable and the like: fail a pending connect at once."""
        if not self.ready.done():
            self.ready.set_exception(TransportError(self.address, str(exc) or type(exc).__name__))
        log.debug("! %s: %s", self.address, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed."""
        if self.reliable is not None:
            self.reliable._finish(exc)
        self._dtls_timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(TransportError(self.address, "socket closed"))

    # --- DTLS -----------------------------------------------------------------------------------

    def _after_dtls(self) -> None:
        dtls = self.dtls
        assert dtls is not None
        for event in dtls.events_received():
            if isinstance(event, HandshakeComplete):
                self.peer_certificate = event.peer_certificate
                if self.reliable is None:
                    self._start_reliable()
                elif self._resuming:
                    self._resuming = False
                    self.reliable.conn.resume(self.loop.time())
                    self.reliable.pump()
            elif isinstance(event, HandshakeFailed):
                error = TlsError(self.address, event.reason)
                if not self.ready.done():
                    self.ready.set_exception(error)
                elif self.reliable is not None:
                    self.reliable._finish(ConnectionResetError(f"DTLS: {event.reason}"))
            elif isinstance(event, PeerClosed) and self.reliable is not None:
                self.reliable._finish(None)
        if self.transport is not None and not self.transport.is_closing():
            for datagram in dtls.datagrams_to_send():
                self.transport.sendto(datagram)
        self._dtls_timer.set(dtls.get_timer())

    def _on_dtls_timer(self) -> None:
        if self.dtls is not None:
            self.dtls.handle_timer(self.loop.time())
            self._after_dtls()

    # --- _Endpoint ------------------------------------------------------------------------------

    def send_datagrams(self, transport: ReliableTransport, datagrams: list[bytes]) -> None:
        """Send (through DTLS when established; dropped while a new handshake runs)."""
        sock = self.transport
        if sock is None or sock.is_closing():
            return
        if self.dtls is None:
            for datagram in datagrams:
                sock.sendto(datagram)
            return
        if not self.dtls.established:
            return  # the reliability layer retransmits once the new association is up
        for datagram in datagrams:
            self.dtls.send(datagram)
        self._after_dtls()

    def peer_of(self, transport: ReliableTransport) -> Hashable:
        """The server's address."""
        return None if self.transport is None else self.transport.get_extra_info("peername")

    def sockname(self) -> Any:
        """The local address."""
        return None if self.transport is None else self.transport.get_extra_info("sockname")

    def connected(self, transport: ReliableTransport) -> None:
        """The server accepted: the stream may start."""
        if not self.ready.done():
            self.stream_protocol.connection_made(transport)
            self.ready.set_result(None)

    def path_suspect(self, transport: ReliableTransport) -> None:
        """DTLS: a new handshake, then RESUME (plain UDP: the connection RESUMEs by itself)."""
        if self.dtls is not None and not self._resuming:
            log.info("= %s: no answer; new DTLS handshake, then resume", self.address)
            self._resuming = True
            self._start_dtls()

    def terminated(self, transport: ReliableTransport) -> None:
        """The connection ended: close the socket (after a DTLS close_notify)."""
        if self.dtls is not None and self.dtls.established:
            self.dtls.close()
            self._after_dtls()
        if self.transport is not None:
            self.transport.close()
        if not self.ready.done():
            reason = transport.termination_reason
            if reason == "refused":
                text = "the server refused the connection (connection limit)"
            else:
                text = f"connection ended during set-up ({reason or 'socket closed'})"
            self.ready.set_exception(TransportError(self.address, text))


async def open_udp(
    host: str,
    port: int,
    *,
    settings: UdpSettings | None = None,
    dtls: DtlsClientSettings | None = None,
    connect_timeout: float | None = 10.0,
) -> TcpStream:
    """Open a reliable MQTT-over-UDP connection (DTLS with ``dtls``) and return its stream.

    Raises:
        TransportError: no answer within ``connect_timeout`` (nothing listens, or a firewall).
        TlsError: the DTLS handshake failed (``message`` says why).
    """
    loop = asyncio.get_running_loop()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    settings = settings or UdpSettings()
    try:
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: UdpClientEndpoint(settings, address, dtls), remote_addr=(host, port)
        )
    except OSError as exc:
        raise TransportError(address, exc.strerror or str(exc)) from exc
    try:
        async with asyncio.timeout(connect_timeout):
            await endpoint.ready
    except TimeoutError:
        if endpoint.transport is not None:
            endpoint.transport.close()
        what = "DTLS handshake" if dtls is not None else "no answer over UDP"
        raise TransportError(address, f"timed out ({what})") from None
    except BaseException:
        if endpoint.transport is not None:
            endpoint.transport.close()
        raise
    reliable = endpoint.reliable
    assert reliable is not None
    reliable.set_write_buffer_limits(high=_HIGH_WATER)
    stream = TcpStream(reliable, endpoint.stream_protocol)
    peer = endpoint.peer_of(reliable)
    host_seen, port_seen = (peer[0], peer[1]) if isinstance(peer, tuple) else (host, port)
    kind = "dtls" if dtls is not None else "udp"
    stream.peer = PeerInfo(str(host_seen), int(port_seen), endpoint.peer_certificate, kind)
    return stream
