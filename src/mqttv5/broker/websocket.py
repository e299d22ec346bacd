"""MQTT over WebSocket for the broker (``ws`` and ``wss`` listeners), on the sans-I/O core of
the ``websockets`` library (:class:`websockets.server.ServerProtocol`).

:class:`WebSocketAdapter` is the ``asyncio.Protocol`` of one connection. It answers the HTTP
upgrade (path, Origin, subprotocol), then unwraps binary frames into a byte stream for an inner
:class:`~mqttv5.broker.handler.ClientHandler` and wraps what the handler writes into frames. To
the handler it presents :class:`WebSocketTransport`, an ``asyncio.Transport`` with the methods
the handler uses, so the handler does not know it speaks WebSocket (DESIGN.md, principle 3).

MQTT over WebSocket (MQTT 5.0 section 6) is a byte stream carried in binary frames: a frame may
hold several packets and a packet may span frames [MQTT-6.0.0-2], so frames are not aligned
with packets on the way in, and each flush of the handler (one ``writelines`` per loop tick) is
one frame on the way out. A text frame closes the connection [MQTT-6.0.0-1].

Why not websockets' own asyncio server: it runs a task per connection and hands over whole
messages through ``await recv()``, where the broker wants ``data_received`` callbacks and
one batched write per tick; see ``docs/tls-websocket.md`` for the measurement.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, cast

from websockets.exceptions import InvalidOrigin, NegotiationError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import BINARY, CONT, TEXT, CloseCode, Frame
from websockets.http11 import Request
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol

from .config import ListenerSettings
from .tls import LayeredTransport, PendingHandshakes, WrappingProtocol

__all__ = ["WebSocketAdapter", "WebSocketOptions", "forwarded_for"]

log = logging.getLogger("mqttv5.broker")

# websockets logs every connection's opening and closing at INFO; keep only its warnings.
_WS_LOG: Final = logging.getLogger("mqttv5.broker.websocket")
_WS_LOG.setLevel(logging.WARNING)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_METHOD_START: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class WebSocketOptions:
    """A listener's WebSocket settings, compiled once when it opens.

    Attributes:
        path: the only path accepted ("" = any).
        subprotocols: accepted subprotocols, in order of preference.
        origins: accepted ``Origin`` values (strings, patterns, and None for "no Origin"), or
            None to accept every origin.
        proxies: networks whose ``X-Forwarded-For`` is believed.
        compression: offer permessage-deflate.
        max_message: largest WebSocket message (hence frame) accepted, in bytes.
    """

    path: str
    subprotocols: tuple[str, ...]
    origins: tuple[Origin | re.Pattern[str] | None, ...] | None
    proxies: tuple[Network, ...]
    compression: bool
    max_message: int

    @classmethod
    def from_settings(cls, settings: ListenerSettings, max_packet_size: int) -> WebSocketOptions:
        """Compile ``settings`` (the frame bound is the listener's Maximum Packet Size)."""
        origins: tuple[Origin | re.Pattern[str] | None, ...] | None = None
        if settings.allowed_origins:
            origins = (*(_origin(o) for o in settings.allowed_origins), None)
        return cls(
            settings.ws_path,
            tuple(settings.ws_subprotocols),
            origins,
            tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies),
            settings.ws_compression,
            max_packet_size,
        )


def _origin(text: str) -> Origin | re.Pattern[str]:
    if "*" not in text:
        return Origin(text)
    # "*" stands for one host label: https://*.example.com matches https://app.example.com
    return re.compile(re.escape(text).replace(r"\*", r"[^./:]+"))


