"""MQTT 5.0 properties (section 2.2.2): one typed table of id -> wire type -> packets allowed.

:class:`Properties` holds the decoded values of one property block. Absent properties are ``None``;
User Properties are an ordered list of pairs and may repeat; Subscription Identifiers are a list
(several may appear in a PUBLISH sent by the server).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import Final, NamedTuple

from .codec import (
    decode_binary,
    decode_string,
    decode_varint,
    encode_binary,
    encode_string,
    encode_varint,
)
from .constants import PacketType
from .errors import LocalProtocolError, RemoteProtocolError
from .reason_codes import ReasonCode

__all__ = [
    "PROPERTY_TABLE",
    "WILL",
    "Properties",
    "PropertyId",
    "PropertySpec",
    "WireType",
    "decode_properties",
    "encode_properties",
    "strip_properties",
]

_MALFORMED: Final = ReasonCode.MALFORMED_PACKET
_PROTOCOL: Final = ReasonCode.PROTOCOL_ERROR

WILL: Final = 0
"""Pseudo packet type for the Will Properties of CONNECT."""


class PropertyId(IntEnum):
    """Property identifiers (section 2.2.2.2)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class WireType(IntEnum):
    """Data representation of a property value (section 1.5)."""

    BYTE = 1
    U16 = 2
    U32 = 3
    VARINT = 4
    STRING = 5
    BINARY = 6
    PAIR = 7


class PropertySpec(NamedTuple):
    """One row of the property table."""

    id: PropertyId
    attr: str
    wire: WireType
    packets: frozenset[int]
    repeatable: bool
    minimum: int  # smallest valid value for integer types (Protocol Error below it)
    maximum: int  # largest valid value for integer types (Protocol Error above it)


_P = PacketType
_ACKS = frozenset({_P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP})
_ALL = frozenset(
    {
        WILL, _P.CONNECT, _P.CONNACK, _P.PUBLISH, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP,
        _P.SUBSCRIBE, _P.SUBACK, _P.UNSUBSCRIBE, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH,
    }
)  # fmt: skip
_PUB_WILL = frozenset({_P.PUBLISH, WILL})
_U8, _U16, _U32, _VBI = 0xFF, 0xFFFF, 0xFFFFFFFF, 268_435_455


def _row(
    pid: PropertyId,
    wire: WireType,
    packets: Iterable[int],
    repeatable: bool = False,
    minimum: int = 0,
    maximum: int | None = None,
) -> PropertySpec:
    if maximum is None:
        maximum = {WireType.BYTE: _U8, WireType.U16: _U16, WireType.U32: _U32}.get(wire, _VBI)
    return PropertySpec(
        pid, pid.name.lower(), wire, frozenset(packets), repeatable, minimum, maximum
    )


