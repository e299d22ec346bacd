"""A reliable, ordered message connection over UDP datagrams, without I/O (aioquic's shape).

Datagrams in (:meth:`ReliableConnection.receive_datagram`), datagrams out
(:meth:`~ReliableConnection.datagrams_to_send`), time passed in as ``now``, one deadline out
(:meth:`~ReliableConnection.get_timer` / :meth:`~ReliableConnection.handle_timer`). The
connection runs the set-up (with :mod:`.handshake`), sends and acknowledges DATA segments (loss
recovery and congestion control in :mod:`.recovery`, cumulative plus selective ACKs, the peer's
receive window), buffers, orders and reassembles what arrives (:mod:`.fragmentation`), keeps the
connection alive, expires it, closes it, and resumes it on a new path (CHALLENGE / RESUME).

docs/udp.md describes the wire format, the state machine and the timers.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Final, TypeAlias

from ...protocol.errors import InvalidState
from .fragmentation import ReassemblyError, ReceiveBuffer, Received, SendQueue
from .handshake import ClientHandshake, HandshakePhase
from .recovery import (
    INITIAL_WINDOW,
    MAX_ACK_DELAY,
    ConnectionStats,
    Recovery,
    RetransmitLimit,
)
from .wire import (
    ACK_BLOCK_SIZE,
    ACK_HEADER_SIZE,
    DATA_HEADER_SIZE,
    MAX_DATAGRAM_SIZE,
    MIN_DATAGRAM_SIZE,
    NONCE_SIZE,
    TOKEN_SIZE,
    Accept,
    Ack,
    Challenge,
    Close,
    CloseAck,
    CloseCode,
    Connect,
    Cookie,
    Data,
    Datagram,
    Hello,
    PeerParameters,
    Ping,
    Reset,
    Resumed,
    encode_accept,
    encode_ack,
    encode_close,
    encode_close_ack,
    encode_data,
    encode_ping,
    encode_resume,
    encode_resumed,
    expand_seq,
    parse_untrusted,
)

__all__ = [
    "AddressMigrated",
    "Connected",
    "ConnectionState",
    "ConnectionStats",
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "PathSuspect",
    "ReliableConnection",
    "UdpSettings",
]

log = logging.getLogger("mqttv5.transport.udp")

_ZERO_NONCE: Final = bytes(NONCE_SIZE)
_U32_MAX: Final = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class UdpSettings:
    """Settings of one side of a connection (each side has its own).

    Attributes:
        mtu: largest UDP payload we emit, before ``overhead`` (1472 for IPv4, 1452 for IPv6).
        overhead: bytes reserved for a layer below us (DTLS record expansion).
        rto_initial: retransmission timeout before the first RTT sample (clamped to
            ``rto_min`` .. ``rto_max``).
        rto_min: smallest retransmission timeout.
        rto_max: largest retransmission timeout (the backoff stops doubling here).
        max_retransmits: a segment sent this many times more without acknowledgement ends
            the connection ("too many retransmissions").
        idle_timeout: nothing received for this long ends the connection ("idle timeout").
        keepalive_interval: a PING goes out after this long without sending anything (sooner
            if either side's idle timeout is under three times this).
        max_message_size: the largest message (one ``send()``, one reassembled message).
        receive_window: segments we hold beyond the next expected one (advertised window).
        rebind_after_rtos: client: this many consecutive timeouts raise ``PathSuspect`` and
            send RESUME.
        handshake_timeout: set-up (both sides) must finish within this long.
    """

    mtu: int = 1472
    overhead: int = 0
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 60.0
    max_retransmits: int = 10
    idle_timeout: float = 90.0
    keepalive_interval: float = 15.0
    max_message_size: int = 1_048_576 + 16
    receive_window: int = 256
    rebind_after_rtos: int = 3
    handshake_timeout: float = 10.0

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: a field is out of range; the message starts with its name.
        """
        checks = (
            ("overhead", self.overhead >= 0, "must be >= 0"),
            (
                "mtu",
                self.mtu - self.overhead >= MIN_DATAGRAM_SIZE and self.mtu <= MAX_DATAGRAM_SIZE,
                f"minus overhead must be >= {MIN_DATAGRAM_SIZE}; at most {MAX_DATAGRAM_SIZE}",
            ),
            ("rto_initial", self.rto_initial > 0, "must be > 0"),
            ("rto_min", self.rto_min > 0, "must be > 0"),
            ("rto_max", self.rto_max >= self.rto_min, "must be >= rto_min"),
            ("max_retransmits", self.max_retransmits >= 1, "must be >= 1"),
            ("idle_timeout", self.idle_timeout > 0, "must be > 0"),
            ("keepalive_interval", self.keepalive_interval > 0, "must be > 0"),
            ("max_message_size", 1 <= self.max_message_size <= _U32_MAX, "must be 1 .. 2**32-1"),
            ("receive_window", 1 <= self.receive_window <= 0xFFFF, "must be 1 .. 65535"),
            ("rebind_after_rtos", self.rebind_after_rtos >= 1, "must be >= 1"),
            ("handshake_timeout", self.handshake_timeout > 0, "must be > 0"),
        )
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"{name}: {what} (got {getattr(self, name)!r})")


