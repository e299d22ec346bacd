"""Tests for mqttv5.protocol.properties: section 2.2.2 and the property table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttv5.protocol.codec import encode_string, encode_varint
from mqttv5.protocol.constants import PacketType
from mqttv5.protocol.errors import LocalProtocolError, RemoteProtocolError
from mqttv5.protocol.properties import (
    PROPERTY_TABLE,
    WILL,
    Properties,
    PropertyId,
    WireType,
    decode_properties,
    encode_properties,
)
from mqttv5.protocol.reason_codes import ReasonCode
from tests.protocol.strategies import properties, property_value, strings

MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL = ReasonCode.PROTOCOL_ERROR
P = PacketType

# Every packet type that has a property block, plus the Will Properties.
BLOCKS = [WILL, *(t for t in PacketType if t not in (P.PINGREQ, P.PINGRESP))]

# (property, packet) pairs that are allowed, and those that are not.
ALLOWED = [(s.id, t) for s in PROPERTY_TABLE.values() for t in sorted(s.packets)]
FORBIDDEN = [(s.id, t) for s in PROPERTY_TABLE.values() for t in BLOCKS if t not in s.packets]

# One valid wire value per property (without the identifier byte).
SAMPLE_WIRE: dict[WireType, bytes] = {
    WireType.BYTE: b"\x01",
    WireType.U16: b"\x00\x05",
    WireType.U32: b"\x00\x00\x00\x07",
    WireType.VARINT: b"\x81\x01",
    WireType.STRING: b"\x00\x03a/b",
    WireType.BINARY: b"\x00\x02\x00\xff",
    WireType.PAIR: b"\x00\x01k\x00\x01v",
}


def block(*props: bytes) -> bytes:
    """A property block: Property Length then the properties."""
    body = b"".join(props)
    return encode_varint(len(body)) + body


def prop(pid: int, wire_value: bytes) -> bytes:
    return bytes((pid,)) + wire_value


def decode_error(data: bytes, packet_type: int) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode_properties(data, 0, packet_type)
    return info.value


def name(value: object) -> str:
    return "WILL" if value == WILL else getattr(value, "name", str(value))


class TestPropertyTable:
    """2.2.2.2 Property: identifiers, types and where each may appear (Table 2-4)."""

    def test_every_identifier_has_a_row(self) -> None:
        assert set(PROPERTY_TABLE) == set(PropertyId)
        assert len(PROPERTY_TABLE) == 27

    @pytest.mark.parametrize(
        ("pid", "wire", "packets"),
        [
            (0x01, WireType.BYTE, {P.PUBLISH, WILL}),
            (0x0B, WireType.VARINT, {P.PUBLISH, P.SUBSCRIBE}),
            (0x11, WireType.U32, {P.CONNECT, P.CONNACK, P.DISCONNECT}),
            (0x13, WireType.U16, {P.CONNACK}),
            (0x15, WireType.STRING, {P.CONNECT, P.CONNACK, P.AUTH}),
            (0x16, WireType.BINARY, {P.CONNECT, P.CONNACK, P.AUTH}),
            (0x18, WireType.U32, {WILL}),
            (0x1C, WireType.STRING, {P.CONNACK, P.DISCONNECT}),
            (
                0x1F,
                WireType.STRING,
                {P.CONNACK, P.PUBACK, P.PUBREC, P.PUBREL, P.PUBCOMP, P.SUBACK, P.UNSUBACK}
                | {P.DISCONNECT, P.AUTH},
            ),
            (0x23, WireType.U16, {P.PUBLISH}),
            (0x26, WireType.PAIR, set(BLOCKS)),
            (0x27, WireType.U32, {P.CONNECT, P.CONNACK}),
        ],
    )
    def test_rows_match_the_standard(self, pid: int, wire: WireType, packets: set[int]) -> None:
        spec = PROPERTY_TABLE[pid]
        assert spec.wire is wire
        assert spec.packets == packets

    def test_only_user_property_and_subscription_identifier_repeat(self) -> None:
        assert {s.id for s in PROPERTY_TABLE.values() if s.repeatable} == {0x0B, 0x26}


class TestPropertyRoundTrip:
    """Every property encodes and decodes in every packet that allows it."""

    @pytest.mark.parametrize(("pid", "packet_type"), ALLOWED, ids=lambda v: name(v))
    def test_each_allowed_property(self, pid: PropertyId, packet_type: int) -> None:
        spec = PROPERTY_TABLE[pid]
        data = block(prop(pid, SAMPLE_WIRE[spec.wire]))
        props, end = decode_properties(data, 0, packet_type)
        assert end == len(data)
        assert props.encode_block() == data
        present = [attr for attr, _ in props.items()]
        if spec.repeatable:
            assert present == [
                "user_properties" if spec.wire is WireType.PAIR else "subscription_identifiers"
            ]
        else:
            assert present == [spec.attr]

    @pytest.mark.parametrize("packet_type", BLOCKS, ids=name)
    @given(data=st.data())
    def test_random_blocks(self, packet_type: int, data: st.DataObject) -> None:
        props = data.draw(properties(packet_type))
        encoded = props.encode_block()
        decoded, end = decode_properties(b"\xee" + encoded + b"\xee", 1, packet_type)
        assert end == 1 + len(encoded)
        assert decoded == props

    @given(data=st.data())
    def test_extreme_values(self, data: st.DataObject) -> None:
        spec = data.draw(st.sampled_from(sorted(PROPERTY_TABLE.values())))
        if spec.wire not in (WireType.BYTE, WireType.U16, WireType.U32, WireType.VARINT):
            return
        packet_type = min(spec.packets)
        value = data.draw(st.sampled_from([spec.minimum, spec.maximum]))
        props = Properties()
        if spec.repeatable:
            props.subscription_identifiers = [value]
        else:
            setattr(props, spec.attr, value)
        assert decode_properties(props.encode_block(), 0, packet_type)[0] == props

    @pytest.mark.spec("MQTT-2.2.2-1")
    def test_empty_block_is_a_zero_length(self) -> None:
        assert Properties().encode_block() == b"\x00"
        assert encode_properties(None) == b""
        assert decode_properties(b"\x00", 0, P.CONNACK) == (Properties(), 1)

    def test_encoded_in_identifier_order(self) -> None:
        props = Properties(
            user_properties=[("k", "v")], message_expiry_interval=60, content_type="text/plain"
        )
        assert props.encode() == (
            b"\x02\x00\x00\x00\x3c"
            + b"\x03"
            + encode_string("text/plain")
            + b"\x26"
            + encode_string("k")
            + encode_string("v")
        )


class TestUserProperty:
    """2.2.2.2 User Property (0x26): a UTF-8 string pair, may appear more than once."""

    def test_order_and_duplicates_kept(self) -> None:
        pairs = [("b", "1"), ("a", "2"), ("b", "1"), ("", ""), ("b", "3")]
        data = block(
            *(prop(0x26, encode_string(k) + encode_string(v)) for k, v in pairs),
        )
        props, _ = decode_properties(data, 0, P.PUBLISH)
        assert props.user_properties == pairs
        assert props.encode_block() == data

    @given(st.lists(st.tuples(strings(max_size=3), strings(max_size=3)), max_size=8))
    def test_interleaved_with_other_properties(self, pairs: list[tuple[str, str]]) -> None:
        parts = [prop(0x26, encode_string(k) + encode_string(v)) for k, v in pairs]
        parts.insert(len(parts) // 2, prop(0x03, encode_string("ct")))
        props, _ = decode_properties(block(*parts), 0, P.PUBLISH)
        assert props.user_properties == pairs
        assert props.content_type == "ct"

    @pytest.mark.spec("MQTT-1.5.7-1")
    @pytest.mark.parametrize(
        "pair",
        [
            b"\x00\x01\x00" + b"\x00\x01v",  # U+0000 in the name
            b"\x00\x01k" + b"\x00\x02\xed\xa0",  # truncated / surrogate in the value
            b"\x00\x01k" + b"\x00\x03\xed\xa0\x80",  # encoded surrogate in the value
            b"\x00\x01\xff" + b"\x00\x01v",  # invalid UTF-8 in the name
            b"\x00\x01k",  # value missing
        ],
    )
    def test_bad_pair_is_malformed(self, pair: bytes) -> None:
        assert decode_error(block(prop(0x26, pair)), P.CONNECT).reason_code is MALFORMED


class TestPropertyValidation:
    """Duplicates, forbidden properties and out-of-range values, with their reason codes."""

    @pytest.mark.parametrize(
        "pid", [s.id for s in PROPERTY_TABLE.values() if not s.repeatable], ids=lambda p: p.name
    )
    def test_duplicate_is_protocol_error(self, pid: PropertyId) -> None:
        # 2.2.2.2: "It is a Protocol Error to include [a property] more than once."
        spec = PROPERTY_TABLE[pid]
        one = prop(pid, SAMPLE_WIRE[spec.wire])
        packet_type = min(spec.packets)
        err = decode_error(block(one, one), packet_type)
        assert err.reason_code is PROTOCOL
        assert "twice" in str(err)

    def test_duplicate_subscription_identifier_in_subscribe(self) -> None:
        err = decode_error(block(b"\x0b\x01", b"\x0b\x02"), P.SUBSCRIBE)
        assert err.reason_code is PROTOCOL

    def test_several_subscription_identifiers_in_publish(self) -> None:
        props, _ = decode_properties(block(b"\x0b\x01", b"\x0b\x02"), 0, P.PUBLISH)
        assert props.subscription_identifiers == [1, 2]

    @pytest.mark.parametrize(("pid", "packet_type"), FORBIDDEN, ids=lambda v: name(v))
    def test_not_allowed_in_packet_is_malformed(self, pid: PropertyId, packet_type: int) -> None:
        spec = PROPERTY_TABLE[pid]
        err = decode_error(block(prop(pid, SAMPLE_WIRE[spec.wire])), packet_type)
        assert err.reason_code is MALFORMED
        assert "not allowed" in str(err)

    @pytest.mark.parametrize("pid", [0x00, 0x04, 0x0A, 0x7F, 0x80])
    def test_unknown_identifier_is_malformed(self, pid: int) -> None:
        data = block(encode_varint(pid) + b"\x00")
        assert decode_error(data, P.CONNECT).reason_code is MALFORMED

    @pytest.mark.parametrize(
        ("data", "packet_type"),
        [
            (block(b"\x21\x00\x00"), P.CONNECT),  # Receive Maximum 0
            (block(b"\x21\x00\x00"), P.CONNACK),
            (block(b"\x27\x00\x00\x00\x00"), P.CONNECT),  # Maximum Packet Size 0
            (block(b"\x27\x00\x00\x00\x00"), P.CONNACK),
            (block(b"\x0b\x00"), P.SUBSCRIBE),  # Subscription Identifier 0
            (block(b"\x0b\x00"), P.PUBLISH),
            (block(b"\x01\x02"), P.PUBLISH),  # Payload Format Indicator 2
            (block(b"\x17\x02"), P.CONNECT),  # Request Problem Information 2
            (block(b"\x19\x05"), P.CONNECT),  # Request Response Information 5
            (block(b"\x24\x02"), P.CONNACK),  # Maximum QoS 2 (only 0 or 1 may be sent)
            (block(b"\x25\x02"), P.CONNACK),  # Retain Available 2
            (block(b"\x28\x02"), P.CONNACK),
            (block(b"\x29\x02"), P.CONNACK),
            (block(b"\x2a\x02"), P.CONNACK),
        ],
        ids=[
            "receive-max-0-connect",
            "receive-max-0-connack",
            "max-packet-size-0-connect",
            "max-packet-size-0-connack",
            "subscription-id-0-subscribe",
            "subscription-id-0-publish",
            "payload-format-2",
            "request-problem-info-2",
            "request-response-info-5",
            "maximum-qos-2",
            "retain-available-2",
            "wildcard-available-2",
            "subscription-id-available-2",
            "shared-available-2",
        ],
    )
    def test_value_out_of_range_is_protocol_error(self, data: bytes, packet_type: int) -> None:
        assert decode_error(data, packet_type).reason_code is PROTOCOL

    def test_largest_subscription_identifier(self) -> None:
        props, _ = decode_properties(block(b"\x0b\xff\xff\xff\x7f"), 0, P.SUBSCRIBE)
        assert props.subscription_identifiers == [268_435_455]

    def test_subscription_identifier_of_five_bytes_is_malformed(self) -> None:
        err = decode_error(block(b"\x0b\x80\x80\x80\x80\x01"), P.PUBLISH)
        assert err.reason_code is MALFORMED

    @pytest.mark.parametrize(
        "data",
        [
            b"",  # no property length at all
            b"\x80\x80\x80\x80\x01",  # property length of five bytes
            b"\x05\x11\x00\x00",  # length overruns the buffer
            b"\x01\x80",  # identifier varint runs past the block
            b"\x01\x17",  # BYTE value missing
            b"\x02\x21\x00",  # U16 truncated
            b"\x03\x11\x00\x00",  # U32 truncated
            b"\x04\x15\x00\x05a",  # string overruns
            b"\x04\x16\x00\x05a",  # binary overruns
            b"\x04\x26\x00\x01k",  # string pair without its value
        ],
    )
    def test_truncated_is_malformed(self, data: bytes) -> None:
        assert decode_error(data, P.CONNECT).reason_code is MALFORMED

    def test_value_cannot_run_past_the_block(self) -> None:
        # The block says 3 bytes; the U32 needs 4 even though the buffer has more after it.
        data = b"\x03\x11\x00\x00" + b"\x00\x00"
        assert decode_error(data, P.CONNECT).reason_code is MALFORMED

    def test_strings_are_validated(self) -> None:
        err = decode_error(block(b"\x03" + b"\x00\x01\x00"), P.PUBLISH)
        assert err.reason_code is MALFORMED


class TestPropertiesObject:
    """The Properties class: attributes, equality, truthiness, copying."""

    def test_absent_is_none(self) -> None:
        props = Properties()
        assert props.content_type is None
        assert props.user_properties == []
        assert props.subscription_identifiers == []
        assert not props
        assert props.items() == []

    def test_keyword_construction(self) -> None:
        props = Properties(
            content_type="a", user_properties=[("k", "v")], subscription_identifiers=[3]
        )
        assert props
        assert dict(props.items()) == {
            "content_type": "a",
            "user_properties": [("k", "v")],
            "subscription_identifiers": [3],
        }
        assert "content_type='a'" in repr(props)

    def test_unknown_keyword(self) -> None:
        with pytest.raises(TypeError):
            Properties(colour="red")

    def test_equality_and_copy(self) -> None:
        a = Properties(reason_string="x", user_properties=[("k", "v")])
        b = a.copy()
        assert a == b
        b.user_properties.append(("k2", "v2"))
        assert a != b
        assert a.user_properties == [("k", "v")]
        assert a != "x"

    def test_unhashable(self) -> None:
        with pytest.raises(TypeError):
            hash(Properties())

    def test_encode_unencodable_value(self) -> None:
        with pytest.raises(LocalProtocolError):
            Properties(content_type="\ud800").encode()
        # A value of the wrong type never encodes (a mypyc-compiled build refuses it earlier,
        # with TypeError, when it is assigned).
        with pytest.raises((LocalProtocolError, TypeError)):
            Properties(content_type=3.5).encode()  # type: ignore[arg-type]


class TestPropertyValueStrategy:
    """The test strategies stay within the table's ranges (guards the other tests)."""

    @given(data=st.data())
    def test_within_range(self, data: st.DataObject) -> None:
        spec = data.draw(st.sampled_from(sorted(PROPERTY_TABLE.values())))
        if spec.repeatable:
            return
        value = data.draw(property_value(spec, min(spec.packets)))
        if isinstance(value, int):
            assert spec.minimum <= value <= spec.maximum