_I = PropertyId
_W = WireType
PROPERTY_TABLE: Final[dict[int, PropertySpec]] = {
    s.id: s
    for s in (
        _row(_I.PAYLOAD_FORMAT_INDICATOR, _W.BYTE, _PUB_WILL, maximum=1),
        _row(_I.MESSAGE_EXPIRY_INTERVAL, _W.U32, _PUB_WILL),
        _row(_I.CONTENT_TYPE, _W.STRING, _PUB_WILL),
        _row(_I.RESPONSE_TOPIC, _W.STRING, _PUB_WILL),
        _row(_I.CORRELATION_DATA, _W.BINARY, _PUB_WILL),
        # Repeatable in PUBLISH (server to client); once in SUBSCRIBE (checked by the decoder).
        _row(_I.SUBSCRIPTION_IDENTIFIER, _W.VARINT, {_P.PUBLISH, _P.SUBSCRIBE}, True, minimum=1),
        _row(_I.SESSION_EXPIRY_INTERVAL, _W.U32, {_P.CONNECT, _P.CONNACK, _P.DISCONNECT}),
        _row(_I.ASSIGNED_CLIENT_IDENTIFIER, _W.STRING, {_P.CONNACK}),
        _row(_I.SERVER_KEEP_ALIVE, _W.U16, {_P.CONNACK}),
        _row(_I.AUTHENTICATION_METHOD, _W.STRING, {_P.CONNECT, _P.CONNACK, _P.AUTH}),
        _row(_I.AUTHENTICATION_DATA, _W.BINARY, {_P.CONNECT, _P.CONNACK, _P.AUTH}),
        _row(_I.REQUEST_PROBLEM_INFORMATION, _W.BYTE, {_P.CONNECT}, maximum=1),
        _row(_I.WILL_DELAY_INTERVAL, _W.U32, {WILL}),
        _row(_I.REQUEST_RESPONSE_INFORMATION, _W.BYTE, {_P.CONNECT}, maximum=1),
        _row(_I.RESPONSE_INFORMATION, _W.STRING, {_P.CONNACK}),
        _row(_I.SERVER_REFERENCE, _W.STRING, {_P.CONNACK, _P.DISCONNECT}),
        _row(
            _I.REASON_STRING,
            _W.STRING,
            _ACKS | {_P.CONNACK, _P.SUBACK, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH},
        ),
        _row(_I.RECEIVE_MAXIMUM, _W.U16, {_P.CONNECT, _P.CONNACK}, minimum=1),
        _row(_I.TOPIC_ALIAS_MAXIMUM, _W.U16, {_P.CONNECT, _P.CONNACK}),
        # Topic Alias 0 is checked by the connection, which answers 0x94 Topic Alias invalid.
        _row(_I.TOPIC_ALIAS, _W.U16, {_P.PUBLISH}),
        _row(_I.MAXIMUM_QOS, _W.BYTE, {_P.CONNACK}, maximum=1),
        _row(_I.RETAIN_AVAILABLE, _W.BYTE, {_P.CONNACK}, maximum=1),
        _row(_I.USER_PROPERTY, _W.PAIR, _ALL, True),
        _row(_I.MAXIMUM_PACKET_SIZE, _W.U32, {_P.CONNECT, _P.CONNACK}, minimum=1),
        _row(_I.WILDCARD_SUBSCRIPTION_AVAILABLE, _W.BYTE, {_P.CONNACK}, maximum=1),
        _row(_I.SUBSCRIPTION_IDENTIFIER_AVAILABLE, _W.BYTE, {_P.CONNACK}, maximum=1),
        _row(_I.SHARED_SUBSCRIPTION_AVAILABLE, _W.BYTE, {_P.CONNACK}, maximum=1),
    )
}
_SPECS_IN_ORDER: Final = tuple(sorted(PROPERTY_TABLE.values(), key=lambda s: s.id))
_SCALAR_ATTRS: Final = tuple(s.attr for s in _SPECS_IN_ORDER if not s.repeatable)
_ALL_ATTRS: Final = (*_SCALAR_ATTRS, "subscription_identifiers", "user_properties")


