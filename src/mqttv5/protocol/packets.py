"""The 15 MQTT control packets, for protocol levels 5 (MQTT 5.0), 4 (3.1.1) and 3 (3.1).

Every packet class has ``encode(version) -> bytes``. :func:`decode_packet` turns one packet's fixed
header byte and body into a packet object; :class:`PacketDecoder` does it incrementally for a
stream. PUBLISH and the acknowledgements are plain ``__slots__`` classes (they are on the broker's
hot path); PUBLISH keeps its properties as raw bytes and decodes them only when asked.

Decoding never raises anything but :class:`RemoteProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias, TypeVar

from .codec import (
    VARINTS,
    decode_binary,
    decode_string,
    decode_varint,
    encode_binary,
    encode_string,
    encode_varint,
    varint_size,
)
from .constants import PacketType
from .errors import LocalProtocolError, RemoteProtocolError
from .properties import WILL, Properties, decode_properties, encode_properties
from .reason_codes import (
    AUTH_CODES,
    CONNACK_CODES,
    DISCONNECT_CODES,
    PUBACK_CODES,
    PUBCOMP_CODES,
    PUBREC_CODES,
    PUBREL_CODES,
    SUBACK_CODES,
    UNSUBACK_CODES,
    ReasonCode,
    connack_return_code_v311,
    reason_code_from_v311_connack,
)

__all__ = [
    "MAX_PACKET_SIZE",
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketDecoder",
    "Pingreq",
    "Pingresp",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "Suback",
    "Subscribe",
    "Subscription",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "decode_packet",
    "encode_publish_parts",
]

MAX_PACKET_SIZE: Final = 268_435_460  # 1 + 4 + 268,435,455 (section 2.1.4)
_MALFORMED: Final = ReasonCode.MALFORMED_PACKET
_PROTOCOL: Final = ReasonCode.PROTOCOL_ERROR
_V5: Final = 5

Buffer: TypeAlias = bytes | bytearray | memoryview


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def _props_block(props: Properties | None) -> bytes:
    raw = encode_properties(props)
    return encode_varint(len(raw)) + raw


def _expect_end(body: Buffer, pos: int, what: str) -> None:
    if pos != len(body):
        raise RemoteProtocolError(
            _MALFORMED, f"{what}: {len(body) - pos} unexpected trailing bytes"
        )


def _packet_id(body: Buffer, pos: int, what: str) -> tuple[int, int]:
    if pos + 2 > len(body):
        raise RemoteProtocolError(_MALFORMED, f"{what}: truncated packet identifier")
    pid = (body[pos] << 8) | body[pos + 1]
    if pid == 0:
        # [MQTT-2.2.1-3] / [MQTT-2.2.1-4] packet identifiers are non-zero
        raise RemoteProtocolError(_PROTOCOL, f"{what}: packet identifier 0")
    return pid, pos + 2


# ---------------------------------------------------------------------------------------------
# CONNECT / CONNACK


@dataclass(slots=True)
class Will:
    """A Will Message carried in CONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Connect:
    """CONNECT (section 3.1).

    ``protocol_level`` is 5, 4 (3.1.1) or 3 (3.1); ``is_bridge`` is Mosquitto's bridge bit (0x80 on
    the protocol level, ``try_private``).
    """

    client_id: str = ""
    protocol_level: int = 5
    clean_start: bool = True
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = field(default_factory=Properties)
    is_bridge: bool = False
    protocol_name: str = ""

    def encode(self, version: int | None = None) -> bytes:
        """Encode for this packet's own protocol level (``version`` is ignored)."""
        level = self.protocol_level
        name = self.protocol_name or ("MQIsdp" if level == 3 else "MQTT")
        flags = 0
        if self.clean_start:
            flags |= 0x02
        will = self.will
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if self.password is not None:
            flags |= 0x40
        if self.username is not None:
            flags |= 0x80
        parts = [
            encode_string(name),
            bytes((level | (0x80 if self.is_bridge else 0), flags)),
            self.keep_alive.to_bytes(2, "big"),
        ]
        if level == _V5:
            parts.append(_props_block(self.properties))
        parts.append(encode_string(self.client_id))
        if will is not None:
            if level == _V5:
                parts.append(_props_block(will.properties))
            parts.append(encode_string(will.topic))
            parts.append(encode_binary(will.payload))
        if self.username is not None:
            parts.append(encode_string(self.username))
        if self.password is not None:
            parts.append(encode_binary(self.password))
        return _frame(0x10, b"".join(parts))


class UnsupportedProtocol(RemoteProtocolError):
    """CONNECT named a protocol or level we do not speak.

    ``connack`` is the refusal to send before closing: a 5.0 CONNACK 0x84 for level 5, otherwise a
    3.1.1 CONNACK with return code 0x01.
    """

    def __init__(self, message: str, level: int) -> None:
        super().__init__(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, message)
        self.level = level
        version = _V5 if level == _V5 else 4
        self.connack = Connack(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION).encode(version)


