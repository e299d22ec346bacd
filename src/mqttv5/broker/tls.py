"""TLS for the broker's listeners (``tls`` and ``wss``).

- :func:`build_server_context`: an :class:`ssl.SSLContext` from a listener's settings
  (certificate and key, CA for client certificates, ``require_certificate``, minimum version,
  ciphers, ALPN, CRL). Problems are :class:`~mqttv5.protocol.errors.ConfigError` naming the key.
- :class:`ServerTls`: a listener's current context; SIGHUP builds a new one from the same files
  (renewed certificate, new CRL) and new handshakes use it, while established connections keep
  theirs. A file that fails to load keeps the previous context in force.
- :class:`TlsAdapter`: the TLS layer of one connection, our own over :class:`ssl.MemoryBIO`, so
  that a failed handshake sends OpenSSL's alert to the client before closing (asyncio's own
  layer closes without it) and is logged with the peer and its cause. It presents a
  :class:`LayeredTransport` to the inner protocol: a
  :class:`~mqttv5.broker.handler.ClientHandler`, or the WebSocket adapter for ``wss``.
- :class:`PendingHandshakes`: per listener, bounds handshakes by ``connect_timeout`` and drops
  those still running at shutdown (one task per listener, not one per connection).
- :class:`CertificateAuthenticator`: the client certificate's Common Name (or whole subject)
  becomes the user name, as Mosquitto's ``use_identity_as_username`` /
  ``use_subject_as_username``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.reason_codes import ReasonCode
from mqttv5.transport.tls import TLS_VERSIONS, describe_ssl_error, set_nodelay

from .auth import Authenticator, AuthRequest, AuthResult
from .authn import CompositeAuthenticator
from .config import BrokerConfig, ListenerSettings

__all__ = [
    "DEFAULT_ALPN",
    "CertificateAuthenticator",
    "LayeredTransport",
    "PendingHandshakes",
    "ServerTls",
    "TlsAdapter",
    "build_server_context",
    "certificate_username",
    "subject_rfc2253",
    "with_certificate_auth",
]

log = logging.getLogger("mqttv5.broker")

#: Seconds a connection whose handshake failed stays half-open for the client to read the alert.
_LINGER: Final = 2.0

#: ALPN offered when a listener's ``alpn`` is unset: MQTT's IANA-registered name on ``tls``;
#: HTTP/1.1 on ``wss``, since a WebSocket upgrade is an HTTP/1.1 request.
DEFAULT_ALPN: Final = {"tls": ("mqtt",), "wss": ("http/1.1",)}

# --- contexts -------------------------------------------------------------------------------------


def build_server_context(settings: ListenerSettings) -> ssl.SSLContext:
    """The server-side SSL context of a ``tls`` or ``wss`` listener.

    Client certificates are required with ``require_certificate``, requested (and verified
    when sent) when a certificate may name the user, and not requested otherwise, as Mosquitto.

    Raises:
        ConfigError: a file cannot be loaded (the key names it: ``certfile``, ``cafile`` ...;
            the source is the listener).
    """
    where = settings.label
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[settings.tls_version]
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    assert settings.certfile is not None  # validate_config made sure
    assert settings.keyfile is not None
    try:
        ctx.load_cert_chain(settings.certfile, settings.keyfile, password=_no_password)
    except (OSError, ValueError) as exc:
        message = f"cannot load {settings.certfile} with {settings.keyfile}: {_reason(exc)}"
        raise ConfigError("certfile", message, where) from exc
    if settings.cafile is not None or settings.capath is not None:
        try:
            ctx.load_verify_locations(settings.cafile, settings.capath)
        except (OSError, ValueError) as exc:
            key = "cafile" if settings.cafile is not None else "capath"
            message = f"cannot load CA certificates from {getattr(settings, key)}: {_reason(exc)}"
            raise ConfigError(key, message, where) from exc
    if settings.crlfile is not None:
        try:
            ctx.load_verify_locations(settings.crlfile)
        except (OSError, ValueError) as exc:
            message = f"cannot load {settings.crlfile}: {_reason(exc)}"
            raise ConfigError("crlfile", message, where) from exc
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if settings.require_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif settings.use_identity_as_username or settings.use_subject_as_username:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if settings.ciphers is not None:
        try:
            ctx.set_ciphers(settings.ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(
                "ciphers", f"no usable cipher in {settings.ciphers!r}", where
            ) from exc
    alpn = settings.alpn if settings.alpn is not None else DEFAULT_ALPN.get(settings.type, ())
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal of a daemon: refuse it.
    raise ValueError("the private key is encrypted (keyfile must not be)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class ServerTls:
    """A listener's TLS context, rebuilt from its files on SIGHUP.

    Args:
        settings: the listener (its files are re-read, its other settings kept).
    """

    def __init__(self, settings: ListenerSettings) -> None:
        self.settings = settings
        self.context = build_server_context(settings)

    def reload(self, old: BrokerConfig, new: BrokerConfig) -> list[str]:
        """Re-read the certificate, key, CA and CRL files (a :class:`ReloadRegistry` applier).

        New handshakes use the new context; established connections are not disturbed. A file
        that fails to load is logged and the previous context stays in force.
        """
        try:
            self.context = build_server_context(self.settings)
        except ConfigError as exc:
            log.error(
                "TLS files of %s not reloaded, the previous ones stay in force: %s: %s",
                self.settings.label,
                exc.key,
                exc.message,
            )
        else:
            log.info("Reloaded the TLS certificate, key, CA and CRL of %s.", self.settings.label)
        return []  # listener changes are reported by the broker's core applier


# --- pending handshakes ---------------------------------------------------------------------------


class _Handshaking(Protocol):
    """A connection still in its TLS handshake or WebSocket upgrade."""

    def handshake_timed_out(self) -> None: ...

    def abort_handshake(self) -> None: ...


class PendingHandshakes:
    """The connections of one listener still in their TLS handshake or WebSocket upgrade.

    One task per listener (not one per connection) closes those that take longer than
    ``timeout`` (the broker's ``connect_timeout``, after which an MQTT connection that has not
    sent CONNECT is closed too) and, cancelled at shutdown, aborts those still pending.

    Args:
        timeout: seconds a handshake may take.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._deadlines: dict[_Handshaking, float] = {}

    def add(self, connection: _Handshaking, seconds: float | None = None) -> None:
        """A handshake begins; it has ``seconds`` (default: ``timeout``) to end."""
        now = asyncio.get_running_loop().time()
        self._deadlines[connection] = now + (self.timeout if seconds is None else seconds)

    def discard(self, connection: _Handshaking) -> None:
        """A handshake ended (done, failed or the connection is gone)."""
        self._deadlines.pop(connection, None)

    def __len__(self) -> int:
        return len(self._deadlines)

    async def run(self) -> None:
        """Sweep for timed-out handshakes until cancelled; then abort the pending ones."""
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.timeout / 4)
        try:
            while True:
                await asyncio.sleep(interval)
                now = loop.time()
                late = [c for c, deadline in self._deadlines.items() if deadline <= now]
                for connection in late:
                    self._deadlines.pop(connection, None)
                    connection.handshake_timed_out()
        finally:
            pending, self._deadlines = list(self._deadlines), {}
            for connection in pending:
                connection.abort_handshake()


