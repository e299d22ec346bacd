"""TLS transport (``mqtts://``) on the standard library's :mod:`ssl`, and the TLS vocabulary the
broker shares: :func:`describe_ssl_error` turns OpenSSL's reasons into a sentence that says
what went wrong and on which side.

:class:`TlsConfig` says how the client verifies the server (a CA file, or the system's CAs) and
which certificate it shows (mutual TLS)::

    client.set_tls_config(ca_file="ca.pem", cert_file="client.pem", key_file="client.key")
    await client.connect("mqtts://broker.example:8883")

A handshake failure is raised as :class:`~mqttv5.transport.base.TlsError` whose ``message``
names the cause (``server certificate not trusted: certificate has expired``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Final, cast

from ..protocol.errors import ConnectionClosed
from .base import PeerInfo, TlsError, map_connect_errors
from .tcp import TcpStream, _StreamProtocol

__all__ = [
    "DEFAULT_PORT",
    "TLS_VERSIONS",
    "TlsConfig",
    "TlsStream",
    "describe_ssl_error",
    "open_tls",
]

DEFAULT_PORT: Final = 8883
_READ_LIMIT: Final = 1 << 20
_HIGH_WATER: Final = 1 << 20

#: ``tls_version`` / ``min_version`` names and the :class:`ssl.TLSVersion` they mean.
TLS_VERSIONS: Final = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL reason codes (``SSLError.reason``) and what they mean to an MQTT user. "{peer}" is the
# other side ("client" or "server").
_REASONS: Final = {
    "WRONG_VERSION_NUMBER": "not TLS: plain MQTT (or another protocol) on a TLS port?",
    "HTTP_REQUEST": "not TLS: plain HTTP on a TLS port",
    "UNEXPECTED_EOF_WHILE_READING": "the {peer} closed the connection during the handshake",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate, and one is required",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the {peer} does not trust our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the {peer} rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the {peer} rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the {peer} says our certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the {peer} says our certificate is revoked",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the {peer} refused the handshake (no cipher or version "
    "in common?)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common with the {peer}",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common with the {peer}",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version in common with the {peer}",
    "NO_SHARED_CIPHER": "no cipher in common with the {peer}",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "no ALPN protocol in common with the {peer}",
    "TLSV1_ALERT_INTERNAL_ERROR": "the {peer} reported an internal error",
}


def describe_ssl_error(exc: BaseException, peer: str = "peer") -> str:
    """One sentence for a failed handshake or a TLS alert, naming the cause.

    Args:
        exc: the exception (``ssl.SSLError``, ``ssl.SSLCertVerificationError``, an ``OSError``
            or ``TimeoutError`` raised during the handshake).
        peer: who is at the other end, for the sentence ("client" or "server").
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{peer} certificate not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _REASONS:
            return _REASONS[reason].format(peer=peer) + f" ({reason.lower()})"
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return f"the {peer} closed the connection during the handshake"
        return reason.lower().replace("_", " ") or str(exc)
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    if isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc):
        return "handshake timed out"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return f"the {peer} reset the connection during the handshake (not a TLS port?)"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """How a client secures its connection.

    Attributes:
        ca_file: CA certificates (PEM) the server's certificate must chain to. None (and no
            ``ca_path``): the system's trusted CAs.
        ca_path: a directory of CA certificates (OpenSSL hashed names).
        cert_file: our certificate (PEM) for mutual TLS; may hold the key too.
        key_file: the private key of ``cert_file`` (PEM, not encrypted).
        insecure: do not check that the certificate names the server's host (the chain is
            still verified), as mosquitto_pub's ``--insecure``.
        server_hostname: the name sent as SNI and checked against the certificate; None: the
            URL's host.
        alpn: ALPN protocols offered; None: ``("mqtt",)`` for ``mqtts://``,
            ``("http/1.1",)`` for ``wss://``; ``()`` offers none.
        min_version: oldest TLS version accepted (``"tlsv1.2"`` or ``"tlsv1.3"``).
        ciphers: OpenSSL cipher list for TLS 1.2; None: Python's defaults.
        context: a ready :class:`ssl.SSLContext` to use instead of building one from the fields
            above (``server_hostname`` still applies).
    """

    ca_file: str | None = None
    ca_path: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    server_hostname: str | None = None
    alpn: tuple[str, ...] | None = None
    min_version: str = "tlsv1.2"
    ciphers: str | None = None
    context: ssl.SSLContext | None = None

    def create_context(self, default_alpn: tuple[str, ...] = ("mqtt",)) -> ssl.SSLContext:
        """Build the client's :class:`ssl.SSLContext` (or return ``context``).

        Raises:
            TlsError: a file cannot be read or is not what it should be (the address is the
                file).
        """
        if self.context is not None:
            return self.context
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file, capath=self.ca_path)
        except (OSError, ValueError) as exc:
            where = self.ca_file or self.ca_path or "CA"
            raise TlsError(where, f"cannot load CA certificates: {_os_reason(exc)}") from exc
        if self.min_version not in TLS_VERSIONS:
            raise TlsError("min_version", f"must be one of {', '.join(TLS_VERSIONS)}")
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
            except (OSError, ValueError) as exc:
                message = f"cannot load client certificate and key: {_os_reason(exc)}"
                raise TlsError(self.cert_file, message) from exc
        if self.insecure:
            ctx.check_hostname = False
        if self.ciphers is not None:
            try:
                ctx.set_ciphers(self.ciphers)
            except ssl.SSLError as exc:
                raise TlsError("ciphers", f"no usable cipher in {self.ciphers!r}") from exc
        alpn = default_alpn if self.alpn is None else self.alpn
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal: fail instead.
    raise ValueError("the private key is encrypted; give an unencrypted key")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        name = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{name}"
    return str(exc)


