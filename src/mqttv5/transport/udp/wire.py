"""The wire format of MQTT over UDP: datagram types, their byte layout, encoders and one parser.

Every datagram starts with the version byte :data:`MAGIC` and a type byte. Set-up datagrams
(HELLO, COOKIE, CONNECT, ACCEPT) carry the client's 8-byte nonce; every other datagram carries
the 8-byte connection id right after the type byte. Integers are unsigned and big-endian
(network order). docs/udp.md is the normative description; this module is its executable form.

:func:`parse_untrusted` returns ``None`` for anything malformed (wrong version, unknown type,
wrong length, bad flags): the callers drop such datagrams silently and count them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeAlias

__all__ = [
    "ACCEPT_SIZE",
    "ACK_BLOCK_SIZE",
    "ACK_DELAY_UNIT",
    "ACK_HEADER_SIZE",
    "CHALLENGE_SIZE",
    "CID_SIZE",
    "CLOSE_SIZE",
    "CONNECT_SIZE",
    "COOKIE_SIZE",
    "COOKIE_SIZE_TOTAL",
    "DATA_HEADER_SIZE",
    "FIRST",
    "HANDSHAKE_MIN_SIZE",
    "LAST",
    "MAGIC",
    "MAX_DATAGRAM_SIZE",
    "MIN_DATAGRAM_SIZE",
    "NONCE_SIZE",
    "PING_SIZE",
    "RESET_SIZE",
    "RESUMED_SIZE",
    "RESUME_SIZE",
    "SHORT_HEADER_SIZE",
    "TOKEN_SIZE",
    "TOTAL_SIZE",
    "Accept",
    "Ack",
    "Challenge",
    "Close",
    "CloseAck",
    "CloseCode",
    "Connect",
    "ConnectionDatagram",
    "Cookie",
    "Data",
    "Datagram",
    "DatagramType",
    "Hello",
    "PeerParameters",
    "Ping",
    "Reset",
    "Resume",
    "Resumed",
    "encode_accept",
    "encode_ack",
    "encode_challenge",
    "encode_close",
    "encode_close_ack",
    "encode_connect",
    "encode_cookie",
    "encode_data",
    "encode_hello",
    "encode_ping",
    "encode_reset",
    "encode_resume",
    "encode_resumed",
    "expand_seq",
    "parse_untrusted",
]

#: Byte 0 of every datagram: 0xD0 | protocol version 1. Outside the ranges RFC 7983 gives to
#: STUN, DTLS, TURN and RTP, so a demultiplexer can tell it from those at a glance.
MAGIC: Final = 0xD1

CID_SIZE: Final = 8  # connection id
NONCE_SIZE: Final = 8  # client nonce (set-up) and challenge nonce (migration)
TOKEN_SIZE: Final = 16  # resume token
COOKIE_SIZE: Final = 16  # stateless cookie (a truncated HMAC-SHA256)
TOTAL_SIZE: Final = 4  # message length field of a first fragment

#: HELLO and CONNECT are padded to at least this many bytes, and a server drops shorter ones:
#: the server's answer (COOKIE, ACCEPT) is always smaller, so it amplifies nothing.
HANDSHAKE_MIN_SIZE: Final = 128
#: The smallest datagram budget (``mtu - overhead``) an implementation may use or advertise.
MIN_DATAGRAM_SIZE: Final = HANDSHAKE_MIN_SIZE
#: The largest UDP payload over IPv4 (65,535 - 20 - 8).
MAX_DATAGRAM_SIZE: Final = 65_507

SHORT_HEADER_SIZE: Final = 2 + CID_SIZE  # magic, type, connection id
DATA_HEADER_SIZE: Final = SHORT_HEADER_SIZE + 4 + 1  # + sequence number, flags
ACK_HEADER_SIZE: Final = SHORT_HEADER_SIZE + 4 + 2 + 2 + 1  # + cumulative, window, delay, count
ACK_BLOCK_SIZE: Final = 4  # offset (2), length (2)
PING_SIZE: Final = SHORT_HEADER_SIZE + 8  # 8 reserved bytes: a PING can always be challenged
CHALLENGE_SIZE: Final = SHORT_HEADER_SIZE + NONCE_SIZE
RESUME_SIZE: Final = SHORT_HEADER_SIZE + NONCE_SIZE + TOKEN_SIZE
RESUMED_SIZE: Final = SHORT_HEADER_SIZE + TOKEN_SIZE
CLOSE_SIZE: Final = SHORT_HEADER_SIZE + 1
RESET_SIZE: Final = SHORT_HEADER_SIZE
COOKIE_SIZE_TOTAL: Final = 2 + NONCE_SIZE + COOKIE_SIZE
_PARAMS_SIZE: Final = 2 + 2 + 4 + 4
CONNECT_SIZE: Final = 2 + NONCE_SIZE + COOKIE_SIZE + _PARAMS_SIZE  # before padding
ACCEPT_SIZE: Final = 2 + NONCE_SIZE + CID_SIZE + TOKEN_SIZE + _PARAMS_SIZE

#: DATA flags: first and last fragment of a message (a whole small message has both).
FIRST: Final = 0x01
LAST: Final = 0x02
_FLAGS_MASK: Final = FIRST | LAST

#: ACK delay is carried in units of 100 microseconds (at most 6.5535 s).
ACK_DELAY_UNIT: Final = 1e-4

_SEQ_BITS: Final = 32
_SEQ_MOD: Final = 1 << _SEQ_BITS
_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFF_FFFF


class DatagramType(IntEnum):
    """Byte 1 of every datagram."""

    HELLO = 0x01  # client -> server: nonce, padding
    COOKIE = 0x02  # server -> client: nonce, cookie (stateless)
    CONNECT = 0x03  # client -> server: nonce, cookie, parameters, padding
    ACCEPT = 0x04  # server -> client: nonce, connection id, resume token, parameters
    DATA = 0x10  # either way: one segment of a message
    ACK = 0x11  # either way: cumulative and selective acknowledgement, receive window
    PING = 0x12  # either way: keep-alive, answered by an ACK
    CHALLENGE = 0x20  # server -> client: prove you hold the token at this address
    RESUME = 0x21  # client -> server: challenge nonce (or zeros), resume token
    RESUMED = 0x22  # server -> client: the next resume token
    CLOSE = 0x30  # either way: close code
    CLOSE_ACK = 0x31  # either way: CLOSE received
    RESET = 0x32  # server -> client: no such connection (or connection refused)


class CloseCode(IntEnum):
    """The one-byte code of a CLOSE datagram, and the reason reported to the application."""

    NORMAL = 0x00  # graceful close after all data was acknowledged
    ABORTED = 0x01  # the sender discarded its connection at once
    PROTOCOL_ERROR = 0x02  # the peer broke a rule of this protocol
    MESSAGE_TOO_LARGE = 0x03  # a message exceeded the receiver's maximum message size

    @property
    def reason(self) -> str:
        """The ``ConnectionTerminated.reason`` for this code."""
        return _REASONS[self]


_REASONS: Final = {
    CloseCode.NORMAL: "closed",
    CloseCode.ABORTED: "aborted",
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.MESSAGE_TOO_LARGE: "message too large",
}


@dataclass(frozen=True, slots=True)
class PeerParameters:
    """What each side tells the other during set-up (CONNECT and ACCEPT)."""

    max_datagram: int  # largest datagram it accepts (its mtu - overhead)
    receive_window: int  # segments it buffers beyond the next expected one
    max_message: int  # largest message it reassembles
    idle_timeout_ms: int  # it drops the connection after this much silence


# --- datagrams -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Cookie:
    nonce: bytes
    cookie: bytes


@dataclass(frozen=True, slots=True)
class Connect:
    nonce: bytes
    cookie: bytes
    params: PeerParameters


@dataclass(frozen=True, slots=True)
class Accept:
    nonce: bytes
    connection_id: bytes
    token: bytes
    params: PeerParameters


@dataclass(frozen=True, slots=True)
class Data:
    connection_id: bytes
    seq: int  # 32 bits as on the wire; see expand_seq
    flags: int
    total: int | None  # message length, on a first fragment that is not also the last
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    connection_id: bytes
    cumulative: int  # 32 bits: every segment before it was received
    window: int
    ack_delay: float  # seconds
    blocks: tuple[tuple[int, int], ...]  # (offset from cumulative, length), ascending


@dataclass(frozen=True, slots=True)
class Ping:
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class Challenge:
    connection_id: bytes
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Resume:
    connection_id: bytes
    nonce: bytes
    token: bytes


@dataclass(frozen=True, slots=True)
class Resumed:
    connection_id: bytes
    token: bytes


@dataclass(frozen=True, slots=True)
class Close:
    connection_id: bytes
    code: int


@dataclass(frozen=True, slots=True)
class CloseAck:
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class Reset:
    connection_id: bytes  # or, answering a refused CONNECT, the client's nonce


ConnectionDatagram: TypeAlias = (
    Data | Ack | Ping | Challenge | Resume | Resumed | Close | CloseAck | Reset
)
Datagram: TypeAlias = (
    Hello
    | Cookie
    | Connect
    | Accept
    | Data
    | Ack
    | Ping
    | Challenge
    | Resume
    | Resumed
    | Close
    | CloseAck
    | Reset
)

# --- encoders --------------------------------------------------------------------------------

_PARAMS = struct.Struct("!HHII")
_DATA = struct.Struct("!BB8sIB")
_DATA_FIRST = struct.Struct("!BB8sIBI")
_ACK = struct.Struct("!BB8sIHHB")
_BLOCK = struct.Struct("!HH")


def _params(params: PeerParameters) -> bytes:
    return _PARAMS.pack(
        params.max_datagram, params.receive_window, params.max_message, params.idle_timeout_ms
    )


def _pad(datagram: bytes, size: int) -> bytes:
    return datagram + bytes(size - len(datagram)) if len(datagram) < size else datagram


def encode_hello(nonce: bytes, size: int = HANDSHAKE_MIN_SIZE) -> bytes:
    """HELLO padded with zeros to ``size`` bytes (at least :data:`HANDSHAKE_MIN_SIZE`)."""
    return _pad(bytes((MAGIC, DatagramType.HELLO)) + nonce, max(size, HANDSHAKE_MIN_SIZE))


def encode_cookie(nonce: bytes, cookie: bytes) -> bytes:
    """COOKIE: the HELLO's nonce and a cookie for the address it came from."""
    return bytes((MAGIC, DatagramType.COOKIE)) + nonce + cookie


