"""The one async stream interface every transport implements.

Client and broker talk to a :class:`Stream` and never learn whether the bytes travel over TCP,
TLS, WebSocket, UDP or the in-process simulated network. Errors of the underlying library
(``OSError``, ``ssl.SSLError``, ``asyncio.IncompleteReadError`` ...) are mapped at this boundary
to mqttv5 errors (the idea of httpcore's ``map_exceptions``): a broken established connection
becomes :class:`~mqttv5.protocol.errors.ConnectionClosed`, a failed connection attempt
:class:`TransportError`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..protocol.errors import ConnectionClosed, MqttError

__all__ = [
    "PeerInfo",
    "Stream",
    "TlsError",
    "TransportError",
    "WebSocketError",
    "map_connect_errors",
    "map_stream_errors",
]


class TransportError(MqttError):
    """A connection could not be established (refused, unreachable, timed out, bad URL).

    Attributes:
        address: the address that was tried, as ``host:port`` (or the URL).
    """

    def __init__(self, address: str, message: str) -> None:
        super().__init__(f"cannot connect to {address}: {message}")
        self.address = address
        self.message = message


class TlsError(TransportError):
    """The TLS handshake failed: a certificate was not trusted, had expired or did not match the
    host name, the server refused our client certificate (or wanted one), no TLS version or
    cipher in common, or the port does not speak TLS. ``message`` says which."""


class WebSocketError(TransportError):
    """The WebSocket upgrade failed: the server answered with an HTTP error (wrong path,
    refused Origin, wrong subprotocol) or not with HTTP at all, or it sent a frame MQTT does
    not allow. ``message`` says which; ``status`` is the HTTP status when there was one."""

    def __init__(self, address: str, message: str, status: int | None = None) -> None:
        super().__init__(address, message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is at the other end of a stream.

    Attributes:
        address: the peer's host address (IP address, or a simulated host name).
        port: the peer's port (0 when the transport has none).
        tls: certificate information of a TLS peer (``ssl.SSLSocket.getpeercert()`` shape), or
            None for a plain transport.
        transport: the transport's name (``"tcp"``, ``"tls"``, ``"ws"``, ``"wss"``,
            ``"memory"`` ...).
    """

    address: str
    port: int = 0
    tls: dict[str, object] | None = field(default=None)
    transport: str = "tcp"


@runtime_checkable
class Stream(Protocol):
    """A bidirectional byte stream.

    ``write``/``writelines`` queue bytes without waiting; ``drain`` waits until the transport's
    buffer is below its high-water mark. ``read`` returns ``b""`` at end of stream and raises
    :class:`ConnectionClosed` when the connection broke.

    A stream may also have a ``failure`` attribute (a :class:`TransportError` or None): set when
    the connection broke for a reason of the transport's own that the client should report as
    such, e.g. a TLS 1.3 server refusing our client certificate, which arrives as an alert on
    the first read, after the handshake looked complete.
    """

    peer: PeerInfo

    async def read(self) -> bytes:
        """Bytes received, at least one, or ``b""`` when the peer closed the stream.

        Raises:
            ConnectionClosed: the connection broke (reset, aborted).
        """
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes for sending (never blocks). Raises :class:`ConnectionClosed` if closed."""
        ...

    def writelines(self, data: list[bytes]) -> None:
        """Queue several byte strings at once (one system call where the transport can)."""
        ...

    def write_buffer_size(self) -> int:
        """Bytes queued and not yet handed to the network (used for high-water marks)."""
        ...

    async def drain(self) -> None:
        """Wait until the write buffer is below the transport's high-water mark."""
        ...

    async def close(self) -> None:
        """Flush what was written, then close the stream gracefully (idempotent)."""
        ...

    def abort(self) -> None:
        """Close at once, discarding buffered data (idempotent)."""
        ...


_STREAM_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, RuntimeError)


@contextmanager
def map_stream_errors() -> Iterator[None]:
    """Turn the I/O errors of an established stream into :class:`ConnectionClosed`."""
    try:
        yield
    except ConnectionClosed:
        raise
    except _STREAM_ERRORS as exc:
        raise ConnectionClosed(reason_string=str(exc) or type(exc).__name__) from exc


@contextmanager
def map_connect_errors(address: str) -> Iterator[None]:
    """Turn the errors of a connection attempt into :class:`TransportError`."""
    try:
        yield
    except MqttError:
        raise
    except TimeoutError as exc:
        raise TransportError(address, "timed out") from exc
    except OSError as exc:
        text = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise TransportError(address, text) from exc