# --- events ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Connected:
    """Client: ACCEPT received. Server: the connection was created."""

    connection_id: bytes


@dataclass(slots=True)
class DataReceived:
    """One whole message, in order."""

    data: bytes


@dataclass(slots=True)
class PathSuspect:
    """Client: consecutive timeouts with unacknowledged data; RESUME was sent. Over DTLS make a
    new handshake, then call :meth:`ReliableConnection.resume`."""


@dataclass(slots=True)
class ConnectionTerminated:
    """The connection ended: "closed", "aborted", "idle timeout", "too many retransmissions",
    "handshake timed out", "reset", "refused", "protocol error", "message too large",
    "reassembly timed out"."""

    reason: str
    by_peer: bool


@dataclass(slots=True)
class AddressMigrated:
    """Server: the client proved it owns the connection at a new address."""

    old: object
    new: object


Event: TypeAlias = Connected | DataReceived | PathSuspect | ConnectionTerminated | AddressMigrated


class ConnectionState(IntEnum):
    """HANDSHAKE -> ESTABLISHED -> CLOSING -> CLOSED (any state may go straight to CLOSED)."""

    HANDSHAKE = 0
    ESTABLISHED = 1
    CLOSING = 2
    CLOSED = 3


HANDSHAKE: Final = ConnectionState.HANDSHAKE
ESTABLISHED: Final = ConnectionState.ESTABLISHED
CLOSING: Final = ConnectionState.CLOSING
CLOSED: Final = ConnectionState.CLOSED