# --- a transport over another one -----------------------------------------------------------------


class _Layer(Protocol):
    """What :class:`LayeredTransport` needs of the adapter under it (TLS or WebSocket)."""

    transport: asyncio.Transport | None
    inner: asyncio.Protocol | None
    closing: bool

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def extra_info(self, name: str) -> tuple[bool, Any]: ...


class LayeredTransport(asyncio.Transport):
    """What an inner protocol (the ClientHandler) sees when its bytes go through an adapter
    (TLS, WebSocket) rather than straight to the socket: writes go to the adapter, flow control
    and addresses come from the network transport underneath (one level down at a time, so
    WebSocket over TLS works by stacking)."""

    def __init__(self, layer: _Layer) -> None:
        super().__init__()
        assert layer.transport is not None
        self._layer = layer
        self._transport = layer.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The adapter's own entries (``peercert`` for TLS ...), else the network transport's."""
        found, value = self._layer.extra_info(name)
        if found:
            return value
        return self._transport.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` through the adapter."""
        if data:
            self._layer.send(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        """Send the pieces at once (one TLS write, one WebSocket frame)."""
        data = b"".join(list_of_data)
        if data:
            self._layer.send(data)

    def close(self) -> None:
        """Close gracefully (TLS close_notify, WebSocket close frame), then the connection."""
        self._layer.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._layer.closing = True
        self._transport.abort()

    def is_closing(self) -> bool:
        """True once closing started on either layer."""
        return self._layer.closing or self._transport.is_closing()

    def pause_reading(self) -> None:
        """Stop reading from the network."""
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the network again."""
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        """Whether the network transport is reading."""
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Flow-control marks of the network transport (the adapter writes through at once)."""
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        """Bytes waiting in the network transport."""
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The network transport's flow-control marks."""
        return self._transport.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        """No half-close through an adapter."""
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the inner protocol."""
        self._layer.inner = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The inner protocol."""
        inner = self._layer.inner
        assert inner is not None
        return inner


# --- TLS ------------------------------------------------------------------------------------------


class WrappingProtocol(asyncio.Protocol):
    """What the TLS and WebSocket adapters share: an inner protocol (the MQTT handler) behind
    a layer, created once the layer's handshake is done, and the listener's handshake tracker.
    """

    inner: asyncio.Protocol | None
    pending: PendingHandshakes
    closing: bool

    def _finish(self, exc: Exception | None) -> None:
        """End the connection: finish the inner protocol (its Will and session follow MQTT's
        rules) and stop tracking the handshake."""
        self.closing = True
        self.pending.discard(self)  # type: ignore[arg-type]
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        """The socket's buffer is full: tell the inner protocol (it drops QoS 0, queues QoS 1/2)."""
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        """The socket's buffer drained."""
        if self.inner is not None:
            self.inner.resume_writing()


class TlsAdapter(WrappingProtocol):
    """One connection of a TLS listener: the TLS layer between the socket and the inner protocol.

    Our own layer over :class:`ssl.MemoryBIO` rather than asyncio's (``create_server(ssl=...)``
    or ``start_tls``), for one reason: when a handshake fails, asyncio closes the connection
    without sending OpenSSL's alert, so the client only sees the connection close. Here the
    alert goes out first (``certificate required``, ``unknown CA``, ``certificate expired``),
    and the failure is logged with the peer and its cause (asyncio logs it in debug mode only).

    Args:
        tls: the listener's context holder (read at each handshake, so a reload applies).
        inner: makes the protocol that takes over once the handshake is done (a ClientHandler,
            or the WebSocket adapter for ``wss``).
        pending: the listener's handshakes in progress (timeout, shutdown).
        label: the listener, for log lines.
    """

    _READ_SIZE: Final = 256 * 1024

    def __init__(
        self,
        tls: ServerTls,
        inner: Callable[[], asyncio.Protocol],
        pending: PendingHandshakes,
        label: str,
    ) -> None:
        self.tls = tls
        self.make_inner = inner
        self.pending = pending
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        self.closing = False
        self.peer = "?"
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = tls.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._peercert: dict[str, Any] | None = None
        self._received = False

    # --- towards the network ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Wait for the ClientHello (the handshake is bounded by ``connect_timeout``)."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        set_nodelay(transport)
        self.peer = _peer(transport)
        self.pending.add(self)

    def data_received(self, data: bytes) -> None:
        """Decrypt; during the handshake, answer it."""
        if self.inner is None:
            if self.closing:
                return  # a failed handshake, lingering until the client has read the alert
            self._received = True
            self._incoming.write(data)
            if not self._handshake():
                return
        else:
            self._incoming.write(data)
        self._read()

    def eof_received(self) -> bool | None:
        """The peer half-closed the TCP connection: end (TLS has no half-close)."""
        inner = self.inner
        if inner is not None:
            inner.eof_received()
        elif self.closing:
            self.pending.discard(self)  # the client read the alert and left
        elif self._received:
            # A client that does not trust our certificate may just close (Python's asyncio does)
            self._failed("the client closed the connection during the handshake")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Finish the inner protocol (its Will and session follow MQTT's rules)."""
        if self.inner is None and self._received and not self.closing:
            cause = describe_ssl_error(exc, "client") if exc else "connection closed"
            log.info("TLS handshake with %s on %s failed: %s.", self.peer, self.label, cause)
        self._finish(exc)

    # --- the handshake ----------------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Advance the handshake; True once it is done and the inner protocol attached."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, ValueError) as exc:
            self._flush()  # OpenSSL's alert tells the client why
            self._failed(describe_ssl_error(exc, "client"))
            return False
        self._flush()  # last flight, and TLS 1.3 session tickets
        self.pending.discard(self)
        self._peercert = self._ssl.getpeercert() or None
        inner = self.inner = self.make_inner()
        inner.connection_made(LayeredTransport(self))
        return not self.closing

    def _failed(self, cause: str) -> None:
        log.info("TLS handshake with %s on %s failed: %s.", self.peer, self.label, cause)
        self.closing = True
        transport = self.transport
        if transport is None or transport.is_closing():
            self.pending.discard(self)
            return
        if transport.can_write_eof():
            # The alert, then FIN; closing at once would answer the client's next bytes (its
            # CONNECT) with a reset that can destroy the alert before the client reads it.
            transport.write_eof()
            self.pending.add(self, _LINGER)
        else:
            self.pending.discard(self)
            transport.close()

    def handshake_timed_out(self) -> None:
        """Called by :class:`PendingHandshakes`."""
        if self.closing:  # done lingering after a failure
            if self.transport is not None:
                self.transport.abort()
        elif self.inner is None:
            self._failed("handshake timed out" if self._received else "no handshake started")

    def abort_handshake(self) -> None:
        """Called by :class:`PendingHandshakes` at shutdown."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # --- data -------------------------------------------------------------------------------------

    def _read(self) -> None:
        chunks: list[bytes] = []
        eof = False
        error: ssl.SSLError | None = None
        read = self._ssl.read
        try:
            while True:
                chunk = read(self._READ_SIZE)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except ssl.SSLError as exc:
            error = exc
        if self._outgoing.pending:
            self._flush()  # e.g. a TLS 1.3 key update answer
        inner = self.inner
        if chunks and inner is not None and not self.closing:
            inner.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if error is not None and not self.closing:
            log.info(
                "TLS error from %s on %s: %s.", self.peer, self.label, describe_ssl_error(error)
            )
            self.closing = True
            assert self.transport is not None
            self.transport.close()
        elif eof and inner is not None:
            inner.eof_received()  # close_notify: the client closed its side
            self.close()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self.transport is not None:
            self.transport.write(data)

    def send(self, data: bytes) -> None:
        """Encrypt and send (the inner protocol's write)."""
        if self.closing:
            return  # as a closing TCP transport: writes after close are dropped
        view = memoryview(data)
        write = self._ssl.write
        try:
            while view:
                view = view[write(view) :]
        except ssl.SSLError as exc:
            log.info("TLS error sending to %s: %s.", self.peer, describe_ssl_error(exc))
            self.closing = True
        self._flush()
        if self.closing and self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """close_notify, then close the connection once the buffer is written out."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        if self.inner is not None:
            try:
                self._ssl.unwrap()
            except ssl.SSLError:
                pass  # SSLWantReadError: we do not wait for the client's close_notify
            self._flush()
        self.transport.close()

    def extra_info(self, name: str) -> tuple[bool, Any]:
        """``peercert``, ``ssl_object``, ``sslcontext``, ``cipher``, ``compression``."""
        if name == "peercert":
            return True, self._peercert
        if name == "ssl_object":
            return True, self._ssl
        if name == "sslcontext":
            return True, self._ssl.context
        if name == "cipher":
            return True, self._ssl.cipher()
        if name == "compression":
            return True, self._ssl.compression()
        return False, None


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return "?"


# --- certificate authentication -------------------------------------------------------------------

# Attribute names as RFC 2253 / OpenSSL's XN_FLAG_RFC2253 write them (Mosquitto's subject
# format); others appear under the long name Python reports.
_SHORT_NAMES: Final = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _rdns(cert: dict[str, Any]) -> list[list[tuple[str, str]]]:
    subject = cert.get("subject") or ()
    return [[(str(name), str(value)) for name, value in rdn] for rdn in subject]


def _escape(value: str) -> str:
    # RFC 2253 section 2.4: escape , + " \ < > ; anywhere, # at the start, spaces at the ends.
    out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def subject_rfc2253(cert: dict[str, Any]) -> str:
    """The certificate's subject as RFC 2253 writes it: most specific first, ``CN=a,O=b,C=c``."""
    return ",".join(
        "+".join(f"{_SHORT_NAMES.get(k, k)}={_escape(v)}" for k, v in rdn)
        for rdn in reversed(_rdns(cert))
    )


def certificate_username(cert: dict[str, Any], use_subject: bool = False) -> str | None:
    """The user name a certificate stands for: its (last) Common Name, or with ``use_subject``
    its whole subject in RFC 2253 form; None when there is no such name."""
    if use_subject:
        return subject_rfc2253(cert) or None
    names = [v for rdn in _rdns(cert) for k, v in rdn if k == "commonName"]
    return names[-1] if names else None


class CertificateAuthenticator:
    """Authentication by the client's verified TLS certificate.

    The TLS handshake has verified the certificate (chain to ``cafile``, dates, CRL); this
    provider only turns it into a user name: the Common Name, or the whole subject with
    ``use_subject``. A client that presents a certificate is accepted under that name, whatever
    user name and password its CONNECT carries (Mosquitto's ``use_identity_as_username``).

    Usable alone (an :class:`~mqttv5.broker.auth.Authenticator`: a client without a
    certificate is refused with 0x87 Not authorized) or inside
    :class:`~mqttv5.broker.authn.CompositeAuthenticator` (an ``AuthProvider``: no certificate,
    or an enhanced-authentication exchange, is "no opinion", so the next provider decides).
    """

    def __init__(self, use_subject: bool = False) -> None:
        self.use_subject = use_subject

    def check(self, request: AuthRequest) -> AuthResult | None:
        """Accept a client with a certificate under its name; None without one."""
        cert = request.peer_certificate
        if not cert or request.auth is not None:
            return None
        if request.connect.properties.authentication_method is not None:
            return None
        name = certificate_username(cert, self.use_subject)
        if name is None:
            return AuthResult(
                ReasonCode.NOT_AUTHORIZED, reason_string="client certificate has no common name"
            )
        return AuthResult(ReasonCode.SUCCESS, username=name)

    def authenticate(self, request: AuthRequest) -> AuthResult:
        """As :meth:`check`, refusing clients it has no opinion about."""
        answer = self.check(request)
        if answer is not None:
            return answer
        if request.auth is not None or request.connect.properties.authentication_method:
            return AuthResult(ReasonCode.BAD_AUTHENTICATION_METHOD)
        return AuthResult(
            ReasonCode.NOT_AUTHORIZED, reason_string="a client certificate is required"
        )


def with_certificate_auth(
    settings: ListenerSettings, base: Authenticator, allow_anonymous: bool
) -> Authenticator:
    """The listener's authenticator with certificate authentication in front, when its
    ``use_identity_as_username`` or ``use_subject_as_username`` is set; else ``base``.

    A client with a certificate is accepted under the certificate's name; one without (only
    possible without ``require_certificate``) is left to ``base``.
    """
    if not (settings.use_identity_as_username or settings.use_subject_as_username):
        return base
    cert = CertificateAuthenticator(use_subject=settings.use_subject_as_username)
    return CompositeAuthenticator([cert, base], "first", allow_anonymous=allow_anonymous)


def with_identity_auth(base: Authenticator, allow_anonymous: bool) -> Authenticator:
    """``base`` with the DTLS identity in front: a client whose DTLS handshake proved a PSK
    identity or a certificate is accepted under that name (the certificate's Common Name);
    ``base`` decides the others. Already composed authenticators are not wrapped twice."""
    if isinstance(base, CompositeAuthenticator) and any(
        isinstance(p, CertificateAuthenticator) for p in base.providers
    ):
        return base
    return CompositeAuthenticator(
        [CertificateAuthenticator(), base], "first", allow_anonymous=allow_anonymous
    )