def encode_connect(
    nonce: bytes, cookie: bytes, params: PeerParameters, size: int = HANDSHAKE_MIN_SIZE
) -> bytes:
    """CONNECT padded with zeros to ``size`` bytes (at least :data:`HANDSHAKE_MIN_SIZE`)."""
    head = bytes((MAGIC, DatagramType.CONNECT)) + nonce + cookie + _params(params)
    return _pad(head, max(size, HANDSHAKE_MIN_SIZE))


def encode_accept(
    nonce: bytes, connection_id: bytes, token: bytes, params: PeerParameters
) -> bytes:
    """ACCEPT: the CONNECT's nonce, the new connection id, the first resume token."""
    head = bytes((MAGIC, DatagramType.ACCEPT)) + nonce + connection_id + token
    return head + _params(params)


def encode_data(
    connection_id: bytes, seq: int, flags: int, total: int | None, payload: bytes
) -> bytes:
    """DATA: one segment; ``total`` (message length) only on a first, not-last fragment."""
    if total is None:
        head = _DATA.pack(MAGIC, DatagramType.DATA, connection_id, seq % _SEQ_MOD, flags)
    else:
        head = _DATA_FIRST.pack(
            MAGIC, DatagramType.DATA, connection_id, seq % _SEQ_MOD, flags, total
        )
    return head + payload


