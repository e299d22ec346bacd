"""MQTT data representations (section 1.5): integers, variable byte integers, strings, binary data.

Readers take a bytes-like buffer and a position and return ``(value, new_position)``; they raise
:class:`RemoteProtocolError` with Malformed Packet (0x81) on truncated or invalid input, naming the
field being read. Writers return ``bytes``.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from .errors import LocalProtocolError, RemoteProtocolError
from .reason_codes import ReasonCode

__all__ = [
    "MAX_VARINT",
    "VARINTS",
    "decode_binary",
    "decode_string",
    "decode_u16",
    "decode_u32",
    "decode_varint",
    "encode_binary",
    "encode_string",
    "encode_u16",
    "encode_u32",
    "encode_varint",
    "varint_size",
]

MAX_VARINT: Final = 268_435_455
Buffer: TypeAlias = bytes | bytearray | memoryview
_MALFORMED: Final = ReasonCode.MALFORMED_PACKET


def _encode_varint_slow(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# Varints below 16384 (two bytes) cover almost every remaining length; precompute them.
_VARINT_CACHE: Final[tuple[bytes, ...]] = tuple(_encode_varint_slow(i) for i in range(16384))
VARINTS: Final = _VARINT_CACHE
"""``VARINTS[n]`` is the encoding of every ``n`` below 16,384 (hot-path encoders index it)."""


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer in its shortest form [MQTT-1.5.5-1].

    Raises:
        LocalProtocolError: the value is negative or above 268,435,455.
    """
    if 0 <= value < 16384:
        return _VARINT_CACHE[value]
    if value < 0 or value > MAX_VARINT:
        raise LocalProtocolError(_MALFORMED, f"variable byte integer out of range: {value}")
    return _encode_varint_slow(value)


def varint_size(value: int) -> int:
    """Number of bytes :func:`encode_varint` writes for ``value``."""
    if value < 128:
        return 1
    if value < 16384:
        return 2
    if value < 2_097_152:
        return 3
    return 4


def decode_varint(buf: Buffer, pos: int, field: str = "varint") -> tuple[int, int]:
    """Read a Variable Byte Integer of at most four bytes.

    Raises:
        RemoteProtocolError: truncated, or a fifth continuation byte (Malformed Packet).
    """
    value = 0
    shift = 0
    end = len(buf)
    for _ in range(4):
        if pos >= end:
            raise RemoteProtocolError(_MALFORMED, f"{field}: truncated variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise RemoteProtocolError(_MALFORMED, f"{field}: variable byte integer longer than 4 bytes")


def encode_u16(value: int) -> bytes:
    """Encode a Two Byte Integer (big-endian)."""
    return value.to_bytes(2, "big")


def encode_u32(value: int) -> bytes:
    """Encode a Four Byte Integer (big-endian)."""
    return value.to_bytes(4, "big")


def decode_u16(buf: Buffer, pos: int, field: str = "u16") -> tuple[int, int]:
    """Read a Two Byte Integer."""
    if pos + 2 > len(buf):
        raise RemoteProtocolError(_MALFORMED, f"{field}: truncated two byte integer")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def decode_u32(buf: Buffer, pos: int, field: str = "u32") -> tuple[int, int]:
    """Read a Four Byte Integer."""
    if pos + 4 > len(buf):
        raise RemoteProtocolError(_MALFORMED, f"{field}: truncated four byte integer")
    return int.from_bytes(buf[pos : pos + 4], "big"), pos + 4


def encode_string(value: str) -> bytes:
    """Encode a UTF-8 Encoded String (two-byte length prefix).

    Raises:
        LocalProtocolError: longer than 65,535 bytes once encoded, or not encodable
            (lone surrogates), or contains U+0000 [MQTT-1.5.4-1, MQTT-1.5.4-2].
    """
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(_MALFORMED, f"string is not valid UTF-8: {exc.reason}") from exc
    n = len(data)
    if n > 65535:
        raise LocalProtocolError(_MALFORMED, f"string of {n} bytes exceeds 65535")
    if b"\x00" in data:
        raise LocalProtocolError(_MALFORMED, "string contains U+0000")
    return n.to_bytes(2, "big") + data


def decode_string(buf: Buffer, pos: int, field: str = "string") -> tuple[str, int]:
    """Read a UTF-8 Encoded String, validating it.

    Well-formed UTF-8 without surrogates [MQTT-1.5.4-1] (Python's strict codec rejects encoded
    surrogates and overlong forms), no U+0000 [MQTT-1.5.4-2]; a BOM is kept as U+FEFF
    [MQTT-1.5.4-3] (the plain ``utf-8`` codec never strips it).

    Raises:
        RemoteProtocolError: Malformed Packet, naming ``field``.
    """
    if pos + 2 > len(buf):
        raise RemoteProtocolError(_MALFORMED, f"{field}: truncated string length")
    n = (buf[pos] << 8) | buf[pos + 1]
    start = pos + 2
    end = start + n
    if end > len(buf):
        raise RemoteProtocolError(_MALFORMED, f"{field}: string length {n} exceeds packet")
    raw = bytes(buf[start:end])
    if b"\x00" in raw:
        raise RemoteProtocolError(_MALFORMED, f"{field}: string contains U+0000")
    try:
        return raw.decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(_MALFORMED, f"{field}: invalid UTF-8 ({exc.reason})") from None


def encode_binary(value: bytes) -> bytes:
    """Encode Binary Data (two-byte length prefix)."""
    n = len(value)
    if n > 65535:
        raise LocalProtocolError(_MALFORMED, f"binary data of {n} bytes exceeds 65535")
    return n.to_bytes(2, "big") + bytes(value)


def decode_binary(buf: Buffer, pos: int, field: str = "binary") -> tuple[bytes, int]:
    """Read Binary Data."""
    if pos + 2 > len(buf):
        raise RemoteProtocolError(_MALFORMED, f"{field}: truncated binary length")
    n = (buf[pos] << 8) | buf[pos + 1]
    start = pos + 2
    end = start + n
    if end > len(buf):
        raise RemoteProtocolError(_MALFORMED, f"{field}: binary length {n} exceeds packet")
    return bytes(buf[start:end]), end