def _decode_connect(flags: int, body: Buffer, version: int) -> Connect:
    name, pos = decode_string(body, 0, "CONNECT protocol name")
    if pos >= len(body):
        raise RemoteProtocolError(_MALFORMED, "CONNECT: truncated protocol level")
    raw_level = body[pos]
    level = raw_level & 0x7F
    is_bridge = bool(raw_level & 0x80)
    if not ((name == "MQTT" and level in (4, 5)) or (name == "MQIsdp" and level == 3)):
        # [MQTT-3.1.2-1] [MQTT-3.1.2-2] answered with CONNACK 0x84 (3.1.1: 0x01), then closed
        raise UnsupportedProtocol(f"unsupported protocol {name!r} level {level}", level)
    pos += 1
    if pos + 3 > len(body):
        raise RemoteProtocolError(_MALFORMED, "CONNECT: truncated variable header")
    cflags = body[pos]
    keep_alive = (body[pos + 1] << 8) | body[pos + 2]
    pos += 3
    if cflags & 0x01:
        raise RemoteProtocolError(
            _MALFORMED, "CONNECT: reserved flag bit 0 is set"
        )  # [MQTT-3.1.2-3]
    will_flag = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    if not will_flag and (will_qos or will_retain):
        # [MQTT-3.1.2-11] [MQTT-3.1.2-13]
        raise RemoteProtocolError(_MALFORMED, "CONNECT: will QoS/retain set without will flag")
    if will_qos == 3:
        raise RemoteProtocolError(_MALFORMED, "CONNECT: will QoS 3")  # [MQTT-3.1.2-12]
    has_user = bool(cflags & 0x80)
    has_password = bool(cflags & 0x40)
    if level != _V5 and has_password and not has_user:
        raise RemoteProtocolError(_MALFORMED, "CONNECT: password flag without user name flag")
    props = Properties()
    if level == _V5:
        props, pos = decode_properties(body, pos, PacketType.CONNECT)
        if props.authentication_data is not None and props.authentication_method is None:
            raise RemoteProtocolError(_PROTOCOL, "CONNECT: authentication data without method")
    client_id, pos = decode_string(body, pos, "CONNECT client identifier")
    will = None
    if will_flag:
        will_props = Properties()
        if level == _V5:
            will_props, pos = decode_properties(body, pos, WILL)
        topic, pos = decode_string(body, pos, "CONNECT will topic")
        if not topic or "+" in topic or "#" in topic:
            raise RemoteProtocolError(
                ReasonCode.TOPIC_NAME_INVALID, f"will topic {topic!r} invalid"
            )
        payload, pos = decode_binary(body, pos, "CONNECT will payload")
        will = Will(topic, payload, will_qos, will_retain, will_props)
    username = password = None
    if has_user:
        username, pos = decode_string(body, pos, "CONNECT user name")
    if has_password:
        password, pos = decode_binary(body, pos, "CONNECT password")
    _expect_end(body, pos, "CONNECT")
    return Connect(
        client_id=client_id,
        protocol_level=level,
        clean_start=bool(cflags & 0x02),
        keep_alive=keep_alive,
        username=username,
        password=password,
        will=will,
        properties=props,
        is_bridge=is_bridge,
        protocol_name=name,
    )


@dataclass(slots=True)
class Connack:
    """CONNACK (section 3.2). For 3.1.1 the reason code maps to a return code."""

    reason_code: ReasonCode = ReasonCode.SUCCESS
    session_present: bool = False
    properties: Properties = field(default_factory=Properties)

    def encode(self, version: int = _V5) -> bytes:
        """Encode; for 3.1.1 the reason code becomes a return code and properties are dropped."""
        flags = 0x01 if self.session_present else 0x00
        if version != _V5:
            return bytes((0x20, 2, flags, connack_return_code_v311(self.reason_code)))
        return _frame(0x20, bytes((flags, self.reason_code)) + _props_block(self.properties))


def _decode_connack(flags: int, body: Buffer, version: int) -> Connack:
    if len(body) < 2:
        raise RemoteProtocolError(_MALFORMED, "CONNACK: truncated")
    if body[0] & 0xFE:
        raise RemoteProtocolError(_MALFORMED, "CONNACK: reserved acknowledge flags set")
    session_present = bool(body[0] & 0x01)
    if version != _V5:
        code = reason_code_from_v311_connack(body[1])
        if code is None:
            raise RemoteProtocolError(_MALFORMED, f"CONNACK: return code {body[1]} undefined")
        _expect_end(body, 2, "CONNACK")
        return Connack(code, session_present)
    code = _reason(body[1], CONNACK_CODES, "CONNACK")
    props = Properties()
    pos = 2
    if len(body) > 2:
        props, pos = decode_properties(body, 2, PacketType.CONNACK)
    _expect_end(body, pos, "CONNACK")
    return Connack(code, session_present, props)


def _reason(value: int, valid: frozenset[ReasonCode], what: str) -> ReasonCode:
    try:
        code = ReasonCode(value)
    except ValueError:
        raise RemoteProtocolError(
            _MALFORMED, f"{what}: unknown reason code 0x{value:02X}"
        ) from None
    if code not in valid:
        raise RemoteProtocolError(_PROTOCOL, f"{what}: reason code {code.name} not allowed")
    return code


# ---------------------------------------------------------------------------------------------
# PUBLISH (hot path)


