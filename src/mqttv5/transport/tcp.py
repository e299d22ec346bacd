"""TCP transport: :class:`TcpStream` over an ``asyncio.Protocol`` with TCP_NODELAY set.

A small protocol class instead of ``asyncio.open_connection``'s StreamReader: everything that
arrived since the last :meth:`TcpStream.read` is returned at once (one decode pass per loop tick
instead of one per segment), and reading pauses while more than ``read_limit`` bytes wait.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final, cast

from ..protocol.errors import ConnectionClosed
from .base import PeerInfo, map_connect_errors

__all__ = ["DEFAULT_PORT", "TcpStream", "open_tcp"]

DEFAULT_PORT: Final = 1883
_READ_LIMIT: Final = 1 << 20
_HIGH_WATER: Final = 1 << 20


class _StreamProtocol(asyncio.Protocol):
    """Buffers received data for :class:`TcpStream` and implements write flow control."""

    def __init__(self, read_limit: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes | bytearray | memoryview] = []
        self.buffered = 0
        self.read_limit = read_limit
        self.eof = False
        self.error: BaseException | None = None
        self.reader: asyncio.Future[None] | None = None
        self.paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > self.read_limit and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        self._release_drain()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._release_drain()

    def _release_drain(self) -> None:
        waiters = self.drain_waiters
        self.drain_waiters = []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _wake(self) -> None:
        fut = self.reader
        if fut is not None:
            self.reader = None
            if not fut.done():
                fut.set_result(None)


class TcpStream:
    """A connected TCP socket as a :class:`~mqttv5.transport.base.Stream`."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = PeerInfo(str(peer[0]), int(peer[1]), None, "tcp")
        self._closed = False

    async def read(self) -> bytes:
        """Everything received since the last call (``b""`` at end of stream)."""
        proto = self._protocol
        while not proto.chunks:
            if proto.error is not None:
                raise ConnectionClosed(reason_string=str(proto.error)) from proto.error
            if proto.eof or self._closed:
                return b""
            fut = asyncio.get_running_loop().create_future()
            proto.reader = fut
            await fut
        chunks = proto.chunks
        first = chunks[0]
        data = first if len(chunks) == 1 and type(first) is bytes else b"".join(chunks)
        proto.chunks = []
        proto.buffered = 0
        if proto.reading_paused:
            proto.reading_paused = False
            self._transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        """Queue bytes for sending."""
        if self._closed or self._transport.is_closing():
            raise ConnectionClosed(reason_string="stream closed")
        self._transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        """Queue several byte strings (joined into one system call)."""
        if self._closed or self._transport.is_closing():
            raise ConnectionClosed(reason_string="stream closed")
        self._transport.write(b"".join(data) if len(data) > 1 else data[0])

    def write_buffer_size(self) -> int:
        """Bytes waiting in the transport's write buffer."""
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait while the write buffer is above its high-water mark."""
        proto = self._protocol
        if proto.error is not None:
            raise ConnectionClosed(reason_string=str(proto.error)) from proto.error
        if not proto.paused or self._transport.is_closing():
            return
        fut = asyncio.get_running_loop().create_future()
        proto.drain_waiters.append(fut)
        await fut

    async def close(self) -> None:
        """Flush and close (waits a little for the FIN to go out)."""
        if self._closed:
            return
        self._closed = True
        self._protocol._wake()
        transport = self._transport
        if transport.is_closing():
            return
        transport.close()
        for _ in range(20):  # let the loop write out what is buffered
            if self._protocol.transport is None or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0)

    def abort(self) -> None:
        """Close at once, discarding buffered data."""
        self._closed = True
        self._protocol._wake()
        self._transport.abort()


async def open_tcp(
    host: str,
    port: int = DEFAULT_PORT,
    *,
    connect_timeout: float | None = 10.0,
    read_limit: int = _READ_LIMIT,
) -> TcpStream:
    """Connect to ``host:port`` and return the stream (TCP_NODELAY set).

    Raises:
        TransportError: the connection was refused, timed out or the host is unknown.
    """
    loop = asyncio.get_running_loop()
    with map_connect_errors(f"{host}:{port}"):
        async with asyncio.timeout(connect_timeout):
            transport, protocol = await loop.create_connection(
                lambda: _StreamProtocol(read_limit), host, port
            )
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            # Nagle adds up to 40 ms per packet; we coalesce writes ourselves instead.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    transport.set_write_buffer_limits(high=_HIGH_WATER)
    return TcpStream(transport, protocol)