class Properties:
    """The properties of one packet (or of a Will Message).

    Every property is an attribute named after it in lower case (``message_expiry_interval``,
    ``response_topic`` ...), ``None`` when absent. ``user_properties`` is a list of ``(name,
    value)`` pairs in wire order; ``subscription_identifiers`` a list of ints.
    """

    __slots__ = (*_SCALAR_ATTRS, "subscription_identifiers", "user_properties")

    payload_format_indicator: int | None
    message_expiry_interval: int | None
    content_type: str | None
    response_topic: str | None
    correlation_data: bytes | None
    session_expiry_interval: int | None
    assigned_client_identifier: str | None
    server_keep_alive: int | None
    authentication_method: str | None
    authentication_data: bytes | None
    request_problem_information: int | None
    will_delay_interval: int | None
    request_response_information: int | None
    response_information: str | None
    server_reference: str | None
    reason_string: str | None
    receive_maximum: int | None
    topic_alias_maximum: int | None
    topic_alias: int | None
    maximum_qos: int | None
    retain_available: int | None
    maximum_packet_size: int | None
    wildcard_subscription_available: int | None
    subscription_identifier_available: int | None
    shared_subscription_available: int | None
    subscription_identifiers: list[int]
    user_properties: list[tuple[str, str]]

    def __init__(
        self,
        *,
        user_properties: Iterable[tuple[str, str]] = (),
        subscription_identifiers: Iterable[int] = (),
        **values: int | str | bytes | None,
    ) -> None:
        for attr in _SCALAR_ATTRS:
            setattr(self, attr, None)
        for key, value in values.items():
            if key not in _SCALAR_ATTRS:
                raise TypeError(f"unknown property {key!r}")
            setattr(self, key, value)
        self.user_properties = list(user_properties)
        self.subscription_identifiers = list(subscription_identifiers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Properties):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in _ALL_ATTRS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{a}={v!r}" for a, v in self.items())
        return f"Properties({fields})"

    def items(self) -> list[tuple[str, object]]:
        """The present properties as ``(attribute, value)`` pairs."""
        out: list[tuple[str, object]] = []
        for a in _ALL_ATTRS:
            v = getattr(self, a)
            if v is not None and v != []:
                out.append((a, v))
        return out

    def __bool__(self) -> bool:
        return bool(self.user_properties or self.subscription_identifiers) or any(
            getattr(self, a) is not None for a in _SCALAR_ATTRS
        )

    def copy(self) -> Properties:
        """A shallow copy with its own lists."""
        new = Properties()
        for a in _SCALAR_ATTRS:
            setattr(new, a, getattr(self, a))
        new.user_properties = list(self.user_properties)
        new.subscription_identifiers = list(self.subscription_identifiers)
        return new

    def encode(self) -> bytes:
        """The property block without its length prefix."""
        return encode_properties(self)

    def encode_block(self) -> bytes:
        """The property block with its Property Length prefix [MQTT-2.2.2-1]."""
        body = encode_properties(self)
        return encode_varint(len(body)) + body


def _encode_value(spec: PropertySpec, value: object) -> bytes:
    head = bytes((spec.id,))
    wire = spec.wire
    if isinstance(value, int):
        if wire is WireType.BYTE:
            return head + bytes((value,))
        if wire is WireType.U16:
            return head + value.to_bytes(2, "big")
        if wire is WireType.U32:
            return head + value.to_bytes(4, "big")
        return head + encode_varint(value)
    if isinstance(value, str):
        return head + encode_string(value)
    if isinstance(value, bytes | bytearray):
        return head + encode_binary(bytes(value))
    if isinstance(value, tuple) and len(value) == 2:
        return head + encode_string(str(value[0])) + encode_string(str(value[1]))
    raise LocalProtocolError(_MALFORMED, f"property {spec.id.name}: bad value {value!r}")


def encode_properties(props: Properties | None) -> bytes:
    """Encode a property block (without the length prefix), in identifier order.

    User Properties keep their order [MQTT-3.3.2-18].
    """
    if props is None:
        return b""
    parts: list[bytes] = []
    for spec in _SPECS_IN_ORDER:
        if spec.repeatable:
            if spec.wire is WireType.PAIR:
                parts.extend(_encode_value(spec, pair) for pair in props.user_properties)
            else:
                parts.extend(_encode_value(spec, v) for v in props.subscription_identifiers)
            continue
        value = getattr(props, spec.attr)
        if value is not None:
            parts.append(_encode_value(spec, value))
    return b"".join(parts)


def decode_properties(
    buf: bytes | bytearray | memoryview, pos: int, packet_type: int
) -> tuple[Properties, int]:
    """Read a property block (Property Length then properties) for ``packet_type``.

    Returns:
        the decoded properties and the position after the block.

    Raises:
        RemoteProtocolError: Malformed Packet for an identifier not allowed in this packet, a bad
            value encoding or a length that overruns; Protocol Error for a duplicate of a
            non-repeatable property or a value out of range (e.g. Receive Maximum 0).
    """
    length, pos = decode_varint(buf, pos, "property length")
    end = pos + length
    if end > len(buf):
        raise RemoteProtocolError(_MALFORMED, f"property length {length} exceeds packet")
    props = Properties()
    if length == 0:
        return props, end
    view = buf[:end]
    seen: set[int] = set()
    while pos < end:
        pid, pos = decode_varint(view, pos, "property identifier")
        spec = PROPERTY_TABLE.get(pid)
        if spec is None or packet_type not in spec.packets:
            name = spec.id.name if spec is not None else f"0x{pid:02X}"
            raise RemoteProtocolError(
                _MALFORMED, f"property {name} is not allowed in {_packet_name(packet_type)}"
            )
        value, pos = _decode_value(spec, view, pos)
        if spec.repeatable:
            if spec.wire is WireType.PAIR:
                props.user_properties.append(value)  # type: ignore[arg-type]
                continue
            if packet_type == PacketType.SUBSCRIBE and props.subscription_identifiers:
                raise RemoteProtocolError(
                    _PROTOCOL, "SUBSCRIPTION_IDENTIFIER appears twice in SUBSCRIBE"
                )
            _check_range(spec, value)
            props.subscription_identifiers.append(value)  # type: ignore[arg-type]
            continue
        if pid in seen:
            raise RemoteProtocolError(_PROTOCOL, f"property {spec.id.name} appears twice")
        seen.add(pid)
        if isinstance(value, int):
            _check_range(spec, value)
        setattr(props, spec.attr, value)
    return props, end