class Publish:
    """PUBLISH (section 3.3).

    Properties are kept as the raw property bytes (``props_raw``, without the length prefix); the
    fields a broker needs on every message (Topic Alias, Message Expiry Interval, Payload Format
    Indicator) are read out when the packet is decoded, and :attr:`properties` decodes the rest on
    first access.
    """

    __slots__ = (
        "_properties",
        "dup",
        "message_expiry_interval",
        "packet_id",
        "payload",
        "payload_format_indicator",
        "props_raw",
        "qos",
        "raw",
        "retain",
        "subscription_identifiers",
        "topic",
        "topic_alias",
    )

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    props_raw: bytes
    raw: bytes | None
    topic_alias: int | None
    message_expiry_interval: int | None
    payload_format_indicator: int | None
    subscription_identifiers: list[int]
    _properties: Properties | None

    def __init__(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packet_id: int | None = None,
        properties: Properties | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.raw = None
        if properties is None:
            # no properties: nothing to encode (the common case on the hot path)
            self._properties = None
            self.props_raw = b""
            self.topic_alias = None
            self.message_expiry_interval = None
            self.payload_format_indicator = None
            self.subscription_identifiers = []
        else:
            self.set_properties(properties)

    def set_properties(self, properties: Properties) -> None:
        """Replace the properties (re-encodes ``props_raw``)."""
        self._properties = properties
        self.props_raw = encode_properties(properties)
        self.topic_alias = properties.topic_alias
        self.message_expiry_interval = properties.message_expiry_interval
        self.payload_format_indicator = properties.payload_format_indicator
        self.subscription_identifiers = properties.subscription_identifiers

    @property
    def properties(self) -> Properties:
        """The decoded properties (decoded from ``props_raw`` on first access)."""
        props = self._properties
        if props is None:
            raw = self.props_raw
            props, _ = decode_properties(encode_varint(len(raw)) + raw, 0, PacketType.PUBLISH)
            self._properties = props
        return props

    def encode(self, version: int = _V5) -> bytes:
        """Encode the packet."""
        return encode_publish_parts(
            self.topic.encode("utf-8"),
            self.payload,
            self.qos,
            self.retain,
            self.dup,
            self.packet_id,
            self.props_raw if version == _V5 else None,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Publish):
            return NotImplemented
        return (
            self.topic == other.topic
            and self.payload == other.payload
            and self.qos == other.qos
            and self.retain == other.retain
            and self.dup == other.dup
            and self.packet_id == other.packet_id
            and self.properties == other.properties
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Publish(topic={self.topic!r}, payload={self.payload[:32]!r}, qos={self.qos}, "
            f"retain={self.retain}, dup={self.dup}, packet_id={self.packet_id}, "
            f"properties={self.properties!r})"
        )


def encode_publish_parts(
    topic: bytes,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    props_raw: bytes | None,
) -> bytes:
    """Encode a PUBLISH from its parts; ``props_raw`` is None for 3.1.1 (no property block).

    The broker uses this to encode each outgoing variant once per message.
    """
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    tlen = len(topic)
    if props_raw is None:
        plen_b = props_raw = b""
    else:
        plen = len(props_raw)
        plen_b = VARINTS[plen] if plen < 16384 else encode_varint(plen)
    rem = 2 + tlen + len(plen_b) + len(props_raw) + len(payload)
    if qos:
        if not packet_id:
            raise LocalProtocolError(_PROTOCOL, "QoS > 0 PUBLISH needs a packet identifier")
        rem += 2
        head = bytes((first,)) + (VARINTS[rem] if rem < 16384 else encode_varint(rem))
        return b"".join(
            (head, tlen.to_bytes(2, "big"), topic, packet_id.to_bytes(2, "big"), plen_b, props_raw,
             payload)
        )  # fmt: skip
    head = bytes((first,)) + (VARINTS[rem] if rem < 16384 else encode_varint(rem))
    return b"".join((head, tlen.to_bytes(2, "big"), topic, plen_b, props_raw, payload))


class _PublishCache:
    """The last topic name and property block a stream carried, already validated.

    A publisher usually repeats both from one message to the next; comparing bytes (a memcmp)
    then replaces decoding and validating them again. Nothing is trusted that was not checked:
    only byte-identical input reuses a result.
    """

    __slots__ = ("alias", "expiry", "format", "props_raw", "sub_ids", "topic", "topic_raw")

    def __init__(self) -> None:
        self.topic_raw = b"\x00"  # never equal to a valid topic name
        self.topic = ""
        self.props_raw = b""
        self.alias: int | None = None
        self.expiry: int | None = None
        self.format: int | None = None
        self.sub_ids: tuple[int, ...] = ()


def _decode_publish(flags: int, body: Buffer, version: int) -> Publish:
    data = body if type(body) is bytes else bytes(body)
    return _decode_publish_at(flags, data, 0, len(data), version, None)


def _decode_publish_at(
    flags: int, view: bytes, start: int, end: int, version: int, cache: _PublishCache | None
) -> Publish:
    """Decode the PUBLISH whose body is ``view[start:end]`` (no copy of the body is made)."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise RemoteProtocolError(_MALFORMED, "PUBLISH: QoS 3")  # [MQTT-3.3.1-4]
    dup = flags & 0x08
    if dup and not qos:
        raise RemoteProtocolError(_MALFORMED, "PUBLISH: DUP set on QoS 0")  # [MQTT-3.3.1-2]
    if end - start < 2:
        raise RemoteProtocolError(_MALFORMED, "PUBLISH: truncated topic name")
    pos = start + 2 + ((view[start] << 8) | view[start + 1])
    if pos > end:
        raise RemoteProtocolError(_MALFORMED, "PUBLISH: topic length exceeds packet")
    raw_topic = view[start + 2 : pos]
    if cache is not None and raw_topic == cache.topic_raw:
        topic = cache.topic
    else:
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(_MALFORMED, "PUBLISH: topic name not valid UTF-8") from None
        if "\x00" in topic:
            raise RemoteProtocolError(_MALFORMED, "PUBLISH: topic name contains U+0000")
        if "+" in topic or "#" in topic:
            # [MQTT-3.3.2-2] no wildcards in a topic name
            raise RemoteProtocolError(
                ReasonCode.TOPIC_NAME_INVALID, f"PUBLISH: wildcard in {topic!r}"
            )
        if cache is not None:
            cache.topic_raw = raw_topic
            cache.topic = topic
    pkt = Publish(topic, b"", qos, bool(flags & 0x01), bool(dup))
    if qos:
        if pos + 2 > end:
            raise RemoteProtocolError(_MALFORMED, "PUBLISH: truncated packet identifier")
        packet_id = (view[pos] << 8) | view[pos + 1]
        if not packet_id:
            # [MQTT-2.2.1-3] a QoS 1/2 PUBLISH has a non-zero packet identifier
            raise RemoteProtocolError(_PROTOCOL, "PUBLISH: packet identifier 0")
        pkt.packet_id = packet_id
        pos += 2
    if version == _V5:
        if pos >= end:
            raise RemoteProtocolError(_MALFORMED, "PUBLISH: missing property length")
        if view[pos] == 0:  # no properties: the common case
            pos += 1
        else:
            pos = _scan_publish_properties(pkt, view, pos, end, cache)
        if not topic and pkt.topic_alias is None:
            raise RemoteProtocolError(_PROTOCOL, "PUBLISH: empty topic name without topic alias")
    elif not topic:
        raise RemoteProtocolError(ReasonCode.TOPIC_NAME_INVALID, "PUBLISH: empty topic name")
    pkt.payload = view[pos:end]
    return pkt


def _scan_publish_properties(
    pkt: Publish, body: bytes, pos: int, limit: int, cache: _PublishCache | None = None
) -> int:
    """Validate a PUBLISH property block and pick out the per-message fields; return its end.

    Hand-inlined, as it runs for every PUBLISH with properties: strings are checked for U+0000
    with ``find`` (no slice) and decoded only when the block is not pure ASCII (ASCII is always
    well-formed UTF-8) [MQTT-1.5.4-1] [MQTT-1.5.4-2] [MQTT-1.5.7-1].
    """
    length = body[pos]
    if length < 0x80:
        pos += 1
    else:
        length, pos = decode_varint(body, pos, "PUBLISH property length")
    end = pos + length
    if end > limit:
        raise RemoteProtocolError(_MALFORMED, f"PUBLISH: property length {length} exceeds packet")
    raw = body[pos:end]
    if cache is not None and raw == cache.props_raw:
        pkt.props_raw = cache.props_raw
        pkt.topic_alias = cache.alias
        pkt.message_expiry_interval = cache.expiry
        pkt.payload_format_indicator = cache.format
        if cache.sub_ids:
            pkt.subscription_identifiers = list(cache.sub_ids)
        return end
    pkt.props_raw = raw
    check_utf8 = not raw.isascii()
    find = raw.find
    i = 0
    seen = 0
    try:
        while i < length:
            pid = raw[i]
            if pid == 0x26:  # User Property: a string pair, repeatable
                j = i + 3 + ((raw[i + 1] << 8) | raw[i + 2])
                k = j + 2 + ((raw[j] << 8) | raw[j + 1])
                if k > length:
                    raise RemoteProtocolError(_MALFORMED, "PUBLISH: user property too long")
                if find(b"\x00", i + 3, j) >= 0 or find(b"\x00", j + 2, k) >= 0:
                    raise RemoteProtocolError(_MALFORMED, "PUBLISH: string contains U+0000")
                if check_utf8:
                    raw[i + 3 : j].decode("utf-8")
                    raw[j + 2 : k].decode("utf-8")
                i = k
                continue
            bit = 1 << pid
            if seen & bit and pid != 0x0B:
                raise RemoteProtocolError(_PROTOCOL, f"PUBLISH: property 0x{pid:02X} appears twice")
            seen |= bit
            i += 1
            if pid == 0x03 or pid == 0x08:  # Content Type, Response Topic
                j = i + 2 + ((raw[i] << 8) | raw[i + 1])
                if j > length:
                    raise RemoteProtocolError(_MALFORMED, "PUBLISH: string exceeds properties")
                if find(b"\x00", i + 2, j) >= 0:
                    raise RemoteProtocolError(_MALFORMED, "PUBLISH: string contains U+0000")
                if pid == 0x08:
                    value = raw[i + 2 : j].decode("utf-8")
                    if "+" in value or "#" in value or not value:
                        # [MQTT-3.3.2-14] the Response Topic is a topic name
                        raise RemoteProtocolError(_PROTOCOL, f"PUBLISH: response topic {value!r}")
                elif check_utf8:
                    raw[i + 2 : j].decode("utf-8")
                i = j
            elif pid == 0x02:  # Message Expiry Interval
                if i + 4 > length:
                    raise RemoteProtocolError(_MALFORMED, "PUBLISH: truncated message expiry")
                pkt.message_expiry_interval = int.from_bytes(raw[i : i + 4], "big")
                i += 4
            elif pid == 0x23:  # Topic Alias
                if i + 2 > length:
                    raise RemoteProtocolError(_MALFORMED, "PUBLISH: truncated topic alias")
                pkt.topic_alias = (raw[i] << 8) | raw[i + 1]
                i += 2
            elif pid == 0x01:  # Payload Format Indicator
                value_b = raw[i]
                if value_b > 1:
                    raise RemoteProtocolError(
                        _PROTOCOL, f"PUBLISH: payload format indicator {value_b}"
                    )
                pkt.payload_format_indicator = value_b
                i += 1
            elif pid == 0x09:  # Correlation Data
                i += 2 + ((raw[i] << 8) | raw[i + 1])
                if i > length:
                    raise RemoteProtocolError(_MALFORMED, "PUBLISH: correlation data too long")
            elif pid == 0x0B:  # Subscription Identifier (repeatable)
                sid, i = decode_varint(raw, i, "PUBLISH subscription identifier")
                if sid == 0:
                    raise RemoteProtocolError(_PROTOCOL, "PUBLISH: subscription identifier 0")
                pkt.subscription_identifiers.append(sid)
            else:
                raise RemoteProtocolError(_MALFORMED, f"PUBLISH: property 0x{pid:02X} not allowed")
    except IndexError:
        raise RemoteProtocolError(_MALFORMED, "PUBLISH: truncated property") from None
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(_MALFORMED, f"PUBLISH: invalid UTF-8 ({exc.reason})") from None
    if cache is not None:
        cache.props_raw = raw
        cache.alias = pkt.topic_alias
        cache.expiry = pkt.message_expiry_interval
        cache.format = pkt.payload_format_indicator
        cache.sub_ids = tuple(pkt.subscription_identifiers)
    return end


# ---------------------------------------------------------------------------------------------
# PUBACK, PUBREC, PUBREL, PUBCOMP (hot path)


class _Ack:
    """Shared shape of PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4-3.7)."""

    __slots__ = ("packet_id", "properties", "reason_code")
    FIRST_BYTE: ClassVar[int] = 0x40
    VALID_CODES: ClassVar[frozenset[ReasonCode]] = PUBACK_CODES

    def __init__(
        self,
        packet_id: int,
        reason_code: ReasonCode = ReasonCode.SUCCESS,
        properties: Properties | None = None,
    ) -> None:
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties

    def encode(self, version: int = _V5) -> bytes:
        """Encode; the reason code and properties are omitted when they may be [MQTT-3.4.2-1]."""
        pid = self.packet_id
        first = self.FIRST_BYTE
        if version != _V5:
            return bytes((first, 2, pid >> 8, pid & 0xFF))
        props = self.properties
        if props is None or not props:
            if self.reason_code == 0:
                return bytes((first, 2, pid >> 8, pid & 0xFF))
            return bytes((first, 3, pid >> 8, pid & 0xFF, self.reason_code))
        raw = encode_properties(props)
        body = bytes((pid >> 8, pid & 0xFF, self.reason_code)) + encode_varint(len(raw)) + raw
        return _frame(first, body)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Ack)
        mine = self.properties or Properties()
        theirs = other.properties or Properties()
        return (
            self.packet_id == other.packet_id
            and self.reason_code == other.reason_code
            and mine == theirs
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(packet_id={self.packet_id}, "
            f"reason_code={self.reason_code.name}, properties={self.properties!r})"
        )


class PubAck(_Ack):
    """PUBACK (section 3.4)."""

    __slots__ = ()
    FIRST_BYTE = 0x40
    VALID_CODES = PUBACK_CODES


class PubRec(_Ack):
    """PUBREC (section 3.5)."""

    __slots__ = ()
    FIRST_BYTE = 0x50
    VALID_CODES = PUBREC_CODES


class PubRel(_Ack):
    """PUBREL (section 3.6); fixed header flags 0010."""

    __slots__ = ()
    FIRST_BYTE = 0x62
    VALID_CODES = PUBREL_CODES


class PubComp(_Ack):
    """PUBCOMP (section 3.7)."""

    __slots__ = ()
    FIRST_BYTE = 0x70
    VALID_CODES = PUBCOMP_CODES


_A = TypeVar("_A", bound=_Ack)


def _ack_decoder(cls: type[_A], ptype: PacketType) -> Callable[[int, Buffer, int], _A]:
    name = ptype.name

    def decode(flags: int, body: Buffer, version: int) -> _A:
        pid, pos = _packet_id(body, 0, name)
        blen = len(body)
        if version != _V5 or blen == 2:
            _expect_end(body, pos, name)
            return cls(pid)
        code = _reason(body[2], cls.VALID_CODES, name)
        props = None
        pos = 3
        if blen > 3:
            props, pos = decode_properties(body, 3, ptype)
        _expect_end(body, pos, name)
        return cls(pid, code, props)

    return decode


# ---------------------------------------------------------------------------------------------
# SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK


@dataclass(slots=True)
class Subscription:
    """One topic filter of SUBSCRIBE with its Subscription Options (section 3.8.3.1)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0

    def options_byte(self, version: int = _V5) -> int:
        """The Subscription Options byte (3.1.1: the Requested QoS only)."""
        if version != _V5:
            return self.qos
        return (
            self.qos
            | (0x04 if self.no_local else 0)
            | (0x08 if self.retain_as_published else 0)
            | (self.retain_handling << 4)
        )


@dataclass(slots=True)
class Subscribe:
    """SUBSCRIBE (section 3.8); fixed header flags 0010."""

    packet_id: int
    subscriptions: list[Subscription]
    properties: Properties = field(default_factory=Properties)

    def encode(self, version: int = _V5) -> bytes:
        """Encode the packet."""
        parts = [self.packet_id.to_bytes(2, "big")]
        if version == _V5:
            parts.append(_props_block(self.properties))
        for sub in self.subscriptions:
            parts.append(encode_string(sub.topic_filter))
            parts.append(bytes((sub.options_byte(version),)))
        return _frame(0x82, b"".join(parts))


def _decode_subscribe(flags: int, body: Buffer, version: int) -> Subscribe:
    pid, pos = _packet_id(body, 0, "SUBSCRIBE")
    props = Properties()
    if version == _V5:
        props, pos = decode_properties(body, pos, PacketType.SUBSCRIBE)
    subs: list[Subscription] = []
    reserved = 0xC0 if version == _V5 else 0xFC
    end = len(body)
    while pos < end:
        filt, pos = decode_string(body, pos, "SUBSCRIBE topic filter")
        if pos >= end:
            raise RemoteProtocolError(_MALFORMED, "SUBSCRIBE: missing subscription options")
        opts = body[pos]
        pos += 1
        if opts & reserved:
            # [MQTT-3.8.3-5] reserved bits of the options byte are 0
            raise RemoteProtocolError(_MALFORMED, f"SUBSCRIBE: reserved option bits in {filt!r}")
        qos = opts & 0x03
        if qos == 3:
            raise RemoteProtocolError(_MALFORMED, f"SUBSCRIBE: QoS 3 for {filt!r}")
        rh = (opts >> 4) & 0x03
        if rh == 3:
            raise RemoteProtocolError(_PROTOCOL, f"SUBSCRIBE: retain handling 3 for {filt!r}")
        subs.append(Subscription(filt, qos, bool(opts & 0x04), bool(opts & 0x08), rh))
    if not subs:
        # [MQTT-3.8.3-2] at least one topic filter
        raise RemoteProtocolError(_PROTOCOL, "SUBSCRIBE: no topic filter")
    return Subscribe(pid, subs, props)


@dataclass(slots=True)
class Suback:
    """SUBACK (section 3.9): one reason code per topic filter."""

    packet_id: int
    reason_codes: list[ReasonCode]
    properties: Properties = field(default_factory=Properties)

    def encode(self, version: int = _V5) -> bytes:
        """Encode; 3.1.1 maps every failure code to 0x80."""
        parts = [self.packet_id.to_bytes(2, "big")]
        if version == _V5:
            parts.append(_props_block(self.properties))
            parts.append(bytes(self.reason_codes))
        else:
            parts.append(bytes(c if c < 0x80 else 0x80 for c in self.reason_codes))
        return _frame(0x90, b"".join(parts))


def _decode_suback(flags: int, body: Buffer, version: int) -> Suback:
    pid, pos = _packet_id(body, 0, "SUBACK")
    props = Properties()
    if version == _V5:
        props, pos = decode_properties(body, pos, PacketType.SUBACK)
        codes = [_reason(b, SUBACK_CODES, "SUBACK") for b in bytes(body[pos:])]
    else:
        codes = []
        for b in bytes(body[pos:]):
            if b not in (0, 1, 2, 0x80):
                raise RemoteProtocolError(_MALFORMED, f"SUBACK: return code 0x{b:02X}")
            codes.append(ReasonCode(b))
    if not codes:
        raise RemoteProtocolError(_PROTOCOL, "SUBACK: no reason codes")
    return Suback(pid, codes, props)


@dataclass(slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (section 3.10); fixed header flags 0010."""

    packet_id: int
    topic_filters: list[str]
    properties: Properties = field(default_factory=Properties)

    def encode(self, version: int = _V5) -> bytes:
        """Encode the packet."""
        parts = [self.packet_id.to_bytes(2, "big")]
        if version == _V5:
            parts.append(_props_block(self.properties))
        parts.extend(encode_string(f) for f in self.topic_filters)
        return _frame(0xA2, b"".join(parts))


def _decode_unsubscribe(flags: int, body: Buffer, version: int) -> Unsubscribe:
    pid, pos = _packet_id(body, 0, "UNSUBSCRIBE")
    props = Properties()
    if version == _V5:
        props, pos = decode_properties(body, pos, PacketType.UNSUBSCRIBE)
    filters: list[str] = []
    end = len(body)
    while pos < end:
        filt, pos = decode_string(body, pos, "UNSUBSCRIBE topic filter")
        filters.append(filt)
    if not filters:
        # [MQTT-3.10.3-2] at least one topic filter
        raise RemoteProtocolError(_PROTOCOL, "UNSUBSCRIBE: no topic filter")
    return Unsubscribe(pid, filters, props)


@dataclass(slots=True)
class Unsuback:
    """UNSUBACK (section 3.11); 3.1.1 has no reason codes."""

    packet_id: int
    reason_codes: list[ReasonCode] = field(default_factory=list)
    properties: Properties = field(default_factory=Properties)

    def encode(self, version: int = _V5) -> bytes:
        """Encode the packet."""
        if version != _V5:
            return bytes((0xB0, 2, self.packet_id >> 8, self.packet_id & 0xFF))
        body = self.packet_id.to_bytes(2, "big") + _props_block(self.properties)
        return _frame(0xB0, body + bytes(self.reason_codes))


def _decode_unsuback(flags: int, body: Buffer, version: int) -> Unsuback:
    pid, pos = _packet_id(body, 0, "UNSUBACK")
    if version != _V5:
        _expect_end(body, pos, "UNSUBACK")
        return Unsuback(pid)
    props, pos = decode_properties(body, pos, PacketType.UNSUBACK)
    codes = [_reason(b, UNSUBACK_CODES, "UNSUBACK") for b in bytes(body[pos:])]
    if not codes:
        raise RemoteProtocolError(_PROTOCOL, "UNSUBACK: no reason codes")
    return Unsuback(pid, codes, props)


# ---------------------------------------------------------------------------------------------
# PINGREQ / PINGRESP / DISCONNECT / AUTH


@dataclass(slots=True, frozen=True)
class Pingreq:
    """PINGREQ (section 3.12)."""

    def encode(self, version: int = _V5) -> bytes:
        """Encode the packet."""
        return b"\xc0\x00"


@dataclass(slots=True, frozen=True)
class Pingresp:
    """PINGRESP (section 3.13)."""

    def encode(self, version: int = _V5) -> bytes:
        """Encode the packet."""
        return b"\xd0\x00"


_PINGREQ: Final = Pingreq()
_PINGRESP: Final = Pingresp()


def _decode_pingreq(flags: int, body: Buffer, version: int) -> Pingreq:
    _expect_end(body, 0, "PINGREQ")
    return _PINGREQ


def _decode_pingresp(flags: int, body: Buffer, version: int) -> Pingresp:
    _expect_end(body, 0, "PINGRESP")
    return _PINGRESP


@dataclass(slots=True)
class Disconnect:
    """DISCONNECT (section 3.14); 3.1.1 has no reason code or properties."""

    reason_code: ReasonCode = ReasonCode.NORMAL_DISCONNECTION
    properties: Properties = field(default_factory=Properties)

    def encode(self, version: int = _V5) -> bytes:
        """Encode; the reason code and properties are omitted when they may be."""
        if version != _V5:
            return b"\xe0\x00"
        if not self.properties:
            if self.reason_code == 0:
                return b"\xe0\x00"
            return bytes((0xE0, 1, self.reason_code))
        return _frame(0xE0, bytes((self.reason_code,)) + _props_block(self.properties))


def _decode_disconnect(flags: int, body: Buffer, version: int) -> Disconnect:
    if version != _V5 or not body:
        _expect_end(body, 0, "DISCONNECT")
        return Disconnect()
    code = _reason(body[0], DISCONNECT_CODES, "DISCONNECT")
    props = Properties()
    pos = 1
    if len(body) > 1:
        props, pos = decode_properties(body, 1, PacketType.DISCONNECT)
    _expect_end(body, pos, "DISCONNECT")
    return Disconnect(code, props)


@dataclass(slots=True)
class Auth:
    """AUTH (section 3.15), MQTT 5.0 only."""

    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = field(default_factory=Properties)

    def encode(self, version: int = _V5) -> bytes:
        """Encode the packet."""
        if version != _V5:
            raise LocalProtocolError(_PROTOCOL, "AUTH exists only in MQTT 5.0")
        if self.reason_code == 0 and not self.properties:
            return b"\xf0\x00"
        return _frame(0xF0, bytes((self.reason_code,)) + _props_block(self.properties))


def _decode_auth(flags: int, body: Buffer, version: int) -> Auth:
    if version != _V5:
        raise RemoteProtocolError(_MALFORMED, "AUTH is not an MQTT 3.1.1 packet")
    if not body:
        return Auth()
    code = _reason(body[0], AUTH_CODES, "AUTH")
    props = Properties()
    pos = 1
    if len(body) > 1:
        props, pos = decode_properties(body, 1, PacketType.AUTH)
    _expect_end(body, pos, "AUTH")
    return Auth(code, props)


# ---------------------------------------------------------------------------------------------
# dispatch

Packet: TypeAlias = (
    Connect | Connack | Publish | PubAck | PubRec | PubRel | PubComp | Subscribe | Suback
    | Unsubscribe | Unsuback | Pingreq | Pingresp | Disconnect | Auth
)  # fmt: skip

_Decoder: TypeAlias = Callable[[int, Buffer, int], Packet]

# Index: packet type. Value: (required fixed-header flags or -1 for PUBLISH, decoder).
_DECODERS: Final[tuple[tuple[int, _Decoder] | None, ...]] = (
    None,
    (0x0, _decode_connect),
    (0x0, _decode_connack),
    (-1, _decode_publish),
    (0x0, _ack_decoder(PubAck, PacketType.PUBACK)),
    (0x0, _ack_decoder(PubRec, PacketType.PUBREC)),
    (0x2, _ack_decoder(PubRel, PacketType.PUBREL)),
    (0x0, _ack_decoder(PubComp, PacketType.PUBCOMP)),
    (0x2, _decode_subscribe),
    (0x0, _decode_suback),
    (0x2, _decode_unsubscribe),
    (0x0, _decode_unsuback),
    (0x0, _decode_pingreq),
    (0x0, _decode_pingresp),
    (0x0, _decode_disconnect),
    (0x0, _decode_auth),
)


def decode_packet(first_byte: int, body: Buffer, version: int = _V5) -> Packet:
    """Decode one packet from its fixed-header byte and its body (the Remaining Length bytes).

    Args:
        first_byte: the first byte of the fixed header (type and flags).
        body: exactly the bytes after the Remaining Length.
        version: the protocol level of the connection (5, 4 or 3); CONNECT ignores it.

    Raises:
        RemoteProtocolError: with the reason code the receiver should send.
    """
    entry = _DECODERS[first_byte >> 4]
    if entry is None:
        raise RemoteProtocolError(_MALFORMED, "reserved packet type 0")
    required, decoder = entry
    flags = first_byte & 0x0F
    if required >= 0 and flags != required:
        # [MQTT-2.1.3-1] reserved flag bits must carry the listed value
        name = PacketType(first_byte >> 4).name
        raise RemoteProtocolError(_MALFORMED, f"{name}: invalid fixed header flags 0x{flags:X}")
    try:
        return decoder(flags, body, version)
    except RemoteProtocolError:
        raise
    except (IndexError, ValueError) as exc:  # defensive: nothing else may escape the decoder
        raise RemoteProtocolError(_MALFORMED, f"malformed packet: {exc}") from exc


class PacketDecoder:
    """Incremental stream decoder: feed bytes in any chunking, get whole packets out.

    A declared Remaining Length above ``max_packet_size`` raises Packet Too Large (0x95) as soon as
    the fixed header is read, before any of the payload is buffered, so the buffer never holds more
    than one maximum-size packet.

    Attributes:
        version: protocol level used to decode (set it after CONNECT/CONNACK).
        max_packet_size: the largest whole packet (fixed header included) accepted.
        keep_raw: keep each PUBLISH's bytes as received in ``Publish.raw`` (the broker
            forwards them verbatim when nothing varies).
    """

    __slots__ = ("_buf", "_cache", "keep_raw", "max_packet_size", "version")

    def __init__(self, version: int = _V5, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self.version = version
        self.max_packet_size = max_packet_size
        self._buf = b""
        self._cache = _PublishCache()
        self.keep_raw = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        """Add bytes; return every packet now complete, in order.

        Raises:
            RemoteProtocolError: the stream is broken; the decoder must not be used again.
        """
        view = self._buf + data if self._buf else bytes(data)
        out: list[Packet] = []
        pos = 0
        end = len(view)
        version = self.version
        limit = self.max_packet_size
        cache = self._cache
        keep_raw = self.keep_raw
        try:
            while end - pos >= 2:
                first = view[pos]
                # inline Remaining Length: one or two bytes in the common case
                byte = view[pos + 1]
                if byte < 0x80:
                    body_start = pos + 2
                    remaining = byte
                elif end - pos >= 3 and view[pos + 2] < 0x80:
                    body_start = pos + 3
                    remaining = (byte & 0x7F) | (view[pos + 2] << 7)
                else:
                    remaining, body_start = _header_varint(view, pos + 1)
                    if body_start < 0:
                        break  # header incomplete
                total = body_start - pos + remaining
                if total > limit:
                    raise RemoteProtocolError(
                        ReasonCode.PACKET_TOO_LARGE,
                        f"packet of {total} bytes exceeds maximum packet size {limit}",
                    )
                if end - pos < total:
                    break
                pos += total
                if first >> 4 == 3:  # PUBLISH: straight to its decoder, no copy of the body
                    publish = _decode_publish_at(
                        first & 0x0F, view, body_start, pos, version, cache
                    )
                    if keep_raw and body_start - pos + total == 1 + varint_size(remaining):
                        publish.raw = view[pos - total : pos]  # (header in shortest form)
                    out.append(publish)
                    continue
                packet = decode_packet(first, view[body_start:pos], version)
                out.append(packet)
                if isinstance(packet, Connect):
                    version = self.version = packet.protocol_level
        except (IndexError, ValueError) as exc:  # defensive: only ProtocolError may escape
            raise RemoteProtocolError(_MALFORMED, f"malformed packet: {exc}") from exc
        self._buf = view[pos:] if pos < end else b""
        return out


def _header_varint(view: Buffer, pos: int) -> tuple[int, int]:
    """Read a Remaining Length; return (value, position after) or (0, -1) if incomplete."""
    value = 0
    shift = 0
    end = len(view)
    for _ in range(4):
        if pos >= end:
            return 0, -1
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise RemoteProtocolError(_MALFORMED, "remaining length longer than 4 bytes")


def encode_packets(packets: Sequence[Packet], version: int = _V5) -> bytes:
    """Encode several packets into one byte string."""
    return b"".join(p.encode(version) for p in packets)