def encode_ack(
    connection_id: bytes,
    cumulative: int,
    window: int,
    ack_delay: float,
    blocks: list[tuple[int, int]],
) -> bytes:
    """ACK: ``blocks`` are (offset from ``cumulative``, length), ascending, at most 255."""
    delay = min(_U16_MAX, max(0, int(ack_delay / ACK_DELAY_UNIT)))
    head = _ACK.pack(
        MAGIC,
        DatagramType.ACK,
        connection_id,
        cumulative % _SEQ_MOD,
        min(window, _U16_MAX),
        delay,
        len(blocks),
    )
    return head + b"".join(_BLOCK.pack(offset, length) for offset, length in blocks)


def _short(kind: DatagramType, connection_id: bytes) -> bytes:
    return bytes((MAGIC, kind)) + connection_id


def encode_ping(connection_id: bytes) -> bytes:
    """PING: 8 reserved zero bytes keep it as large as a CHALLENGE."""
    return _short(DatagramType.PING, connection_id) + bytes(8)


def encode_challenge(connection_id: bytes, nonce: bytes) -> bytes:
    """CHALLENGE: sent to a new address of a known connection."""
    return _short(DatagramType.CHALLENGE, connection_id) + nonce


def encode_resume(connection_id: bytes, nonce: bytes, token: bytes) -> bytes:
    """RESUME: the challenge nonce (zeros when unprompted) and the current resume token."""
    return _short(DatagramType.RESUME, connection_id) + nonce + token