class ReliableConnection:
    """One side of one UDP connection. Addresses are opaque hashables to this layer.

    Make a client with :meth:`client`; the server's connections come from
    :class:`~mqttv5.transport.udp.server.UdpServer`. After every call that takes ``now``, call
    :meth:`datagrams_to_send` and send them to the peer, take :meth:`events_received`, and
    arm a timer for :meth:`get_timer` that calls :meth:`handle_timer`.
    """

    def __init__(
        self,
        settings: UdpSettings,
        now: float,
        *,
        is_client: bool,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.is_client = is_client
        self._rng = rng
        self.state = HANDSHAKE if is_client else ESTABLISHED
        self.connection_id: bytes | None = None
        #: Server side: the client's current address (kept by UdpServer, also after forget()).
        self.peer_address: Hashable | None = None
        self._token = b""
        self._previous_token: bytes | None = None
        self._accept: bytes | None = None
        self._accept_sent: tuple[float, int] = (now, 0)  # server: when, how many ACCEPTs
        self._handshake: ClientHandshake | None = None
        self._confirm_deadline: float | None = None
        own = settings.mtu - settings.overhead
        self._peer = PeerParameters(
            own, settings.receive_window, settings.max_message_size, _ms(settings.idle_timeout)
        )
        self._budget = own
        self._idle_timeout = settings.idle_timeout
        # send side
        self._queue = SendQueue()
        self._stats = ConnectionStats()
        self._recovery = Recovery(
            self._stats,
            rto_initial=settings.rto_initial,
            rto_min=settings.rto_min,
            rto_max=settings.rto_max,
            max_retransmits=settings.max_retransmits,
            max_window=max(2 * settings.receive_window, INITIAL_WINDOW),
        )
        self._suspect = False
        self._receiving_paused = False
        # receive side
        self._recv = ReceiveBuffer(settings.receive_window, settings.max_message_size)
        self._ack_needed = False
        self._ack_count = 0
        self._ack_at: float | None = None
        self._largest_seq = -1
        self._largest_at = now
        # control and closing
        self._control: list[bytes] = []
        self._last_received = now
        self._last_sent = now
        self._close_requested = False
        self._close_datagram: bytes | None = None
        self._close_at: float | None = None
        self._close_tries = 0
        self._answer_close = False
        self._events: list[Event] = []

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def client(
        cls, settings: UdpSettings, now: float, *, rng: Callable[[int], bytes] = os.urandom
    ) -> ReliableConnection:
        """A client connection; its HELLO is due at once (call :meth:`datagrams_to_send`).

        Raises:
            ValueError: invalid ``settings``.
        """
        conn = cls(settings, now, is_client=True, rng=rng)
        conn._handshake = ClientHandshake(
            rng(NONCE_SIZE),
            conn._own_params(),
            now,
            conn._recovery.rtt.rto,
            settings.rto_max,
            settings.handshake_timeout,
        )
        return conn

    @classmethod
    def _accepted(
        cls,
        settings: UdpSettings,
        now: float,
        connect: Connect,
        connection_id: bytes,
        rng: Callable[[int], bytes],
    ) -> ReliableConnection:
        """Server side (for UdpServer): a connection for a CONNECT whose cookie checked out."""
        conn = cls(settings, now, is_client=False, rng=rng)
        conn.connection_id = connection_id
        conn._token = rng(TOKEN_SIZE)
        conn._set_peer(connect.params)
        conn._accept = encode_accept(connect.nonce, connection_id, conn._token, conn._own_params())
        conn._control.append(conn._accept)
        conn._accept_sent = (now, 1)
        conn._confirm_deadline = now + settings.handshake_timeout
        conn._events.append(Connected(connection_id))
        return conn

    def _own_params(self) -> PeerParameters:
        s = self.settings
        return PeerParameters(
            s.mtu - s.overhead, s.receive_window, s.max_message_size, _ms(s.idle_timeout)
        )

    def _set_peer(self, params: PeerParameters) -> None:
        self._peer = params
        self._budget = min(self.settings.mtu - self.settings.overhead, params.max_datagram)

    # --- public API --------------------------------------------------------------------------

    @property
    def stats(self) -> ConnectionStats:
        """Counters and the current RTT / congestion state (a live object)."""
        st = self._recovery.refresh_stats()
        st.peer_window = self._peer.receive_window
        st.max_out_of_order = self._recv.peak_held
        st.max_reassembly_bytes = self._recv.reassembler.peak_bytes
        return st

    @property
    def max_message(self) -> int:
        """The largest message :meth:`send` takes: ours and the peer's limit, whichever is
        smaller (the peer's is known once the connection is set up)."""
        return min(self.settings.max_message_size, self._peer.max_message)

    @property
    def sending_closed(self) -> bool:
        """Whether :meth:`send` would raise: the connection is closing or closed."""
        return self.state is CLOSED or self.state is CLOSING or self._close_requested

    def send(self, data: bytes) -> None:
        """Queue one message; it may be larger than a datagram (it is fragmented).

        Then call :meth:`datagrams_to_send`.

        Raises:
            InvalidState: the connection is closing or closed.
            ValueError: ``data`` is larger than our or the peer's maximum message size.
        """
        if self.sending_closed:
            raise InvalidState(f"cannot send on a {self.state.name.lower()} UDP connection")
        limit = self.max_message
        if len(data) > limit:
            raise ValueError(f"message of {len(data)} bytes exceeds the maximum of {limit}")
        self._queue.push(bytes(data))
        self._stats.messages_sent += 1
        self._stats.bytes_sent += len(data)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Take one datagram from the peer. Anything malformed or unexpected is dropped and
        counted in ``stats``; nothing is raised. Then call :meth:`datagrams_to_send` and
        :meth:`events_received`."""
        self._stats.datagrams_received += 1
        datagram = parse_untrusted(data)
        if datagram is None:
            self._drop("malformed")
            return
        self._receive(datagram, now)

    def events_received(self) -> list[Event]:
        """The events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def buffered_bytes(self) -> int:
        """Message bytes queued or sent and not yet acknowledged (for backpressure)."""
        return self._queue.pending_bytes + self._recovery.unacked_bytes

    def pause_receiving(self, paused: bool) -> None:
        """Ask the peer to stop (``True``) or resume sending, for the reader's flow control.

        While paused, our ACKs advertise a zero window, so the peer sends only what was in
        flight and then one probe segment per acknowledgement (TCP's zero window, with the
        probe built into the sender: no window update can deadlock). Segments that arrive are
        still acknowledged and delivered; the caller holds them. Resuming sends the window
        update at once.
        """
        if self._receiving_paused and not paused:
            self._ack_needed = True
            self._ack_at = 0.0  # the window update goes out with the next datagrams_to_send()
        self._receiving_paused = paused

    def set_idle_timeout(self, seconds: float) -> None:
        """Change the idle timeout (the broker raises it to at least 1.5 x MQTT Keep Alive).

        Raises:
            ValueError: ``seconds`` is not positive.
        """
        if not seconds > 0:
            raise ValueError(f"idle timeout must be > 0 (got {seconds!r})")
        self._idle_timeout = seconds

    def close(self, now: float) -> None:
        """Close gracefully: deliver what is queued, then CLOSE until CLOSE_ACK.

        ``ConnectionTerminated("closed", by_peer=False)`` comes at the end. Idempotent.
        """
        if self.state is CLOSED or self._close_requested:
            return
        self._close_requested = True
        if self.state is ESTABLISHED:
            self.state = CLOSING

    def abort(self, now: float) -> None:
        """Close at once: one CLOSE (code "aborted") goes out with the next
        :meth:`datagrams_to_send`; ``ConnectionTerminated("aborted", by_peer=False)`` now."""
        if self.state is CLOSED:
            return
        if self.connection_id is not None:
            self._control.append(encode_close(self.connection_id, CloseCode.ABORTED))
        self._terminate("aborted", by_peer=False)

    def resume(self, now: float) -> None:
        """Client: send RESUME with the current token (after a new DTLS handshake, or when the
        path is suspect). A no-op on a server connection or one not established or closed."""
        if self.is_client and self.connection_id is not None and self.state is not CLOSED:
            self._queue_resume(_ZERO_NONCE)

    # --- timers ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next (``None``: nothing pending)."""
        if self.state is CLOSED:
            return None
        times: list[float] = []
        hs = self._handshake
        if hs is not None and hs.phase is not HandshakePhase.DONE:
            times.append(hs.deadline)
            if hs.retransmit_at is not None:
                times.append(hs.retransmit_at)
        if self.connection_id is not None:
            times.append(self._last_received + self._idle_timeout)
            times.append(self._last_sent + self._keepalive_interval())
            progress = self._recv.reassembler.last_progress
            if progress is not None:
                times.append(progress + self._idle_timeout)
        times.extend(
            deadline
            for deadline in (self._confirm_deadline, self._recovery.timer(), self._close_at)
            if deadline is not None
        )
        if self._ack_needed and self._ack_at is not None:
            times.append(self._ack_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed. Then call :meth:`datagrams_to_send`."""
        if self.state is CLOSED:
            return
        hs = self._handshake
        if hs is not None and hs.phase is not HandshakePhase.DONE and now >= hs.deadline:
            self._terminate("handshake timed out", by_peer=False)
            return
        if self._confirm_deadline is not None and now >= self._confirm_deadline:
            self._terminate("handshake timed out", by_peer=False)
            return
        if self.connection_id is not None:
            if now >= self._last_received + self._idle_timeout:
                self._terminate("idle timeout", by_peer=False)
                return
            progress = self._recv.reassembler.last_progress
            if progress is not None and now >= progress + self._idle_timeout:
                self._fail(CloseCode.PROTOCOL_ERROR, "reassembly timed out")
                return
        close_at = self._close_at
        if (
            close_at is not None
            and now >= close_at
            and self._close_tries > self.settings.max_retransmits
        ):
            self._terminate("closed", by_peer=False)  # our data was delivered; peer gone
            return
        timer = self._recovery.timer()
        if timer is not None and now >= timer:
            try:
                if self._recovery.on_timer(now):
                    self._on_timeout()
            except RetransmitLimit:
                self._terminate("too many retransmissions", by_peer=False)

    def _keepalive_interval(self) -> float:
        peer_idle = self._peer.idle_timeout_ms / 1000
        return min(self.settings.keepalive_interval, self._idle_timeout / 3, peer_idle / 3)

    # --- sending -----------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything to send now: set-up, control, ACK, retransmissions and new DATA as the
        congestion and peer windows allow, CLOSE, PING. Send them in order to the peer."""
        out = self._control
        self._control = []
        if self.state is not CLOSED:
            hs = self._handshake
            if hs is not None and hs.phase is not HandshakePhase.DONE:
                datagram = hs.datagram_due(now)
                if datagram is not None:
                    out.append(datagram)
            if self.connection_id is not None:
                self._send_connection(out, now)
        if out:
            self._last_sent = now
            self._stats.datagrams_sent += len(out)
        return out

    def _send_connection(self, out: list[bytes], now: float) -> None:
        cid = self.connection_id
        assert cid is not None
        if self._ack_needed and self._ack_at is not None and now >= self._ack_at:
            out.append(self._build_ack(cid, now))
        self._send_data(out, cid, now)
        if self.state is CLOSING:
            self._send_close(out, cid, now)
        if not out and now >= self._last_sent + self._keepalive_interval():
            out.append(encode_ping(cid))
            self._stats.pings_sent += 1

    def _build_ack(self, cid: bytes, now: float) -> bytes:
        limit = min(255, (self._budget - ACK_HEADER_SIZE) // ACK_BLOCK_SIZE)
        recv = self._recv
        delay = now - self._largest_at if self._largest_seq >= 0 else 0.0
        # Delivered messages leave the buffer at once, so the window is constant, except
        # that a paused reader advertises none.
        window = 0 if self._receiving_paused else self.settings.receive_window
        datagram = encode_ack(cid, recv.next_seq, window, delay, recv.sack_blocks(limit))
        self._ack_needed = False
        self._ack_count = 0
        self._ack_at = None
        self._stats.acks_sent += 1
        return datagram

    def _send_data(self, out: list[bytes], cid: bytes, now: float) -> None:
        if self.state is ESTABLISHED or self.state is CLOSING:

            def encode(seq: int, flags: int, total: int | None, payload: bytes) -> bytes:
                return encode_data(cid, seq, flags, total, payload)

            room = self._budget - DATA_HEADER_SIZE
            window = self._peer.receive_window
            self._recovery.send(out, now, self._queue, room, window, encode)

    def _send_close(self, out: list[bytes], cid: bytes, now: float) -> None:
        if self._close_datagram is None:
            if self._queue or self._recovery.segments:
                return  # deliver everything first
            self._close_datagram = encode_close(cid, CloseCode.NORMAL)
        elif self._close_at is None or now < self._close_at:
            return
        out.append(self._close_datagram)
        self._close_tries += 1
        backoff = self._recovery.rtt.rto * (1 << min(self._close_tries - 1, 30))
        self._close_at = now + min(backoff, self.settings.rto_max)

    def _queue_resume(self, nonce: bytes) -> None:
        assert self.connection_id is not None
        datagram = encode_resume(self.connection_id, nonce, self._token)
        if datagram not in self._control:
            self._control.append(datagram)

    # --- receiving ---------------------------------------------------------------------------

    def _receive(self, d: Datagram, now: float) -> None:
        """Handle one parsed datagram (UdpServer calls this directly)."""
        if self.state is CLOSED:
            if (
                self._answer_close
                and isinstance(d, Close)
                and d.connection_id == self.connection_id
            ):
                # Our CLOSE_ACK was lost: the peer retransmitted its CLOSE.
                self._control.append(encode_close_ack(d.connection_id))
            else:
                self._drop("closed")
            return
        if isinstance(d, Cookie | Accept | Hello | Connect):
            self._receive_setup(d, now)
            return
        cid = self.connection_id
        if cid is None:
            hs = self._handshake
            if isinstance(d, Reset) and hs is not None and d.connection_id == hs.nonce:
                self._terminate("refused", by_peer=True)
            else:
                self._drop("not connected")
            return
        if d.connection_id != cid:
            self._drop("wrong connection id")
            return
        self._last_received = now
        hs = self._handshake
        if hs is not None and hs.phase is HandshakePhase.CONFIRM:
            hs.on_confirmed()
        if self._confirm_deadline is not None:  # server: the client answered our ACCEPT
            self._confirm_deadline = None
            sent_at, count = self._accept_sent
            if count == 1:  # Karn's rule: one ACCEPT, so this measures one round trip
                self._recovery.rtt.on_sample(now - sent_at)
        match d:
            case Data():
                self._receive_data(d, now)
            case Ack():
                self._receive_ack(d, now)
            case Ping():
                self._ack_needed = True
                self._ack_at = now  # a PING is answered at once
            case Close():
                self._receive_close(d.code)
            case CloseAck():
                if self._close_datagram is None:
                    self._drop("unexpected")
                else:
                    self._terminate("closed", by_peer=False)
            case Reset():
                if self._close_datagram is None:
                    self._terminate("reset", by_peer=True)
                else:  # our CLOSE reached a peer that had already forgotten us
                    self._terminate("closed", by_peer=False)
            case Challenge() if self.is_client:
                self._queue_resume(d.nonce)
            case Resumed() if self.is_client:
                if hmac.compare_digest(d.token, self._token):
                    self._drop("duplicate")  # answers another RESUME of ours
                else:
                    self._token = d.token
                    self._path_restored(now)
            case _:
                self._drop("unexpected")

    def _receive_setup(self, d: Cookie | Accept | Hello | Connect, now: float) -> None:
        hs = self._handshake
        if hs is None or isinstance(d, Hello | Connect) or d.nonce != hs.nonce:
            self._drop("unexpected")
            return
        if isinstance(d, Cookie):
            sample = hs.on_cookie(d.cookie, now)
        elif self.connection_id is None:
            sample = hs.on_accept(d.connection_id, now)
            self._established(d, now)
        else:
            self._drop("duplicate")  # the server answered a retransmitted CONNECT
            return
        if sample is not None:
            self._recovery.rtt.on_sample(sample)
            hs.rto = self._recovery.rtt.rto

    def _established(self, d: Accept, now: float) -> None:
        self.connection_id = d.connection_id
        self._token = d.token
        self._set_peer(d.params)
        self._last_received = self._last_sent = now
        self.state = CLOSING if self._close_requested else ESTABLISHED
        self._events.append(Connected(d.connection_id))
        log.debug("= UDP connection %s established", d.connection_id.hex())

    def _receive_data(self, d: Data, now: float) -> None:
        recv = self._recv
        stats = self._stats
        seq = expand_seq(d.seq, recv.next_seq)
        gap = recv.held > 0
        stats.segments_received += 1
        try:
            status = recv.receive(seq, d.flags, d.total, d.payload, now)
        except ReassemblyError as exc:
            self._fail(exc.code, str(exc))
            return
        for message in recv.take_messages():
            stats.messages_received += 1
            stats.bytes_received += len(message)
            self._events.append(DataReceived(message))
        self._ack_needed = True
        if status is Received.DUPLICATE:
            stats.duplicates_received += 1
            self._ack_at = now  # our ACK may have been lost
        elif status is Received.BEYOND_WINDOW:
            self._drop("beyond window")
            self._ack_at = now
        elif status is Received.OUT_OF_ORDER or gap:
            self._ack_at = now  # RFC 5681 4.2: at once when a gap opens or fills
        else:
            self._ack_count += 1
            if self._ack_count >= 2:
                self._ack_at = now
            elif self._ack_at is None:
                self._ack_at = now + MAX_ACK_DELAY
        if seq > self._largest_seq:
            self._largest_seq = seq
            self._largest_at = now

    def _receive_ack(self, d: Ack, now: float) -> None:
        self._stats.acks_received += 1
        recovery = self._recovery
        cumulative = expand_seq(d.cumulative, recovery.snd_una)
        if cumulative > recovery.snd_nxt:
            self._drop("acknowledges unsent data")
            return
        if cumulative >= recovery.snd_una and d.window != self._peer.receive_window:
            self._peer = replace(self._peer, receive_window=d.window)
        try:
            if recovery.on_ack(cumulative, d.blocks, d.ack_delay, now):
                self._suspect = False
        except RetransmitLimit:
            self._terminate("too many retransmissions", by_peer=False)

    def _receive_close(self, code: int) -> None:
        assert self.connection_id is not None
        self._control.append(encode_close_ack(self.connection_id))
        if self._close_datagram is not None:  # both sides closed at once
            self._terminate("closed", by_peer=False)
            return
        self._answer_close = True
        try:
            reason = CloseCode(code).reason
        except ValueError:
            reason = f"closed (code {code})"
        self._terminate(reason, by_peer=True)

    # --- path ------------------------------------------------------------------------------

    def _on_timeout(self) -> None:
        """Client: after ``rebind_after_rtos`` consecutive timeouts the path is suspect (a NAT
        may have given us a new address): tell the glue once, and RESUME on every timeout."""
        if not self.is_client or self.connection_id is None:
            return
        if self._recovery.consecutive_timeouts >= self.settings.rebind_after_rtos:
            if not self._suspect:
                self._suspect = True
                self._events.append(PathSuspect())
                log.debug("! UDP connection %s: path suspect", self.connection_id.hex())
            self._queue_resume(_ZERO_NONCE)

    def _path_restored(self, now: float) -> None:
        """After RESUMED (client) or a migration (server): resend what is in flight now."""
        self._suspect = False
        try:
            self._recovery.restart(now)
        except RetransmitLimit:
            self._terminate("too many retransmissions", by_peer=False)

    # --- server hooks (UdpServer) ------------------------------------------------------------

    def _resend_accept(self) -> None:
        """A retransmitted CONNECT: answer it again (only until the client confirmed)."""
        if self._accept is not None and self._confirm_deadline is not None:
            self._control.append(self._accept)
            self._accept_sent = (self._accept_sent[0], self._accept_sent[1] + 1)

    def _token_matches(self, token: bytes) -> int:
        """2: the current resume token, 1: the previous one, 0: neither."""
        if len(token) == TOKEN_SIZE and hmac.compare_digest(token, self._token):
            return 2
        previous = self._previous_token
        return 1 if previous is not None and hmac.compare_digest(token, previous) else 0

    def _resumed(self, now: float, *, rotate: bool, old: object = None, new: object = None) -> None:
        """RESUME checked out (on a new address when ``new`` is given): rotate the token if
        the current one was used, send RESUMED; after a move, resend what is in flight."""
        assert self.connection_id is not None
        if self.state is CLOSED:
            return
        if rotate:
            self._previous_token = self._token
            self._token = self._rng(TOKEN_SIZE)
        self._last_received = now
        self._control.append(encode_resumed(self.connection_id, self._token))
        if new is not None:
            self._events.append(AddressMigrated(old, new))
            self._path_restored(now)

    # --- ending ------------------------------------------------------------------------------

    def _drop(self, cause: str) -> None:
        stats = self._stats
        stats.datagrams_dropped += 1
        stats.drops_by_cause[cause] = stats.drops_by_cause.get(cause, 0) + 1

    def _fail(self, code: CloseCode, reason: str) -> None:
        """We end the connection for the peer's fault: CLOSE with ``code``, then terminate."""
        if self.connection_id is not None:
            self._control.append(encode_close(self.connection_id, code))
        self._terminate(reason, by_peer=False)

    def _terminate(self, reason: str, *, by_peer: bool) -> None:
        self.state = CLOSED
        self._events.append(ConnectionTerminated(reason, by_peer))
        self._queue.clear()
        self._recovery.clear()
        self._recv.clear()
        self._ack_at = self._close_at = None
        self._confirm_deadline = None
        self._ack_needed = False
        if self._handshake is not None:
            self._handshake.retransmit_at = None
        log.debug("x UDP connection %s: %s", _hex(self.connection_id), reason)


def _ms(seconds: float) -> int:
    return max(1, min(_U32_MAX, int(seconds * 1000))) if math.isfinite(seconds) else _U32_MAX


def _hex(connection_id: bytes | None) -> str:
    return "-" if connection_id is None else connection_id.hex()