def _check_range(spec: PropertySpec, value: object) -> None:
    assert isinstance(value, int)
    if value < spec.minimum or value > spec.maximum:
        raise RemoteProtocolError(_PROTOCOL, f"property {spec.id.name} has invalid value {value}")


def _decode_value(
    spec: PropertySpec, buf: bytes | bytearray | memoryview, pos: int
) -> tuple[object, int]:
    wire = spec.wire
    field = spec.id.name
    if wire is WireType.BYTE:
        if pos >= len(buf):
            raise RemoteProtocolError(_MALFORMED, f"{field}: truncated")
        return buf[pos], pos + 1
    if wire is WireType.U16:
        if pos + 2 > len(buf):
            raise RemoteProtocolError(_MALFORMED, f"{field}: truncated")
        return (buf[pos] << 8) | buf[pos + 1], pos + 2
    if wire is WireType.U32:
        if pos + 4 > len(buf):
            raise RemoteProtocolError(_MALFORMED, f"{field}: truncated")
        return int.from_bytes(buf[pos : pos + 4], "big"), pos + 4
    if wire is WireType.VARINT:
        return decode_varint(buf, pos, field)
    if wire is WireType.STRING:
        return decode_string(buf, pos, field)
    if wire is WireType.BINARY:
        return decode_binary(buf, pos, field)
    name, pos = decode_string(buf, pos, field + " name")  # [MQTT-1.5.7-1]
    value, pos = decode_string(buf, pos, field + " value")
    return (name, value), pos


def _packet_name(packet_type: int) -> str:
    return "Will Properties" if packet_type == WILL else PacketType(packet_type).name


def _skip_value(raw: bytes, pos: int, wire: WireType) -> int:
    if wire is WireType.BYTE:
        return pos + 1
    if wire is WireType.U16:
        return pos + 2
    if wire is WireType.U32:
        return pos + 4
    if wire is WireType.VARINT:
        return decode_varint(raw, pos)[1]
    if wire is WireType.PAIR:
        pos = pos + 2 + ((raw[pos] << 8) | raw[pos + 1])
    return pos + 2 + ((raw[pos] << 8) | raw[pos + 1])


def strip_properties(raw: bytes, drop: frozenset[int]) -> bytes:
    """Remove the properties whose identifiers are in ``drop`` from an already validated
    property block (without its length prefix), keeping the others in order.

    The broker uses it to take the Topic Alias and Message Expiry Interval out of an incoming
    PUBLISH before forwarding it [MQTT-3.3.2-7].
    """
    out: list[bytes] = []
    pos = 0
    end = len(raw)
    kept_from = 0
    while pos < end:
        start = pos
        pid, pos = decode_varint(raw, pos, "property identifier")
        spec = PROPERTY_TABLE.get(pid)
        if spec is None:
            raise RemoteProtocolError(_MALFORMED, f"unknown property 0x{pid:02X}")
        pos = _skip_value(raw, pos, spec.wire)
        if pid in drop:
            out.append(raw[kept_from:start])
            kept_from = pos
    if not out:
        return raw
    out.append(raw[kept_from:])
    return b"".join(out)