def _subprotocol_selector(
    accepted: Sequence[str],
) -> Callable[[ServerProtocol, Sequence[Subprotocol]], Subprotocol | None]:
    """websockets' ``select_subprotocol`` hook (a plain function: websockets binds it)."""

    def select(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        if not offered:
            return None  # accepted without a subprotocol, as Mosquitto (see ws_subprotocols)
        for name in accepted:
            if name in offered:
                return Subprotocol(name)
        raise NegotiationError(
            f"subprotocol {', '.join(offered)} offered, {' or '.join(accepted)} expected"
        )

    return select


def forwarded_for(values: Sequence[str], proxies: Sequence[Network]) -> str | None:
    """The client address an ``X-Forwarded-For`` chain gives, read from the right past our
    trusted proxies (each proxy appends the address it received the request from).

    Returns:
        The first address from the right that is not a trusted proxy (the leftmost one if all
        are); None when the chain is empty or holds something that is not an address, as
        nothing before a bad entry can be believed.
    """
    hops = [hop.strip() for value in values for hop in value.split(",") if hop.strip()]
    found: str | None = None
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return None
        found = str(address)
        if not any(address in net for net in proxies):
            return found
    return found


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if text.startswith("["):  # [2001:db8::1]:1234
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # 192.0.2.1:1234
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in(host: str, proxies: Sequence[Network]) -> bool:
    address = _address(host)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in proxies)


