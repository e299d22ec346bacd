"""Tests for mqttv5.protocol.packets: the control packets (chapters 2 and 3), MQTT 5.0 and 3.1.1."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttv5.protocol.codec import decode_varint, encode_string, encode_varint
from mqttv5.protocol.constants import PacketType
from mqttv5.protocol.errors import LocalProtocolError, RemoteProtocolError
from mqttv5.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketDecoder,
    Pingreq,
    Pingresp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    UnsupportedProtocol,
    Will,
    decode_packet,
    encode_packets,
    encode_publish_parts,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import (
    PUBACK_CODES,
    PUBCOMP_CODES,
    PUBREC_CODES,
    PUBREL_CODES,
    ReasonCode,
)
from tests.protocol.strategies import connect, packets_for

RC = ReasonCode
MALFORMED = RC.MALFORMED_PACKET
PROTOCOL = RC.PROTOCOL_ERROR

# --- helpers ---------------------------------------------------------------------------------


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def parse(data: bytes, version: int = 5) -> Packet:
    """Decode exactly one whole packet (fixed header included)."""
    length, start = decode_varint(data, 1)
    assert start + length == len(data), "test data: remaining length does not match"
    return decode_packet(data[0], data[start:], version)


def reject(data: bytes, code: ReasonCode, version: int = 5) -> RemoteProtocolError:
    """Assert that ``data`` (one whole packet) is refused with ``code``, by both decoders."""
    with pytest.raises(RemoteProtocolError) as info:
        parse(data, version)
    assert info.value.reason_code is code, info.value
    with pytest.raises(RemoteProtocolError) as info2:
        PacketDecoder(version).feed(data)
    assert info2.value.reason_code is code
    return info.value


def connect_body(
    flags: int = 0x02,
    *,
    level: int = 5,
    name: bytes = b"MQTT",
    props: bytes = b"\x00",
    payload: bytes | None = None,
) -> bytes:
    head = len(name).to_bytes(2, "big") + name + bytes((level, flags)) + b"\x00\x3c"
    if level & 0x7F != 5:
        props = b""
    if payload is None:
        payload = encode_string("cid")
    return frame(0x10, head + props + payload)


def publish_bytes(
    topic: bytes = b"a/b",
    *,
    flags: int = 0x02,
    packet_id: bytes = b"\x00\x01",
    props: bytes = b"\x00",
    payload: bytes = b"hi",
) -> bytes:
    qos = (flags >> 1) & 3
    body = len(topic).to_bytes(2, "big") + topic + (packet_id if qos else b"") + props + payload
    return frame(0x30 | flags, body)


def prop_block(*props: bytes) -> bytes:
    body = b"".join(props)
    return encode_varint(len(body)) + body


# Version 5 and 3.1.1 packet types (3.1.1 has no AUTH).
ROUND_TRIP_CASES = [(t, 5) for t in PacketType] + [(t, 4) for t in PacketType if t != 15]


class TestRoundTrip:
    """Every packet type survives encode -> decode, for MQTT 5.0 and 3.1.1."""

    @pytest.mark.parametrize(
        ("packet_type", "version"), ROUND_TRIP_CASES, ids=lambda v: getattr(v, "name", f"v{v}")
    )
    @settings(max_examples=60)
    @given(data=st.data())
    def test_encode_decode(
        self, packet_type: PacketType, version: int, data: st.DataObject
    ) -> None:
        packet = data.draw(packets_for(packet_type, version))
        encoded = packet.encode(version)
        assert encoded[0] >> 4 == packet_type
        decoded = parse(encoded, version)
        assert type(decoded) is type(packet)
        assert decoded == packet
        assert decoded.encode(version) == encoded  # our encoder is deterministic

    @given(connect(3))
    def test_mqtt_3_1_connect(self, packet: Connect) -> None:
        encoded = packet.encode()
        # after the fixed header: a 1-4 byte Remaining Length (each byte but the last >= 0x80)
        start = 1 + next(i for i in range(1, 5) if encoded[i] < 0x80)
        assert encoded[start : start + 8] == b"\x00\x06MQIsdp"
        assert parse(encoded, 3) == packet

    @given(st.lists(packets_for(PacketType.PUBLISH, 5), max_size=5))
    def test_encode_packets_concatenates(self, packets: list[Publish]) -> None:
        assert PacketDecoder(5).feed(encode_packets(packets)) == packets


class TestFixedHeader:
    """2.1 Structure of a Control Packet: packet type and reserved flags."""

    @pytest.mark.parametrize(
        ("packet_type", "body"),
        [
            (PacketType.CONNACK, b"\x00\x00\x00"),
            (PacketType.PUBACK, b"\x00\x01"),
            (PacketType.PUBREC, b"\x00\x01"),
            (PacketType.PUBCOMP, b"\x00\x01"),
            (PacketType.SUBACK, b"\x00\x01\x00\x00"),
            (PacketType.UNSUBACK, b"\x00\x01\x00\x00"),
            (PacketType.PINGREQ, b""),
            (PacketType.PINGRESP, b""),
        ],
        ids=lambda v: getattr(v, "name", ""),
    )
    @pytest.mark.parametrize("flags", range(1, 16))
    @pytest.mark.spec("MQTT-2.1.3-1")
    def test_reserved_flags_must_be_zero(self, packet_type: int, body: bytes, flags: int) -> None:
        assert parse(frame(packet_type << 4, body)) is not None
        reject(frame(packet_type << 4 | flags, body), MALFORMED)

    @pytest.mark.parametrize("flags", [f for f in range(16) if f != 2])
    @pytest.mark.spec("MQTT-2.1.3-1", "MQTT-3.6.1-1")
    def test_pubrel_flags_are_0010(self, flags: int) -> None:
        reject(frame(0x60 | flags, b"\x00\x01"), MALFORMED)

    @pytest.mark.parametrize("flags", [f for f in range(16) if f != 2])
    @pytest.mark.spec("MQTT-2.1.3-1", "MQTT-3.8.1-1")
    def test_subscribe_flags_are_0010(self, flags: int) -> None:
        reject(frame(0x80 | flags, b"\x00\x01\x00\x00\x01a\x00"), MALFORMED)

    @pytest.mark.parametrize("flags", [f for f in range(16) if f != 2])
    @pytest.mark.spec("MQTT-2.1.3-1", "MQTT-3.10.1-1")
    def test_unsubscribe_flags_are_0010(self, flags: int) -> None:
        reject(frame(0xA0 | flags, b"\x00\x01\x00\x00\x01a"), MALFORMED)

    @pytest.mark.parametrize("flags", range(1, 16))
    @pytest.mark.spec("MQTT-2.1.3-1", "MQTT-3.14.1-1")
    def test_disconnect_flags_are_zero(self, flags: int) -> None:
        reject(frame(0xE0 | flags, b""), MALFORMED)

    @pytest.mark.parametrize("flags", range(1, 16))
    @pytest.mark.spec("MQTT-2.1.3-1", "MQTT-3.15.1-1")
    def test_auth_flags_are_zero(self, flags: int) -> None:
        reject(frame(0xF0 | flags, b""), MALFORMED)

    @pytest.mark.parametrize("flags", range(1, 16))
    @pytest.mark.spec("MQTT-2.1.3-1")
    def test_connect_flags_are_zero(self, flags: int) -> None:
        data = bytearray(connect_body())
        data[0] |= flags
        reject(bytes(data), MALFORMED)

    @pytest.mark.parametrize("first", [0x00, 0x0F])
    def test_reserved_packet_type_zero(self, first: int) -> None:
        reject(bytes((first, 0)), MALFORMED)

    @pytest.mark.parametrize(
        ("packet", "encoded"),
        [
            (Pingreq(), b"\xc0\x00"),
            (Pingresp(), b"\xd0\x00"),
            (Disconnect(), b"\xe0\x00"),
            (PubAck(1), b"\x40\x02\x00\x01"),
            (PubRec(0x1234), b"\x50\x02\x12\x34"),
            (PubRel(2), b"\x62\x02\x00\x02"),
            (PubComp(65535), b"\x70\x02\xff\xff"),
            (Subscribe(1, [Subscription("a", 1)]), b"\x82\x07\x00\x01\x00\x00\x01a\x01"),
            (Unsubscribe(3, ["a"]), b"\xa2\x06\x00\x03\x00\x00\x01a"),
        ],
    )
    def test_known_encodings(self, packet: Packet, encoded: bytes) -> None:
        assert packet.encode(5) == encoded
        assert parse(encoded) == packet


class TestPacketIdentifier:
    """2.2.1 Packet Identifier: non-zero, and absent from QoS 0 PUBLISH."""

    @pytest.mark.parametrize(
        "data",
        [
            publish_bytes(flags=0x02, packet_id=b"\x00\x00"),
            publish_bytes(flags=0x04, packet_id=b"\x00\x00"),
            frame(0x40, b"\x00\x00"),
            frame(0x50, b"\x00\x00"),
            frame(0x62, b"\x00\x00"),
            frame(0x70, b"\x00\x00"),
            frame(0x82, b"\x00\x00\x00\x00\x01a\x00"),
            frame(0x90, b"\x00\x00\x00\x00"),
            frame(0xA2, b"\x00\x00\x00\x00\x01a"),
            frame(0xB0, b"\x00\x00\x00\x00"),
        ],
        ids=lambda d: f"{d[0]:02x}",
    )
    def test_zero_is_refused(self, data: bytes) -> None:
        err = reject(data, PROTOCOL)
        assert "packet identifier 0" in str(err)

    @pytest.mark.spec("MQTT-2.2.1-2")
    def test_qos_0_publish_has_no_packet_identifier(self) -> None:
        packet = Publish("a", b"x", qos=0, packet_id=7)
        assert packet.encode() == b"\x30\x05\x00\x01a\x00x"

    @pytest.mark.spec("MQTT-2.2.1-3")
    def test_encoder_refuses_qos_1_without_identifier(self) -> None:
        with pytest.raises(LocalProtocolError):
            Publish("a", qos=1).encode()
        with pytest.raises(LocalProtocolError):
            encode_publish_parts(b"a", b"", 2, False, False, 0, b"")

    @pytest.mark.parametrize(
        "data",
        [
            frame(0x40, b"\x00"),
            frame(0x90, b""),
            publish_bytes(topic=b"a", flags=0x02, packet_id=b"\x00", props=b"", payload=b""),
        ],
    )
    def test_truncated_identifier(self, data: bytes) -> None:
        reject(data, MALFORMED)


class TestConnect:
    """3.1 CONNECT."""

    def test_full_packet_encoding(self) -> None:
        packet = Connect(
            client_id="cid",
            keep_alive=60,
            clean_start=True,
            username="u",
            password=b"p",
            will=Will(
                "w", b"bye", qos=1, retain=True, properties=Properties(will_delay_interval=5)
            ),
            properties=Properties(session_expiry_interval=10),
            protocol_name="MQTT",
        )
        body = (
            b"\x00\x04MQTT\x05"
            + bytes((0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02,))
            + b"\x00\x3c"
            + b"\x05\x11\x00\x00\x00\x0a"
            + b"\x00\x03cid"
            + b"\x05\x18\x00\x00\x00\x05"
            + b"\x00\x01w"
            + b"\x00\x03bye"
            + b"\x00\x01u"
            + b"\x00\x01p"
        )
        assert packet.encode() == frame(0x10, body)
        assert parse(frame(0x10, body)) == packet

    @pytest.mark.spec("MQTT-3.1.3-1", "MQTT-3.1.2-9", "MQTT-3.1.2-17", "MQTT-3.1.2-18")
    def test_payload_order(self) -> None:
        # ClientID, Will Properties, Will Topic, Will Payload, User Name; no Password field.
        packet = Connect("id", will=Will("t", b"p"), username="u", protocol_name="MQTT")
        data = packet.encode()
        tail = b"\x00\x02id" + b"\x00" + b"\x00\x01t" + b"\x00\x01p" + b"\x00\x01u"
        assert data.endswith(tail)
        assert data[9] == 0x80 | 0x04 | 0x02
        assert parse(data) == packet

    @pytest.mark.spec("MQTT-3.1.2-16", "MQTT-3.1.2-19")
    def test_password_without_user_name_in_5(self) -> None:
        packet = Connect("id", password=b"secret", protocol_name="MQTT")
        data = packet.encode()
        assert data[9] == 0x40 | 0x02
        decoded = parse(data)
        assert isinstance(decoded, Connect)
        assert decoded.username is None
        assert decoded.password == b"secret"

    def test_password_without_user_name_in_311_is_malformed(self) -> None:
        data = connect_body(0x40 | 0x02, level=4, payload=encode_string("c") + b"\x00\x01p")
        reject(data, MALFORMED, version=4)

    @pytest.mark.spec("MQTT-3.1.2-3", "MQTT-3.1.4-1")
    def test_reserved_flag(self) -> None:
        reject(connect_body(0x03), MALFORMED)

    @pytest.mark.parametrize("flags", [0x08, 0x10, 0x18])
    @pytest.mark.spec("MQTT-3.1.2-11")
    def test_will_qos_without_will_flag(self, flags: int) -> None:
        reject(connect_body(0x02 | flags), MALFORMED)

    @pytest.mark.spec("MQTT-3.1.2-13")
    def test_will_retain_without_will_flag(self) -> None:
        reject(connect_body(0x02 | 0x20), MALFORMED)

    @pytest.mark.spec("MQTT-3.1.2-12")
    def test_will_qos_3(self) -> None:
        will = b"\x00" + encode_string("w") + b"\x00\x00"
        reject(connect_body(0x02 | 0x04 | 0x18, payload=encode_string("c") + will), MALFORMED)

    @pytest.mark.parametrize("topic", ["a/+", "#", ""])
    def test_will_topic_must_be_a_topic_name(self, topic: str) -> None:
        will = b"\x00" + encode_string(topic) + b"\x00\x00"
        data = connect_body(0x02 | 0x04, payload=encode_string("c") + will)
        reject(data, RC.TOPIC_NAME_INVALID)

    @pytest.mark.spec("MQTT-1.5.4-1", "MQTT-3.1.3-4")
    def test_client_id_must_be_utf8(self) -> None:
        reject(connect_body(payload=b"\x00\x02\xc3\x28"), MALFORMED)

    @pytest.mark.spec("MQTT-1.5.4-2")
    def test_user_name_with_null_character(self) -> None:
        payload = encode_string("c") + b"\x00\x02u\x00"
        reject(connect_body(0x82, payload=payload), MALFORMED)

    @pytest.mark.parametrize(
        "payload",
        [b"", encode_string("c") + b"extra", encode_string("c")[:2]],
        ids=["no-client-id", "trailing", "truncated"],
    )
    @pytest.mark.spec("MQTT-3.1.3-3", "MQTT-3.1.4-1")
    def test_payload_shape(self, payload: bytes) -> None:
        reject(connect_body(payload=payload), MALFORMED)

    def test_missing_will_fields(self) -> None:
        reject(connect_body(0x06, payload=encode_string("c") + b"\x00"), MALFORMED)

    def test_truncated_variable_header(self) -> None:
        reject(frame(0x10, b"\x00\x04MQTT"), MALFORMED)
        reject(frame(0x10, b"\x00\x04MQTT\x05\x02"), MALFORMED)
        reject(frame(0x10, b"\x00\x04MQ"), MALFORMED)

    def test_authentication_data_without_method(self) -> None:
        reject(connect_body(props=prop_block(b"\x16\x00\x01x")), PROTOCOL)

    @pytest.mark.parametrize(
        ("props", "code"),
        [
            (prop_block(b"\x21\x00\x00"), PROTOCOL),  # Receive Maximum 0
            (prop_block(b"\x27\x00\x00\x00\x00"), PROTOCOL),  # Maximum Packet Size 0
            (prop_block(b"\x11\x00\x00\x00\x01", b"\x11\x00\x00\x00\x01"), PROTOCOL),  # twice
            (prop_block(b"\x24\x01"), MALFORMED),  # Maximum QoS is a CONNACK property
            (prop_block(b"\x23\x00\x01"), MALFORMED),  # Topic Alias is a PUBLISH property
        ],
        ids=["receive-maximum-0", "maximum-packet-size-0", "duplicate", "maximum-qos", "alias"],
    )
    def test_property_errors(self, props: bytes, code: ReasonCode) -> None:
        reject(connect_body(props=props), code)

    def test_will_property_not_allowed(self) -> None:
        will = prop_block(b"\x11\x00\x00\x00\x01") + encode_string("w") + b"\x00\x00"
        reject(connect_body(0x06, payload=encode_string("c") + will), MALFORMED)

    @pytest.mark.parametrize(
        ("name", "level", "connack"),
        [
            (b"MQTT", 5, b"\x20\x03\x00\x84\x00"),
            (b"MQTX", 5, b"\x20\x03\x00\x84\x00"),
            (b"MQTT", 6, b"\x20\x02\x00\x01"),
            (b"MQTT", 3, b"\x20\x02\x00\x01"),
            (b"MQIsdp", 4, b"\x20\x02\x00\x01"),
            (b"MQIsdp", 5, b"\x20\x03\x00\x84\x00"),
            (b"MQTT", 0, b"\x20\x02\x00\x01"),
            (b"mqtt", 4, b"\x20\x02\x00\x01"),
            (b"", 4, b"\x20\x02\x00\x01"),
        ],
    )
    @pytest.mark.spec("MQTT-3.1.2-1", "MQTT-3.1.2-2")
    def test_unsupported_protocol(self, name: bytes, level: int, connack: bytes) -> None:
        if (name, level) == (b"MQTT", 5):
            name = b"MQTT5"  # the one supported pair is tested elsewhere
        data = connect_body(level=level, name=name, props=b"\x00" if level == 5 else b"")
        with pytest.raises(UnsupportedProtocol) as info:
            parse(data)
        err = info.value
        assert err.reason_code is RC.UNSUPPORTED_PROTOCOL_VERSION
        assert err.level == level
        assert err.connack == connack
        # A 5.0 CONNACK 0x84 for level 5, a 3.1.1 CONNACK "unacceptable protocol version" else.
        version = 5 if level == 5 else 4
        decoded = parse(err.connack, version)
        assert decoded == Connack(RC.UNSUPPORTED_PROTOCOL_VERSION)
        with pytest.raises(UnsupportedProtocol):
            PacketDecoder(5).feed(data)

    @pytest.mark.parametrize("level", [3, 4, 5])
    def test_bridge_bit(self, level: int) -> None:
        name = b"MQIsdp" if level == 3 else b"MQTT"
        decoded = parse(connect_body(level=0x80 | level, name=name), level)
        assert isinstance(decoded, Connect)
        assert decoded.is_bridge
        assert decoded.protocol_level == level
        encoded = decoded.encode()
        assert encoded[4 + len(name)] == 0x80 | level
        plain = parse(encoded[: 4 + len(name)] + bytes((level,)) + encoded[5 + len(name) :])
        assert isinstance(plain, Connect)
        assert not plain.is_bridge
        assert plain.protocol_level == level

    def test_connect_decodes_whatever_the_connection_version(self) -> None:
        data = Connect("c", 4, protocol_name="MQTT").encode()
        assert parse(data, 5) == parse(data, 4)


class TestConnack:
    """3.2 CONNACK."""

    def test_encoding(self) -> None:
        assert Connack().encode() == b"\x20\x03\x00\x00\x00"
        packet = Connack(RC.SUCCESS, True, Properties(receive_maximum=10, maximum_qos=1))
        assert packet.encode() == b"\x20\x08\x01\x00\x05\x21\x00\x0a\x24\x01"

    @pytest.mark.parametrize("flags", [0x02, 0x80, 0xFE])
    @pytest.mark.spec("MQTT-3.2.2-1")
    def test_reserved_acknowledge_flags(self, flags: int) -> None:
        reject(frame(0x20, bytes((flags, 0, 0))), MALFORMED)
        reject(frame(0x20, bytes((flags, 0))), MALFORMED, version=4)

    @pytest.mark.spec("MQTT-3.2.2-8")
    def test_reason_code_table(self) -> None:
        reject(frame(0x20, b"\x00\x04\x00"), PROTOCOL)  # a DISCONNECT code
        reject(frame(0x20, b"\x00\x03\x00"), MALFORMED)  # not a reason code at all

    def test_without_property_length(self) -> None:
        # Tolerated: some servers end a successful CONNACK after the reason code.
        assert parse(b"\x20\x02\x00\x00") == Connack()

    def test_truncated_and_trailing(self) -> None:
        reject(b"\x20\x01\x00", MALFORMED)
        reject(b"\x20\x04\x00\x00\x00\x00", MALFORMED)
        reject(b"\x20\x03\x00\x00\x00", MALFORMED, version=4)

    @pytest.mark.parametrize(
        ("code", "return_code"),
        [
            (RC.SUCCESS, 0),
            (RC.UNSUPPORTED_PROTOCOL_VERSION, 1),
            (RC.CLIENT_IDENTIFIER_NOT_VALID, 2),
            (RC.SERVER_UNAVAILABLE, 3),
            (RC.SERVER_BUSY, 3),
            (RC.MALFORMED_PACKET, 3),
            (RC.BAD_USER_NAME_OR_PASSWORD, 4),
            (RC.NOT_AUTHORIZED, 5),
            (RC.BANNED, 5),
        ],
    )
    def test_311_return_codes(self, code: ReasonCode, return_code: int) -> None:
        packet = Connack(code, properties=Properties(reason_string="dropped in 3.1.1"))
        assert packet.encode(4) == bytes((0x20, 2, 0, return_code))

    def test_311_undefined_return_code(self) -> None:
        reject(b"\x20\x02\x00\x06", MALFORMED, version=4)

    def test_311_session_present(self) -> None:
        assert parse(b"\x20\x02\x01\x00", 4) == Connack(RC.SUCCESS, session_present=True)


class TestPublish:
    """3.3 PUBLISH."""

    def test_encoding(self) -> None:
        packet = Publish("a/b", b"hi", qos=1, retain=True, packet_id=10)
        assert packet.encode() == b"\x33\x0a\x00\x03a/b\x00\x0a\x00hi"
        assert packet.encode(4) == b"\x33\x09\x00\x03a/b\x00\x0ahi"

    @pytest.mark.spec("MQTT-3.3.1-4")
    def test_qos_3(self) -> None:
        reject(publish_bytes(flags=0x06), MALFORMED)
        reject(publish_bytes(flags=0x06, props=b""), MALFORMED, version=4)

    @pytest.mark.spec("MQTT-3.3.1-2")
    def test_dup_on_qos_0(self) -> None:
        reject(publish_bytes(flags=0x08), MALFORMED)

    @pytest.mark.spec("MQTT-3.3.1-1")
    def test_dup_flag_kept(self) -> None:
        decoded = parse(publish_bytes(flags=0x08 | 0x04))
        assert isinstance(decoded, Publish)
        assert decoded.dup
        assert decoded.qos == 2

    @pytest.mark.parametrize("topic", [b"a/+", b"+", b"#", b"a/#", b"a+b", b"sport/tennis#"])
    @pytest.mark.spec("MQTT-3.3.2-2")
    def test_wildcard_in_topic_name(self, topic: bytes) -> None:
        reject(publish_bytes(topic), RC.TOPIC_NAME_INVALID)
        reject(publish_bytes(topic, props=b""), RC.TOPIC_NAME_INVALID, version=4)

    @pytest.mark.parametrize("topic", [b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"a\xff"])
    @pytest.mark.spec("MQTT-1.5.4-1", "MQTT-3.3.2-1")
    def test_topic_not_utf8(self, topic: bytes) -> None:
        reject(publish_bytes(topic), MALFORMED)

    @pytest.mark.spec("MQTT-1.5.4-2")
    def test_topic_with_null_character(self) -> None:
        reject(publish_bytes(b"a\x00b"), MALFORMED)

    @pytest.mark.spec("MQTT-1.5.4-3")
    def test_byte_order_mark_kept_in_topic(self) -> None:
        decoded = parse(publish_bytes(b"\xef\xbb\xbfa/b"))
        assert isinstance(decoded, Publish)
        assert decoded.topic == "\ufeffa/b"
        assert decoded.encode() == publish_bytes(b"\xef\xbb\xbfa/b")

    def test_empty_topic_needs_a_topic_alias(self) -> None:
        reject(publish_bytes(b""), PROTOCOL)
        reject(publish_bytes(b"", props=b""), RC.TOPIC_NAME_INVALID, version=4)
        decoded = parse(publish_bytes(b"", props=prop_block(b"\x23\x00\x01")))
        assert isinstance(decoded, Publish)
        assert (decoded.topic, decoded.topic_alias) == ("", 1)

    def test_topic_length_overruns(self) -> None:
        reject(frame(0x30, b"\x00\x05ab"), MALFORMED)
        reject(frame(0x30, b"\x00"), MALFORMED)

    @pytest.mark.parametrize(
        ("props", "code"),
        [
            (prop_block(b"\x11\x00\x00\x00\x01"), MALFORMED),  # Session Expiry: not allowed
            (prop_block(b"\x24\x01"), MALFORMED),  # Maximum QoS: not allowed
            (prop_block(b"\x02\x00\x00\x00\x01", b"\x02\x00\x00\x00\x01"), PROTOCOL),
            (prop_block(b"\x03\x00\x01a", b"\x03\x00\x01b"), PROTOCOL),
            (prop_block(b"\x23\x00\x01", b"\x23\x00\x02"), PROTOCOL),
            (prop_block(b"\x01\x02"), PROTOCOL),  # Payload Format Indicator 2
            (prop_block(b"\x0b\x00"), PROTOCOL),  # Subscription Identifier 0
            (prop_block(b"\x08\x00\x03a/#"), PROTOCOL),  # Response Topic with a wildcard
            (prop_block(b"\x08\x00\x00"), PROTOCOL),  # empty Response Topic
            (prop_block(b"\x08\x00\x01\x00"), MALFORMED),  # U+0000 in Response Topic
            (prop_block(b"\x26\x00\x01k\x00\x01\xff"), MALFORMED),  # bad user property
            (prop_block(b"\x02\x00\x00"), MALFORMED),  # truncated expiry
            (prop_block(b"\x23\x00"), MALFORMED),  # truncated alias
            (prop_block(b"\x01"), MALFORMED),  # truncated payload format
            (b"\x09\x02", MALFORMED),  # property length overruns
            (b"\x80\x80\x80\x80\x01", MALFORMED),  # five-byte property length
        ],
        ids=[
            "session-expiry",
            "maximum-qos",
            "expiry-twice",
            "content-type-twice",
            "alias-twice",
            "payload-format-2",
            "subscription-id-0",
            "response-topic-wildcard",
            "response-topic-empty",
            "response-topic-null",
            "user-property-utf8",
            "truncated-expiry",
            "truncated-alias",
            "truncated-format",
            "length-overruns",
            "length-5-bytes",
        ],
    )
    def test_property_errors(self, props: bytes, code: ReasonCode) -> None:
        reject(publish_bytes(props=props, payload=b""), code)

    @pytest.mark.spec("MQTT-3.3.2-14")
    def test_response_topic_is_a_topic_name(self) -> None:
        reject(publish_bytes(props=prop_block(b"\x08\x00\x01+")), PROTOCOL)

    def test_properties_kept_raw_and_decoded_lazily(self) -> None:
        # mosquitto's order (user property first), not ours: the raw bytes are kept as received.
        raw = b"\x26\x00\x01k\x00\x01v" + b"\x03\x00\x02ct" + b"\x02\x00\x00\x00\x3c"
        data = publish_bytes(props=encode_varint(len(raw)) + raw)
        decoded = parse(data)
        assert isinstance(decoded, Publish)
        assert decoded.props_raw == raw
        assert decoded.message_expiry_interval == 60
        assert decoded.topic_alias is None
        assert decoded._properties is None  # not decoded yet
        props = decoded.properties
        assert props.user_properties == [("k", "v")]
        assert props.content_type == "ct"
        assert decoded.properties is props  # decoded once
        # Forwarding with the raw block reproduces the publisher's bytes exactly.
        parts = encode_publish_parts(b"a/b", b"hi", 1, False, False, 1, decoded.props_raw)
        assert parts == data
        # Re-encoding from the decoded properties writes identifier order instead.
        assert Publish("a/b", b"hi", 1, packet_id=1, properties=props).encode() != data

    def test_fast_fields(self) -> None:
        props = prop_block(b"\x01\x01", b"\x02\x00\x00\x01\x00", b"\x0b\x05", b"\x0b\x81\x01")
        decoded = parse(publish_bytes(props=props))
        assert isinstance(decoded, Publish)
        assert decoded.payload_format_indicator == 1
        assert decoded.message_expiry_interval == 256
        assert decoded.subscription_identifiers == [5, 129]

    def test_set_properties(self) -> None:
        packet = Publish("t", b"")
        packet.set_properties(Properties(topic_alias=3, message_expiry_interval=9))
        assert packet.topic_alias == 3
        assert packet.props_raw == b"\x02\x00\x00\x00\x09\x23\x00\x03"

    def test_payload_may_be_empty_or_anything(self) -> None:
        for payload in (b"", b"\x00\xff" * 100):
            decoded = parse(Publish("t", payload, qos=1, packet_id=1).encode())
            assert isinstance(decoded, Publish)
            assert decoded.payload == payload

    def test_311_publish_has_no_property_block(self) -> None:
        decoded = parse(b"\x30\x05\x00\x01t\x00\x00", 4)
        assert isinstance(decoded, Publish)
        assert decoded.payload == b"\x00\x00"
        assert decoded.properties == Properties()

    def test_equality_and_repr(self) -> None:
        a = Publish("t", b"x", 1, packet_id=1)
        assert a == Publish("t", b"x", 1, packet_id=1)
        assert a != Publish("t", b"x", 1, packet_id=2)
        assert a != "t"
        assert "topic='t'" in repr(a)
        with pytest.raises(TypeError):
            hash(a)


ACK_CASES = [
    (PubAck, 0x40, PUBACK_CODES, PacketType.PUBACK),
    (PubRec, 0x50, PUBREC_CODES, PacketType.PUBREC),
    (PubRel, 0x62, PUBREL_CODES, PacketType.PUBREL),
    (PubComp, 0x70, PUBCOMP_CODES, PacketType.PUBCOMP),
]


@pytest.mark.parametrize(
    ("cls", "first", "codes", "ptype"), ACK_CASES, ids=[c[0].__name__ for c in ACK_CASES]
)
class TestPublishAcknowledgements:
    """3.4 PUBACK, 3.5 PUBREC, 3.6 PUBREL, 3.7 PUBCOMP."""

    def test_short_forms(self, cls: type[PubAck], first: int, codes: object, ptype: int) -> None:
        assert parse(bytes((first, 2, 0, 9))) == cls(9)
        assert parse(bytes((first, 3, 0, 9, 0))) == cls(9)
        assert parse(bytes((first, 4, 0, 9, 0, 0))) == cls(9)
        assert cls(9).encode() == bytes((first, 2, 0, 9))
        code = max(codes)  # type: ignore[call-overload]
        assert cls(9, code).encode() == bytes((first, 3, 0, 9, code))
        assert parse(bytes((first, 3, 0, 9, code))) == cls(9, code)

    def test_with_properties(
        self, cls: type[PubAck], first: int, codes: object, ptype: int
    ) -> None:
        packet = cls(1, RC.SUCCESS, Properties(reason_string="r", user_properties=[("a", "b")]))
        encoded = packet.encode()
        assert encoded == frame(first, b"\x00\x01\x00\x0b\x1f\x00\x01r\x26\x00\x01a\x00\x01b")
        assert parse(encoded) == packet
        assert packet.encode(4) == bytes((first, 2, 0, 1))
        assert "reason_code=SUCCESS" in repr(packet)

    @pytest.mark.spec("MQTT-3.4.2-1", "MQTT-3.5.2-1", "MQTT-3.6.2-1", "MQTT-3.7.2-1")
    def test_reason_code_table(
        self, cls: type[PubAck], first: int, codes: frozenset[ReasonCode], ptype: int
    ) -> None:
        for value in range(256):
            data = bytes((first, 3, 0, 1, value))
            if value in codes:
                decoded = parse(data)
                assert isinstance(decoded, cls)
                assert decoded.reason_code == value
            elif value in RC._value2member_map_:
                reject(data, PROTOCOL)
            else:
                reject(data, MALFORMED)

    def test_311_has_no_reason_code(
        self, cls: type[PubAck], first: int, codes: object, ptype: int
    ) -> None:
        reject(bytes((first, 3, 0, 1, 0)), MALFORMED, version=4)
        assert parse(bytes((first, 2, 0, 1)), 4) == cls(1)

    def test_trailing_bytes(self, cls: type[PubAck], first: int, codes: object, ptype: int) -> None:
        reject(bytes((first, 5, 0, 1, 0, 0, 0)), MALFORMED)

    def test_property_not_allowed(
        self, cls: type[PubAck], first: int, codes: object, ptype: int
    ) -> None:
        reject(frame(first, b"\x00\x01\x00" + prop_block(b"\x03\x00\x00")), MALFORMED)

    def test_equality(self, cls: type[PubAck], first: int, codes: object, ptype: int) -> None:
        assert cls(1) == cls(1, RC.SUCCESS, Properties())
        assert cls(1) != cls(2)
        other = PubAck if cls is not PubAck else PubRec
        assert cls(1) != other(1)
        with pytest.raises(TypeError):
            hash(cls(1))


class TestSubscribe:
    """3.8 SUBSCRIBE."""

    def body(self, *subs: bytes, props: bytes = b"\x00") -> bytes:
        return frame(0x82, b"\x00\x01" + props + b"".join(subs))

    def test_options_byte(self) -> None:
        data = self.body(encode_string("a/+") + b"\x2d")
        decoded = parse(data)
        assert decoded == Subscribe(1, [Subscription("a/+", 1, True, True, 2)])
        assert decoded.encode() == data

    @pytest.mark.spec("MQTT-3.8.3-2")
    def test_no_topic_filter(self) -> None:
        reject(self.body(), PROTOCOL)
        reject(frame(0x82, b"\x00\x01"), PROTOCOL, version=4)

    @pytest.mark.parametrize("options", [0x40, 0x80, 0xC1])
    @pytest.mark.spec("MQTT-3.8.3-5")
    def test_reserved_option_bits(self, options: int) -> None:
        reject(self.body(encode_string("a") + bytes((options,))), MALFORMED)

    @pytest.mark.parametrize("options", [0x04, 0x08, 0x10, 0x20])
    def test_311_reserved_option_bits(self, options: int) -> None:
        reject(frame(0x82, b"\x00\x01" + encode_string("a") + bytes((options,))), MALFORMED, 4)

    def test_retain_handling_3(self) -> None:
        reject(self.body(encode_string("a") + b"\x30"), PROTOCOL)

    def test_qos_3(self) -> None:
        reject(self.body(encode_string("a") + b"\x03"), MALFORMED)

    def test_missing_options(self) -> None:
        reject(self.body(encode_string("a")), MALFORMED)

    @pytest.mark.spec("MQTT-3.8.3-1")
    def test_filter_must_be_utf8(self) -> None:
        reject(self.body(b"\x00\x01\xff\x00"), MALFORMED)

    def test_subscription_identifier(self) -> None:
        decoded = parse(self.body(encode_string("a") + b"\x00", props=prop_block(b"\x0b\x07")))
        assert isinstance(decoded, Subscribe)
        assert decoded.properties.subscription_identifiers == [7]
        reject(self.body(encode_string("a") + b"\x00", props=prop_block(b"\x0b\x00")), PROTOCOL)

    def test_311_options_are_the_qos(self) -> None:
        sub = Subscription("a", 2, True, True, 2)
        assert sub.options_byte(4) == 2
        assert sub.options_byte(5) == 0x2E


class TestSuback:
    """3.9 SUBACK."""

    @pytest.mark.spec("MQTT-3.9.3-1", "MQTT-3.9.3-2")
    def test_codes_in_order(self) -> None:
        codes = [RC.GRANTED_QOS_2, RC.NOT_AUTHORIZED, RC.GRANTED_QOS_0]
        data = frame(0x90, b"\x00\x05\x00\x02\x87\x00")
        assert parse(data) == Suback(5, codes)
        reject(frame(0x90, b"\x00\x05\x00\x02\x04"), PROTOCOL)  # 0x04 is no SUBACK code
        reject(frame(0x90, b"\x00\x05\x00\x05"), MALFORMED)  # not a reason code

    def test_needs_a_code(self) -> None:
        reject(frame(0x90, b"\x00\x05\x00"), PROTOCOL)
        reject(frame(0x90, b"\x00\x05"), PROTOCOL, version=4)

    def test_311_failure_is_0x80(self) -> None:
        packet = Suback(1, [RC.GRANTED_QOS_1, RC.NOT_AUTHORIZED, RC.QUOTA_EXCEEDED])
        assert packet.encode(4) == b"\x90\x05\x00\x01\x01\x80\x80"
        assert parse(b"\x90\x04\x00\x01\x01\x80", 4) == Suback(
            1, [RC.GRANTED_QOS_1, RC.UNSPECIFIED_ERROR]
        )
        reject(b"\x90\x03\x00\x01\x87", MALFORMED, version=4)


class TestUnsubscribe:
    """3.10 UNSUBSCRIBE and 3.11 UNSUBACK."""

    @pytest.mark.spec("MQTT-3.10.3-2")
    def test_no_topic_filter(self) -> None:
        reject(frame(0xA2, b"\x00\x01\x00"), PROTOCOL)
        reject(frame(0xA2, b"\x00\x01"), PROTOCOL, version=4)

    @pytest.mark.spec("MQTT-3.10.3-1")
    def test_filters_must_be_utf8(self) -> None:
        reject(frame(0xA2, b"\x00\x01\x00\x00\x01\xff"), MALFORMED)
        reject(frame(0xA2, b"\x00\x01\x00\x00\x05ab"), MALFORMED)

    @pytest.mark.spec("MQTT-3.11.3-1", "MQTT-3.11.3-2")
    def test_unsuback_codes(self) -> None:
        data = frame(0xB0, b"\x00\x02\x00\x00\x11\x87")
        codes = [RC.SUCCESS, RC.NO_SUBSCRIPTION_EXISTED, RC.NOT_AUTHORIZED]
        assert parse(data) == Unsuback(2, codes)
        reject(frame(0xB0, b"\x00\x02\x00\x10"), PROTOCOL)
        reject(frame(0xB0, b"\x00\x02\x00"), PROTOCOL)

    def test_311_unsuback(self) -> None:
        packet = Unsuback(2, [RC.SUCCESS])
        assert packet.encode(4) == b"\xb0\x02\x00\x02"
        assert parse(b"\xb0\x02\x00\x02", 4) == Unsuback(2)
        reject(b"\xb0\x03\x00\x02\x00", MALFORMED, version=4)


class TestPingDisconnectAuth:
    """3.12 PINGREQ, 3.13 PINGRESP, 3.14 DISCONNECT, 3.15 AUTH."""

    @pytest.mark.parametrize("first", [0xC0, 0xD0])
    def test_ping_has_no_body(self, first: int) -> None:
        reject(bytes((first, 1, 0)), MALFORMED)

    @pytest.mark.parametrize(
        ("data", "packet"),
        [
            (b"\xe0\x00", Disconnect()),
            (b"\xe0\x01\x04", Disconnect(RC.DISCONNECT_WITH_WILL_MESSAGE)),
            (b"\xe0\x02\x8e\x00", Disconnect(RC.SESSION_TAKEN_OVER)),
            (
                b"\xe0\x06\x00\x04\x1f\x00\x01x",
                Disconnect(RC.NORMAL_DISCONNECTION, Properties(reason_string="x")),
            ),
        ],
    )
    def test_disconnect_forms(self, data: bytes, packet: Disconnect) -> None:
        assert parse(data) == packet

    def test_disconnect_encoding_omits_what_it_may(self) -> None:
        assert Disconnect().encode() == b"\xe0\x00"
        assert Disconnect(RC.PROTOCOL_ERROR).encode() == b"\xe0\x01\x82"
        assert Disconnect(RC.PROTOCOL_ERROR).encode(4) == b"\xe0\x00"
        props = Properties(session_expiry_interval=0)
        assert Disconnect(RC.SUCCESS, props).encode() == b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"

    @pytest.mark.spec("MQTT-3.14.2-1")
    def test_disconnect_reason_code_table(self) -> None:
        reject(b"\xe0\x01\x84", PROTOCOL)  # Unsupported protocol version: CONNACK only
        reject(b"\xe0\x01\x05", MALFORMED)

    def test_disconnect_errors(self) -> None:
        reject(b"\xe0\x01\x00", MALFORMED, version=4)
        reject(b"\xe0\x03\x00\x00\x00", MALFORMED)
        reject(b"\xe0\x03\x00\x01\x15", MALFORMED)  # truncated property
        reject(frame(0xE0, b"\x00" + prop_block(b"\x21\x00\x01")), MALFORMED)  # not allowed

    def test_auth(self) -> None:
        assert parse(b"\xf0\x00") == Auth()
        assert Auth().encode() == b"\xf0\x00"
        packet = Auth(RC.CONTINUE_AUTHENTICATION, Properties(authentication_method="SCRAM"))
        assert parse(packet.encode()) == packet
        assert parse(b"\xf0\x01\x19") == Auth(RC.RE_AUTHENTICATE)

    @pytest.mark.spec("MQTT-3.15.2-1")
    def test_auth_reason_code_table(self) -> None:
        reject(b"\xf0\x01\x04", PROTOCOL)
        reject(b"\xf0\x01\x87", PROTOCOL)
        reject(b"\xf0\x01\x17", MALFORMED)

    def test_auth_is_not_311(self) -> None:
        reject(b"\xf0\x00", MALFORMED, version=4)
        with pytest.raises(LocalProtocolError):
            Auth().encode(4)
