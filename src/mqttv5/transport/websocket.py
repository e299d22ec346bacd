"""WebSocket transport (``ws://`` and ``wss://``) on the sans-I/O core of the ``websockets``
library (:class:`websockets.client.ClientProtocol`), inside our own ``asyncio.Protocol``.

The stream offers the subprotocol ``mqtt`` [MQTT-6.0.0-3] and sends each write as one binary
frame [MQTT-6.0.0-1]; :meth:`WebSocketStream.read` returns the payload of every binary frame
received since the last call, whatever the frame boundaries (a frame may hold several packets,
a packet may span frames [MQTT-6.0.0-2]). A refused upgrade raises
:class:`~mqttv5.transport.base.WebSocketError` naming the HTTP status and the server's reason.

Needs the ``websockets`` package (``pip install 'mqttv5[ws]'``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Final

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import BINARY, CONT, TEXT, CloseCode, Frame
from websockets.http11 import Response
from websockets.protocol import OPEN
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from ..protocol.errors import ConnectionClosed
from .base import PeerInfo, TlsError, WebSocketError, map_connect_errors
from .tcp import TcpStream, _StreamProtocol
from .tls import TlsConfig, describe_ssl_error, set_nodelay

__all__ = ["DEFAULT_PATH", "SUBPROTOCOLS", "WebSocketStream", "open_websocket"]

#: The path used when the URL has none (the convention; Mosquitto accepts any).
DEFAULT_PATH: Final = "/mqtt"
#: What the client offers [MQTT-6.0.0-3].
SUBPROTOCOLS: Final = ("mqtt",)
_READ_LIMIT: Final = 1 << 20
_HIGH_WATER: Final = 1 << 20


class _ClientProtocol(_StreamProtocol):
    """Feeds received bytes to the WebSocket parser; keeps binary payloads for ``read``
    (buffering, wake-ups and write flow control as the TCP stream's protocol)."""

    def __init__(self, ws: ClientProtocol, read_limit: int) -> None:
        super().__init__(read_limit)
        self.ws = ws
        self.failure: WebSocketError | None = None
        # the server's answer to the upgrade; None when it was not HTTP (handshake_exc says)
        self.response: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        self.address = ""

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                opcode = event.opcode
                if opcode is BINARY or opcode is CONT:
                    self.chunks.append(event.data)
                    self.buffered += len(event.data)
                elif opcode is TEXT and ws.state is OPEN:
                    # [MQTT-6.0.0-1] MQTT packets travel in binary frames only
                    ws.fail(CloseCode.UNSUPPORTED_DATA, "MQTT needs binary frames")
                    self.failure = WebSocketError(self.address, "the server sent a text frame")
                    self.eof = True  # nothing more is read from this connection
            elif isinstance(event, Response) and not self.response.done():
                self.response.set_result(event)
        if ws.handshake_exc is not None and not self.response.done():
            self.response.set_result(None)
        self.flush()
        if self.failure is not None and self.transport is not None:
            self.transport.close()  # after the close frame is written out
        if self.buffered > self.read_limit and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def flush(self) -> None:
        """Write what the WebSocket protocol has queued (pongs, close frames, EOF)."""
        transport = self.transport
        data = self.ws.data_to_send()
        if transport is None or not data:
            return
        out = [chunk for chunk in data if chunk]
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if len(out) != len(data) and not transport.is_closing():
            transport.close()  # websockets' SEND_EOF

    def eof_received(self) -> bool:
        self.eof = True
        self.ws.receive_eof()
        self.flush()
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.response.done():
            self.response.set_exception(exc or EOFError("connection closed"))
            self.response.exception()  # retrieved here: open_websocket may be gone already
        super().connection_lost(exc)


class WebSocketStream(TcpStream):
    """An upgraded WebSocket connection as a :class:`~mqttv5.transport.base.Stream`.

    Attributes:
        subprotocol: the subprotocol the server chose (None if it chose none).
        failure: set when the server broke MQTT's WebSocket rules (a text frame).
    """

    _protocol: _ClientProtocol

    def __init__(self, transport: asyncio.Transport, protocol: _ClientProtocol, name: str) -> None:
        super().__init__(transport, protocol)
        self._ws = protocol.ws
        peer = self.peer
        cert = transport.get_extra_info("peercert")
        self.peer = PeerInfo(peer.address, peer.port, cert or None, name)
        self.subprotocol: str | None = self._ws.subprotocol

    @property
    def failure(self) -> WebSocketError | None:
        """Why the connection broke, when the transport knows better than "closed"."""
        return self._protocol.failure

    def write(self, data: bytes) -> None:
        """Send ``data`` as one binary frame."""
        if self._closed or self._transport.is_closing() or self._ws.state is not OPEN:
            raise ConnectionClosed(reason_string="stream closed")
        self._ws.send_binary(data)
        self._protocol.flush()

    def writelines(self, data: list[bytes]) -> None:
        """Send the pieces as one binary frame."""
        self.write(b"".join(data) if len(data) > 1 else data[0])

    async def close(self) -> None:
        """Send a close frame and close the connection (waits a little for the server)."""
        if self._closed:
            return
        self._closed = True
        self._protocol._wake()
        transport = self._transport
        if transport.is_closing():
            return
        if self._ws.state is OPEN:
            self._ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._protocol.flush()
        for _ in range(20):  # the server answers the close frame by closing the connection
            if self._protocol.eof or transport.is_closing():
                break
            await asyncio.sleep(0.005)
        transport.close()
        await asyncio.sleep(0)


async def open_websocket(
    host: str,
    port: int,
    path: str = DEFAULT_PATH,
    *,
    tls: TlsConfig | None = None,
    secure: bool = False,
    connect_timeout: float | None = 10.0,
    subprotocols: Sequence[str] = SUBPROTOCOLS,
    origin: str | None = None,
    read_limit: int = _READ_LIMIT,
) -> WebSocketStream:
    """Connect to ``ws://host:port/path`` (``wss://`` with ``secure`` or ``tls``) and upgrade.

    Raises:
        WebSocketError: the server refused the upgrade (the message gives the HTTP status and
            the server's reason) or did not answer with HTTP.
        TlsError: the TLS handshake failed (``wss://``).
        TransportError: the TCP connection was refused, timed out or the host is unknown.
    """
    secure = secure or tls is not None
    scheme = "wss" if secure else "ws"
    name = f"[{host}]" if ":" in host else host
    address = f"{scheme}://{name}:{port}{path or DEFAULT_PATH}"
    ctx: ssl.SSLContext | None = None
    if secure:
        tls = tls if tls is not None else TlsConfig()
        ctx = tls.create_context(default_alpn=("http/1.1",))
    ws = ClientProtocol(
        parse_uri(address),
        origin=Origin(origin) if origin is not None else None,
        subprotocols=[Subprotocol(s) for s in subprotocols],
        max_size=None,  # MQTT's Maximum Packet Size bounds what the client accepts
    )
    loop = asyncio.get_running_loop()
    with map_connect_errors(address):
        try:
            async with asyncio.timeout(connect_timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _ClientProtocol(ws, read_limit),
                    host,
                    port,
                    ssl=ctx,
                    server_hostname=(tls.server_hostname or host) if tls and ctx else None,
                    ssl_handshake_timeout=connect_timeout if ctx else None,
                )
                protocol.address = address
                set_nodelay(transport)
                transport.set_write_buffer_limits(high=_HIGH_WATER)
                ws.send_request(ws.connect())
                protocol.flush()
                try:
                    await _upgraded(protocol, address)
                except BaseException:
                    transport.abort()
                    raise
        except ssl.SSLError as exc:
            raise TlsError(address, describe_ssl_error(exc, "server")) from exc
    return WebSocketStream(transport, protocol, scheme)


async def _upgraded(protocol: _ClientProtocol, address: str) -> None:
    """Wait for the server's answer to the upgrade request; raise if it refused."""
    try:
        await protocol.response
    except (EOFError, OSError) as exc:
        if isinstance(exc, ssl.SSLError):
            raise
        raise WebSocketError(
            address, "connection closed during the WebSocket upgrade (not a WebSocket port?)"
        ) from exc
    failed = protocol.ws.handshake_exc
    if failed is None:
        return
    if isinstance(failed, InvalidStatus):
        response = failed.response
        body = bytes(response.body or b"").decode("utf-8", "replace").strip()
        reason = f": {body.splitlines()[0]}" if body else ""
        message = f"upgrade refused: HTTP {response.status_code} {response.reason_phrase}{reason}"
        raise WebSocketError(address, message, response.status_code) from failed
    text = str(failed)
    if failed.__cause__ is not None:
        text += f" ({failed.__cause__})"
    raise WebSocketError(address, f"upgrade failed: {text}") from failed