def encode_resumed(connection_id: bytes, token: bytes) -> bytes:
    """RESUMED: the next resume token."""
    return _short(DatagramType.RESUMED, connection_id) + token


def encode_close(connection_id: bytes, code: CloseCode) -> bytes:
    """CLOSE with its code."""
    return _short(DatagramType.CLOSE, connection_id) + bytes((code,))


def encode_close_ack(connection_id: bytes) -> bytes:
    """CLOSE_ACK."""
    return _short(DatagramType.CLOSE_ACK, connection_id)


def encode_reset(connection_id: bytes) -> bytes:
    """RESET: the connection id (or refused nonce) it answers."""
    return _short(DatagramType.RESET, connection_id)


# --- parser ----------------------------------------------------------------------------------


def _parse_params_untrusted(data: bytes, at: int) -> PeerParameters | None:
    max_datagram, window, max_message, idle_ms = _PARAMS.unpack_from(data, at)
    if max_datagram < MIN_DATAGRAM_SIZE or window < 1 or max_message < 1 or idle_ms < 1:
        return None
    return PeerParameters(max_datagram, window, max_message, idle_ms)


def _hello(data: bytes) -> Datagram | None:
    if len(data) < 2 + NONCE_SIZE:
        return None
    return Hello(data[2:10])


def _cookie(data: bytes) -> Datagram | None:
    if len(data) != COOKIE_SIZE_TOTAL:
        return None
    return Cookie(data[2:10], data[10:])


def _connect(data: bytes) -> Datagram | None:
    if len(data) < CONNECT_SIZE:
        return None
    params = _parse_params_untrusted(data, 2 + NONCE_SIZE + COOKIE_SIZE)
    return None if params is None else Connect(data[2:10], data[10:26], params)


def _accept(data: bytes) -> Datagram | None:
    if len(data) != ACCEPT_SIZE:
        return None
    params = _parse_params_untrusted(data, 2 + NONCE_SIZE + CID_SIZE + TOKEN_SIZE)
    if params is None:
        return None
    return Accept(data[2:10], data[10:18], data[18:34], params)