class _TlsProtocol(_StreamProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses


class TlsStream(TcpStream):
    """A connected TLS socket as a :class:`~mqttv5.transport.base.Stream`.

    ``peer.tls`` holds the server's certificate (``getpeercert()`` shape). ``failure`` is set
    when the connection ends with a TLS alert: a TLS 1.3 server refusing our certificate (or
    wanting one) says so only after the handshake, on the first read. A TLS 1.3 connection the
    server drops before sending any byte gets a ``failure`` too: servers that close without
    the alert, or whose reset overtakes it, reject certificates that way.
    """

    def __init__(
        self, transport: asyncio.Transport, protocol: _StreamProtocol, address: str
    ) -> None:
        super().__init__(transport, protocol)
        cert = transport.get_extra_info("peercert")
        self.peer = PeerInfo(self.peer.address, self.peer.port, cert or None, "tls")
        self.address = address
        self.failure: TlsError | None = None
        ssl_object = transport.get_extra_info("ssl_object")
        self._tls13 = ssl_object is not None and ssl_object.version() == "TLSv1.3"
        self._received = False

    async def read(self) -> bytes:
        """Everything received since the last call (``b""`` at end of stream).

        Raises:
            ConnectionClosed: the connection broke; a TLS alert also sets ``failure``.
        """
        try:
            data = await super().read()
        except ConnectionClosed as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError):
                self.failure = TlsError(self.address, describe_ssl_error(cause, "server"))
                raise ConnectionClosed(reason_string=self.failure.message) from cause
            self._closed_early()
            raise
        if data:
            self._received = True
        else:
            self._closed_early()
        return data

    def _closed_early(self) -> None:
        if self._tls13 and not self._received and self.failure is None:
            self.failure = TlsError(
                self.address,
                "the server closed the connection right after the TLS handshake, before any "
                "MQTT data: it may require a client certificate, or refuse ours",
            )


async def open_tls(
    host: str,
    port: int = DEFAULT_PORT,
    *,
    tls: TlsConfig | None = None,
    connect_timeout: float | None = 10.0,
    read_limit: int = _READ_LIMIT,
) -> TlsStream:
    """Connect to ``host:port`` and complete the TLS handshake.

    Raises:
        TlsError: the handshake failed (the message names the cause), or a file of ``tls``
            cannot be loaded.
        TransportError: the TCP connection was refused, timed out or the host is unknown.
    """
    tls = tls if tls is not None else TlsConfig()
    ctx = tls.create_context()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return await _connect(host, port, tls, ctx, address, connect_timeout, read_limit)


async def _connect(
    host: str,
    port: int,
    tls: TlsConfig,
    ctx: ssl.SSLContext,
    address: str,
    connect_timeout: float | None,
    read_limit: int,
) -> TlsStream:
    loop = asyncio.get_running_loop()
    with map_connect_errors(address):
        try:
            async with asyncio.timeout(connect_timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _TlsProtocol(read_limit),
                    host,
                    port,
                    ssl=ctx,
                    server_hostname=tls.server_hostname or host,
                    ssl_handshake_timeout=connect_timeout,
                )
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            raise TlsError(address, describe_ssl_error(exc, "server")) from exc
        except ConnectionAbortedError as exc:
            raise TlsError(address, describe_ssl_error(exc, "server")) from exc
    set_nodelay(transport)
    transport.set_write_buffer_limits(high=_HIGH_WATER)
    return TlsStream(transport, protocol, address)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on the transport's socket: we coalesce writes ourselves (no Nagle)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