class WebSocketAdapter(WrappingProtocol):
    """One WebSocket connection of the broker.

    The inner protocol sees a :class:`~mqttv5.broker.tls.LayeredTransport` whose
    ``get_extra_info("peername")`` is the client's address (from ``X-Forwarded-For`` when the
    connection comes from a trusted proxy, with port 0); ``"proxy_peername"`` is the TCP peer,
    ``"websocket_request"`` the upgrade request and ``"subprotocol"`` the one chosen.

    Args:
        options: the listener's compiled WebSocket settings.
        inner: makes the MQTT protocol (a ClientHandler) once the upgrade succeeded.
        pending: the listener's upgrades in progress (timeout, shutdown).
        label: the listener, for log lines.
    """

    def __init__(
        self,
        options: WebSocketOptions,
        inner: Callable[[], asyncio.Protocol],
        pending: PendingHandshakes,
        label: str,
    ) -> None:
        self.options = options
        self.make_inner = inner
        self.pending = pending
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        self.peername: tuple[str, int] = ("?", 0)
        self.real_peer: tuple[str, int] = ("?", 0)
        self.request: Request | None = None
        self.closing = False
        self._checked = False  # the first byte was looked at
        self.ws = ServerProtocol(
            origins=options.origins,
            extensions=[ServerPerMessageDeflateFactory()] if options.compression else None,
            subprotocols=[Subprotocol(s) for s in options.subprotocols],
            select_subprotocol=_subprotocol_selector(options.subprotocols),
            max_size=options.max_message,
            logger=_WS_LOG,
        )

    # --- asyncio.Protocol, towards the network ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Wait for the upgrade request (bounded by ``connect_timeout``)."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.real_peer = self.peername = (str(peer[0]), int(peer[1]))
        self.pending.add(self)

    def data_received(self, data: bytes) -> None:
        """Feed the WebSocket parser; pass the payload of binary frames to the handler."""
        ws = self.ws
        if not self._checked and data:
            self._checked = True
            if data[0] not in _METHOD_START:
                # An HTTP request starts with a method name (GET); MQTT's CONNECT with 0x10.
                # Fail fast rather than wait for a line end that never comes.
                self._failed("not an HTTP request (plain MQTT on a WebSocket port?)")
                if self.transport is not None:
                    self.transport.abort()
                return
        ws.receive_data(data)
        payload: list[bytes | bytearray | memoryview] = []
        text = False
        for event in ws.events_received():
            if isinstance(event, Frame):
                opcode = event.opcode
                if opcode is BINARY or opcode is CONT:
                    payload.append(event.data)
                elif opcode is TEXT:
                    text = True
                    break
            elif isinstance(event, Request):
                self._upgrade(event)
        inner = self.inner
        if payload and inner is not None and not self.closing:
            inner.data_received(b"".join(payload))
        if not self.closing:
            if text:
                # [MQTT-6.0.0-1] MQTT packets travel in binary frames only
                ws.fail(CloseCode.UNSUPPORTED_DATA, "MQTT needs binary frames")
                self._failed("a text frame (MQTT needs binary frames)")
            elif inner is not None and ws.parser_exc is not None:
                self._failed(_describe(ws.parser_exc))
            elif inner is None and ws.handshake_exc is not None:
                self._failed(_describe(ws.handshake_exc))
        self._write_out()

    def _failed(self, cause: str) -> None:
        self.closing = True
        self.pending.discard(self)
        what = "connection" if self.inner is not None else "upgrade"
        log.info("WebSocket %s from %s on %s failed: %s.", what, self._who(), self.label, cause)

    def eof_received(self) -> bool | None:
        """The peer half-closed: the connection ends (MQTT has nothing to say after EOF)."""
        self.ws.receive_eof()
        self._write_out()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Finish the inner handler (its Will and session follow MQTT's rules)."""
        self._finish(exc)

    # --- the upgrade ------------------------------------------------------------------------------

    def _upgrade(self, request: Request) -> None:
        ws = self.ws
        self.request = request
        path = request.path.split("?", 1)[0]
        if self.options.path and path != self.options.path:
            response = ws.reject(HTTPStatus.NOT_FOUND, f"Not Found: use {self.options.path}\n")
            cause = f"path {path!r} is not {self.options.path!r}"
        else:
            response = ws.accept(request)
            exc = ws.handshake_exc
            cause = _describe(exc) if exc is not None else ""
        if response.status_code == 101:
            self.peername = self._client_address(request)
        ws.send_response(response)
        self.pending.discard(self)
        if response.status_code != 101:
            self.closing = True
            log.info(
                "WebSocket upgrade from %s on %s refused (%d %s): %s.",
                self._who(),
                self.label,
                response.status_code,
                response.reason_phrase,
                cause,
            )
            return
        self._attach()

    def _client_address(self, request: Request) -> tuple[str, int]:
        proxies = self.options.proxies
        if not proxies or not _in(self.real_peer[0], proxies):
            return self.real_peer  # the header is believed only from a trusted proxy
        client = forwarded_for(request.headers.get_all("X-Forwarded-For"), proxies)
        if client is None:
            return self.real_peer
        return (client, 0)

    def _attach(self) -> None:
        self._write_out()  # the 101 response goes before anything the handler writes
        inner = self.inner = self.make_inner()
        inner.connection_made(LayeredTransport(self))

    def handshake_timed_out(self) -> None:
        """Called by :class:`~mqttv5.broker.tls.PendingHandshakes`."""
        if self.inner is None and not self.closing and self.transport is not None:
            self._failed("upgrade timed out")
            self.transport.abort()

    def abort_handshake(self) -> None:
        """Called by :class:`~mqttv5.broker.tls.PendingHandshakes` at shutdown."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # --- output -----------------------------------------------------------------------------------

    def _write_out(self) -> None:
        transport = self.transport
        if transport is None:
            return
        data = self.ws.data_to_send()
        if not data:
            return
        out = [chunk for chunk in data if chunk]
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if len(out) != len(data):  # websockets' SEND_EOF: the server closes the connection
            self.closing = True
            transport.close()

    def send(self, data: bytes) -> None:
        """Send ``data`` as one binary frame (the handler's write)."""
        ws = self.ws
        if ws.state is not OPEN or self.closing:
            return  # as a closing TCP transport: writes after close are dropped
        ws.send_binary(data)
        self._write_out()

    def close(self) -> None:
        """Close frame 1000, then the connection (after its buffer is written out)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        if self.ws.state is OPEN:
            self.ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._write_out()
        self.transport.close()

    def extra_info(self, name: str) -> tuple[bool, Any]:
        """``peername`` (the client, after trusted proxies), ``proxy_peername``,
        ``websocket_request``, ``subprotocol``."""
        if name == "peername":
            return True, self.peername
        if name == "proxy_peername":
            return True, self.real_peer
        if name == "websocket_request":
            return True, self.request
        if name == "subprotocol":
            return True, self.ws.subprotocol
        return False, None

    def _who(self) -> str:
        host, port = self.peername
        text = f"[{host}]" if ":" in host else host
        if self.peername != self.real_peer:
            return f"{text} (via {self.real_peer[0]}:{self.real_peer[1]})"
        return f"{text}:{port}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidOrigin):
        return f"Origin {exc.value!r} not allowed" if exc.value else "no Origin header"
    text = str(exc)
    cause = exc.__cause__
    while cause is not None:
        text += f"; {cause}"
        cause = cause.__cause__
    return text
