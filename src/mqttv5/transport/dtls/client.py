"""The DTLS 1.2 client: one association with one server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ...protocol.errors import InvalidState
from .engine import (
    MAX_DATAGRAM,
    RECORD_OVERHEAD,
    Association,
    HandshakeError,
    client_context,
    describe_tls_error,
)
from .events import DtlsEvent, HandshakeComplete, HandshakeFailed, PeerClosed
from .records import describe_certificate_der

if TYPE_CHECKING:
    from .settings import DtlsClientSettings

__all__ = ["DtlsClient"]

logger = logging.getLogger("mqttv5.transport.udp")


class DtlsClient:
    """DTLS 1.2 towards one server, without I/O (sans-I/O).

    :meth:`start` queues the ClientHello; feed every datagram from the server to
    :meth:`datagram_received`, send :meth:`datagrams_to_send`, act on :meth:`events_received`
    (one :class:`HandshakeComplete` or :class:`HandshakeFailed`, later maybe a
    :class:`PeerClosed`) and arm a timer for :meth:`get_timer`: the handshake's
    retransmissions and its timeout run from it.

    Attributes:
        settings: the settings it was made with.
        overhead: most bytes a record adds to a plaintext (37): a plaintext datagram must be
            at most ``settings.mtu - overhead`` bytes.
    """

    def __init__(self, settings: DtlsClientSettings) -> None:
        """Make the client's mbedtls context.

        Raises:
            DtlsUnavailable: python-mbedtls is not installed.
            ConfigError: half a PSK, or a file cannot be loaded.
        """
        self.settings = settings
        self.overhead = RECORD_OVERHEAD
        self._context = client_context(settings)
        self._association: Association | None = None
        self._done = False  # failed or closed: nothing more goes in or out
        self._outgoing: list[bytes] = []
        self._events: list[DtlsEvent] = []

    @property
    def established(self) -> bool:
        """Whether application records can flow."""
        return self._association is not None and self._association.established and not self._done

    def start(self, now: float) -> None:
        """Begin the handshake: queues the ClientHello. Then call :meth:`datagrams_to_send`.

        Raises:
            InvalidState: already started.
        """
        if self._association is not None:
            raise InvalidState("the DTLS handshake has already started")
        buffer = self._context.wrap_buffers(self.settings.server_hostname)
        self._association = Association(
            buffer,
            mtu=self.settings.mtu,
            now=now,
            handshake_timeout=self.settings.handshake_timeout,
            retransmit_timeout=self.settings.retransmit_timeout,
            peer="server",
        )
        self._handshake(now)

    def datagram_received(self, data: bytes, now: float) -> list[bytes]:
        """Process one datagram from the server. Never raises on what the server sends.

        Then call :meth:`datagrams_to_send`, :meth:`events_received` and :meth:`get_timer`.

        Returns:
            The plaintext datagrams, one per application record; ``[]`` during the handshake.
        """
        association = self._association
        if association is None or self._done or not data or len(data) > MAX_DATAGRAM:
            return []
        try:
            association.feed(data)
            if not association.established and not self._handshake(now):
                return []
            return self._read(association)
        except Exception as exc:  # a bug of ours or python-mbedtls's: never the glue's problem
            logger.exception("! datagram dropped, association ended")
            self._done = True
            established = association.established
            self._events.append(
                PeerClosed(None)
                if established
                else HandshakeFailed(None, f"internal error: {exc!r}")
            )
            return []

    def _handshake(self, now: float, *, by_timer: bool = False) -> bool:
        """Advance the handshake; True once established (event queued)."""
        association = self._association
        assert association is not None
        try:
            over = association.handle_timer(now) if by_timer else association.handshake(now)
        except HandshakeError as exc:
            self._flush()
            self._fail(str(exc))
            return False
        self._flush()
        if over:
            self._complete(association)
        return over

    def _complete(self, association: Association) -> None:
        der = association.buffer.getpeercert(binary_form=True)
        certificate = None
        if der:
            try:
                certificate = describe_certificate_der(der)
            except ValueError:
                logger.debug("! server certificate verified by mbedtls but not described")
        logger.debug("= established (%s)", association.buffer.cipher())
        self._events.append(HandshakeComplete(None, None, certificate))

    def _fail(self, reason: str) -> None:
        logger.debug("! handshake failed: %s", reason)
        self._done = True
        self._events.append(HandshakeFailed(None, reason))

    def _read(self, association: Association) -> list[bytes]:
        records, error = association.read_records()
        self._flush()
        if error is not None:
            logger.debug("x association ended: %s", describe_tls_error(error, "server"))
            self._done = True
            self._events.append(PeerClosed(None))
        return records

    def send(self, plaintext: bytes) -> None:
        """Encrypt ``plaintext`` as one application record (one datagram).

        Then call :meth:`datagrams_to_send`.

        Raises:
            InvalidState: not established.
            DtlsError: ``plaintext`` is longer than ``settings.mtu - overhead``.
        """
        if not self.established or self._association is None:
            raise InvalidState("the DTLS association is not established")
        self._association.write(plaintext)
        self._flush()

    def datagrams_to_send(self) -> list[bytes]:
        """The datagrams to send to the server since the last call, in order."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def events_received(self) -> list[DtlsEvent]:
        """Handshake and closing events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (caller's clock), or None."""
        if self._association is None or self._done:
            return None
        return self._association.timer()

    def handle_timer(self, now: float) -> None:
        """Retransmit the last handshake flight if due, or fail a handshake that took too
        long. Then call :meth:`datagrams_to_send` and :meth:`events_received`."""
        association = self._association
        if association is None or self._done or association.established:
            return
        due = association.timer()
        if due is not None and now >= due:
            self._handshake(now, by_timer=True)

    def close(self) -> None:
        """Send close_notify (if started) and stop. Then call :meth:`datagrams_to_send`."""
        if self._association is not None and not self._done:
            self._association.shutdown()
            self._flush()
        self._done = True

    def _flush(self) -> None:
        association = self._association
        if association is not None and association.outgoing:
            self._outgoing.extend(association.outgoing)
            association.outgoing.clear()