def _data(data: bytes) -> Datagram | None:
    if len(data) < DATA_HEADER_SIZE:
        return None
    _, _, cid, seq, flags = _DATA.unpack_from(data)
    if flags & ~_FLAGS_MASK:
        return None
    if flags == FIRST:  # first of several fragments: the message length follows
        if len(data) < DATA_HEADER_SIZE + TOTAL_SIZE:
            return None
        total = _DATA_FIRST.unpack_from(data)[5]
        payload = data[DATA_HEADER_SIZE + TOTAL_SIZE :]
        if total <= len(payload):  # a message that fits one segment is sent as FIRST|LAST
            return None
        return Data(cid, seq, flags, total, payload)
    return Data(cid, seq, flags, None, data[DATA_HEADER_SIZE:])


def _ack(data: bytes) -> Datagram | None:
    if len(data) < ACK_HEADER_SIZE:
        return None
    _, _, cid, cumulative, window, delay, count = _ACK.unpack_from(data)
    if len(data) != ACK_HEADER_SIZE + count * ACK_BLOCK_SIZE:
        return None
    blocks: list[tuple[int, int]] = []
    end = 0  # each block starts after the previous one's end (a gap of at least one)
    for i in range(count):
        offset, length = _BLOCK.unpack_from(data, ACK_HEADER_SIZE + i * ACK_BLOCK_SIZE)
        if offset <= end or length == 0:
            return None
        blocks.append((offset, length))
        end = offset + length
    return Ack(cid, cumulative, window, delay * ACK_DELAY_UNIT, tuple(blocks))


def _fixed(
    size: int, build: Callable[[bytes, bytes], Datagram]
) -> Callable[[bytes], Datagram | None]:
    def parse(data: bytes) -> Datagram | None:
        if len(data) != size:
            return None
        return build(data[2:SHORT_HEADER_SIZE], data[SHORT_HEADER_SIZE:])

    return parse


def _close_code(cid: bytes, rest: bytes) -> Datagram:
    return Close(cid, rest[0])


_PARSERS: Final[dict[int, Callable[[bytes], Datagram | None]]] = {
    DatagramType.HELLO: _hello,
    DatagramType.COOKIE: _cookie,
    DatagramType.CONNECT: _connect,
    DatagramType.ACCEPT: _accept,
    DatagramType.DATA: _data,
    DatagramType.ACK: _ack,
    DatagramType.PING: _fixed(PING_SIZE, lambda cid, rest: Ping(cid)),
    DatagramType.CHALLENGE: _fixed(CHALLENGE_SIZE, Challenge),
    DatagramType.RESUME: _fixed(RESUME_SIZE, lambda cid, rest: Resume(cid, rest[:8], rest[8:])),
    DatagramType.RESUMED: _fixed(RESUMED_SIZE, Resumed),
    DatagramType.CLOSE: _fixed(CLOSE_SIZE, _close_code),
    DatagramType.CLOSE_ACK: _fixed(RESET_SIZE, lambda cid, rest: CloseAck(cid)),
    DatagramType.RESET: _fixed(RESET_SIZE, lambda cid, rest: Reset(cid)),
}


def parse_untrusted(data: bytes) -> Datagram | None:
    """Parse one datagram; ``None`` if it is not a well-formed datagram of this protocol.

    Only the structure is checked (version, type, lengths, flags, block order); whether a
    connection id, cookie or token is valid is the caller's business.
    """
    if len(data) < 2 or data[0] != MAGIC:
        return None
    parse = _PARSERS.get(data[1])
    return None if parse is None else parse(data)


def expand_seq(wire: int, expected: int) -> int:
    """The full sequence number nearest ``expected`` whose low 32 bits are ``wire``.

    Sequence numbers are 64-bit counters inside; the wire carries their low 32 bits. Windows
    are at most 65,535 segments, far less than half the 32-bit space, so the nearest candidate
    is the right one (the packet-number decoding of RFC 9000, appendix A.3).
    """
    candidate = (expected & ~(_SEQ_MOD - 1)) | wire
    half = _SEQ_MOD // 2
    if candidate + half <= expected:
        return candidate + _SEQ_MOD
    if candidate > expected + half and candidate >= _SEQ_MOD:
        return candidate - _SEQ_MOD
    return candidate
