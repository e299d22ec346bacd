"""The DTLS 1.2 server: many peers, demultiplexed by address, stateless cookie first."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING

from ...protocol.errors import InvalidState
from .engine import (
    MAX_DATAGRAM,
    RECORD_OVERHEAD,
    Association,
    HandshakeError,
    PskStore,
    describe_tls_error,
    mbedtls_tls,
    server_context,
)
from .events import DtlsEvent, HandshakeComplete, HandshakeFailed, PeerClosed
from .records import ClientHelloInfo, common_name, describe_certificate_der
from .records import parse_client_hello_untrusted as _parse_hello_untrusted

if TYPE_CHECKING:
    from .settings import DtlsServerSettings

__all__ = ["DtlsServer"]

logger = logging.getLogger("mqttv5.transport.udp")

_CLOSE_NOTIFY = 0x7880


class DtlsServer:
    """DTLS 1.2 for every peer of one UDP listener, without I/O (sans-I/O).

    Feed each datagram with :meth:`datagram_received`; it returns the plaintext datagrams of
    an established peer (one per application record). Then send :meth:`datagrams_to_send`,
    act on :meth:`events_received`, and arm a timer for :meth:`get_timer`.

    A ClientHello from an unknown address is answered with a HelloVerifyRequest and forgotten
    (RFC 6347 4.2.1): state is kept only once a ClientHello returns a valid cookie, so a
    spoofed source address costs one small reply, never memory. python-mbedtls produces the
    HelloVerifyRequest only from a connection object, so one is made for the ClientHello, its
    answer taken, and the object dropped; the cookie secret lives in the shared context.

    Attributes:
        settings: the settings it was made with.
        max_handshakes: most handshakes kept at once; a cookie-bearing ClientHello beyond
            it is dropped (the client retransmits it later).
        overhead: most bytes a record adds to a plaintext (:data:`RECORD_OVERHEAD`, 37):
            a plaintext datagram must be at most ``settings.mtu - overhead`` bytes.
        hello_verify_requests: HelloVerifyRequests sent (a counter for metrics).
        dropped: datagrams dropped before reaching an association (garbage, over the
            limits, not a ClientHello from an unknown address).
    """

    def __init__(self, settings: DtlsServerSettings, *, max_handshakes: int = 1000) -> None:
        """Make the server's mbedtls context (one cookie secret).

        Raises:
            DtlsUnavailable: python-mbedtls is not installed.
            ConfigError: no credentials, or a file cannot be loaded.
        """
        self.settings = settings
        self.max_handshakes = max_handshakes
        self.overhead = RECORD_OVERHEAD
        self.hello_verify_requests = 0
        self.dropped = 0
        self._psk_store = PskStore(settings.psk) if settings.psk else None
        self._context = server_context(settings, self._psk_store)
        self._tls = mbedtls_tls()
        self._handshakes: dict[Hashable, Association] = {}
        self._established: dict[Hashable, Association] = {}
        self._outgoing: list[tuple[bytes, Hashable]] = []
        self._events: list[DtlsEvent] = []

    # -- input

    def datagram_received(self, data: bytes, addr: Hashable, now: float) -> list[bytes]:
        """Process one datagram from ``addr``.

        Never raises on what a peer sends: garbage, truncated, replayed or out-of-epoch
        datagrams are dropped without disturbing an established peer. Then call
        :meth:`datagrams_to_send`, :meth:`events_received` and :meth:`get_timer`.

        Args:
            data: the UDP payload.
            addr: the peer's address (any hashable; the glue passes ``(host, port)``).
            now: the caller's clock (``loop.time()``).

        Returns:
            The plaintext datagrams of an established peer, one per application record;
            ``[]`` otherwise.
        """
        if not data or len(data) > MAX_DATAGRAM:
            self.dropped += 1
            return []
        try:
            return self._dispatch(data, addr, now)
        except Exception as exc:  # a bug of ours or python-mbedtls's: never the glue's problem
            logger.exception("! %s: datagram dropped, association ended", addr)
            self._abandon(addr, exc)
            return []

    def _dispatch(self, data: bytes, addr: Hashable, now: float) -> list[bytes]:
        association = self._established.get(addr)
        if association is not None:
            return self._receive_established(association, data, addr, now)
        association = self._handshakes.get(addr)
        if association is not None:
            return self._receive_handshaking(association, data, addr, now)
        self._receive_unknown(data, addr, now)
        return []

    def _receive_unknown(self, data: bytes, addr: Hashable, now: float) -> None:
        hello = _parse_hello_untrusted(data)
        if hello is None:
            self.dropped += 1
            return
        self._accept_hello(hello, data, addr, now)

    def _accept_hello(
        self, hello: ClientHelloInfo, data: bytes, addr: Hashable, now: float
    ) -> bool:
        """Cookie exchange for a ClientHello; True when it made a new handshake."""
        if hello.cookie and len(self._handshakes) >= self.max_handshakes:
            logger.debug(
                "! %s: %d handshakes under way, ClientHello dropped", addr, len(self._handshakes)
            )
            self.dropped += 1
            return False
        association = self._new_association(addr, now, hello.random)
        association.feed(data)
        try:
            association.handshake(now)
        except self._tls.HelloVerifyRequest:
            if self._answer_statelessly(association.outgoing, data, addr):
                self.hello_verify_requests += 1
            return False
        except HandshakeError as exc:
            self._refuse_hello(association, hello, data, addr, exc)
            return False
        if len(self._handshakes) >= self.max_handshakes:  # pragma: no cover (checked above)
            self.dropped += 1
            return False
        logger.debug("= %s: cookie valid, handshake started", addr)
        self._handshakes[addr] = association
        self._flush(addr, association)
        return True

    def _answer_statelessly(self, reply: list[bytes], data: bytes, addr: Hashable) -> bool:
        # Never send more than the ClientHello to an address that has not proved it is there
        # (RFC 6347 4.2.1: HelloVerifyRequest is small so as not to amplify).
        if sum(map(len, reply)) > len(data):
            self.dropped += 1
            return False
        self._outgoing.extend((datagram, addr) for datagram in reply)
        return True

    def _refuse_hello(
        self,
        association: Association,
        hello: ClientHelloInfo,
        data: bytes,
        addr: Hashable,
        exc: HandshakeError,
    ) -> None:
        # The alert goes back (never larger than the ClientHello) so that a misconfigured
        # client fails at once instead of timing out; an event only for an address that has
        # sent a cookie, so forged ClientHellos cannot flood the events.
        logger.debug("! %s: ClientHello refused: %s", addr, exc)
        self._answer_statelessly(association.outgoing, data, addr)
        if hello.cookie:
            self._events.append(HandshakeFailed(addr, str(exc)))

    def _receive_handshaking(
        self, association: Association, data: bytes, addr: Hashable, now: float
    ) -> list[bytes]:
        hello = _parse_hello_untrusted(data)
        if hello is not None and hello.random != association.hello_random:
            # The client started over: the new handshake replaces the old once its cookie is
            # valid; until then the old one goes on.
            previous = self._handshakes.pop(addr)
            if not self._accept_hello(hello, data, addr, now):
                self._handshakes[addr] = previous
            return []
        association.feed(data)
        try:
            over = association.handshake(now)
        except HandshakeError as exc:
            self._fail(addr, association, str(exc))
            return []
        self._flush(addr, association)
        if not over:
            return []
        return self._complete(addr, association)

    def _receive_established(
        self, association: Association, data: bytes, addr: Hashable, now: float
    ) -> list[bytes]:
        hello = _parse_hello_untrusted(data)
        if hello is not None:
            if hello.random != association.hello_random:
                self._reconnect(hello, data, addr, now)
            else:
                self.dropped += 1  # a replayed ClientHello of this very association
            return []
        association.feed(data)
        records, error = association.read_records()
        self._flush(addr, association)
        if error is not None:
            self._end(addr, error)
        return records

    def _reconnect(self, hello: ClientHelloInfo, data: bytes, addr: Hashable, now: float) -> None:
        # RFC 6347 4.2.8: a new ClientHello (epoch 0) on an established association: the
        # client lost its state. The old association ends only once the new ClientHello has
        # returned a valid cookie, so a forged ClientHello cannot tear it down.
        previous = self._established.pop(addr)
        if self._accept_hello(hello, data, addr, now):
            logger.debug("x %s: client reconnected, previous association ended", addr)
            self._events.append(PeerClosed(addr))
        else:
            self._established[addr] = previous

    # -- handshake outcome

    def _complete(self, addr: Hashable, association: Association) -> list[bytes]:
        try:
            identity, certificate = self._identify(association)
        except HandshakeError as exc:
            association.shutdown()
            self._flush(addr, association)
            self._fail(addr, association, str(exc))
            return []
        del self._handshakes[addr]
        self._established[addr] = association
        logger.debug(
            "= %s: established (%s), identity %r", addr, association.buffer.cipher(), identity
        )
        self._events.append(HandshakeComplete(addr, identity, certificate))
        records, error = association.read_records()
        self._flush(addr, association)
        if error is not None:
            self._end(addr, error)
        return records

    def _identify(self, association: Association) -> tuple[str | None, dict[str, object] | None]:
        """The identity a finished handshake proved: PSK identity, or certificate CN."""
        if association.psk_identity is not None:
            return association.psk_identity, None
        if self.settings.cafile is None:
            return None, None  # client certificates are not checked, so not believed
        der = association.buffer.getpeercert(binary_form=True)
        if not der:
            return None, None
        # VERIFY_OPTIONAL lets the handshake finish with a bad certificate: refuse it here.
        if not association.buffer._verified:  # type: ignore[attr-defined]
            raise HandshakeError("client certificate not trusted")
        try:
            certificate = describe_certificate_der(der)
        except ValueError as exc:
            raise HandshakeError(f"client certificate unreadable: {exc}") from exc
        return common_name(certificate), certificate

    def _fail(self, addr: Hashable, association: Association, reason: str) -> None:
        logger.debug("! %s: handshake failed: %s", addr, reason)
        self._flush(addr, association)
        self._handshakes.pop(addr, None)
        self._events.append(HandshakeFailed(addr, reason))

    def _end(self, addr: Hashable, error: BaseException) -> None:
        if getattr(error, "err", None) == _CLOSE_NOTIFY:
            logger.debug("x %s: close_notify received", addr)
        else:
            logger.debug("x %s: association ended: %s", addr, describe_tls_error(error, "client"))
        self._established.pop(addr, None)
        self._events.append(PeerClosed(addr))

    def _abandon(self, addr: Hashable, exc: Exception) -> None:
        if self._established.pop(addr, None) is not None:
            self._events.append(PeerClosed(addr))
        elif self._handshakes.pop(addr, None) is not None:
            self._events.append(HandshakeFailed(addr, f"internal error: {exc!r}"))

    # -- output and time

    def send(self, addr: Hashable, plaintext: bytes) -> None:
        """Encrypt ``plaintext`` as one application record to ``addr`` (one datagram).

        Then call :meth:`datagrams_to_send`.

        Raises:
            InvalidState: ``addr`` is not an established peer.
            DtlsError: ``plaintext`` is longer than ``settings.mtu - overhead``.
        """
        association = self._established.get(addr)
        if association is None:
            raise InvalidState(f"no established DTLS association with {addr!r}")
        association.write(plaintext)
        self._flush(addr, association)

    def datagrams_to_send(self) -> list[tuple[bytes, Hashable]]:
        """The datagrams to send since the last call, as ``(payload, address)``, in order."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def events_received(self) -> list[DtlsEvent]:
        """Handshake and closing events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (caller's clock), or None."""
        timers = [t for a in self._handshakes.values() if (t := a.timer()) is not None]
        return min(timers, default=None)

    def handle_timer(self, now: float) -> None:
        """Retransmit handshake flights and end handshakes that took too long.

        Then call :meth:`datagrams_to_send`, :meth:`events_received` and :meth:`get_timer`.
        """
        for addr, association in list(self._handshakes.items()):
            due = association.timer()
            if due is None or now < due:
                continue
            try:
                over = association.handle_timer(now)
            except HandshakeError as exc:
                self._fail(addr, association, str(exc))
                continue
            self._flush(addr, association)
            if over:
                self._complete(addr, association)

    # -- peers

    def close(self, addr: Hashable) -> None:
        """Send close_notify to ``addr`` and forget it (no event). Unknown: nothing happens."""
        association = self._established.get(addr) or self._handshakes.get(addr)
        if association is None:
            return
        association.shutdown()
        self._flush(addr, association)
        self.forget(addr)

    def forget(self, addr: Hashable) -> None:
        """Drop the state of ``addr`` without telling it (no event)."""
        self._established.pop(addr, None)
        self._handshakes.pop(addr, None)

    def is_established(self, addr: Hashable) -> bool:
        """Whether application records can flow with ``addr``."""
        return addr in self._established

    @property
    def handshakes(self) -> int:
        """Handshakes under way (state kept, cookie verified)."""
        return len(self._handshakes)

    def _new_association(self, addr: Hashable, now: float, hello_random: bytes) -> Association:
        buffer = self._context.wrap_buffers()
        # The cookie binds the client's transport address (mbedtls_ssl_set_client_transport_id).
        buffer.setcookieparam(repr(addr).encode())
        association = Association(
            buffer,
            mtu=self.settings.mtu,
            now=now,
            handshake_timeout=self.settings.handshake_timeout,
            retransmit_timeout=self.settings.retransmit_timeout,
            peer="client",
            psk_store=self._psk_store,
        )
        association.hello_random = hello_random
        return association

    def _flush(self, addr: Hashable, association: Association) -> None:
        if association.outgoing:
            self._outgoing.extend((datagram, addr) for datagram in association.outgoing)
            association.outgoing.clear()
