"""Decode packets captured from clients we did not write (tests/protocol/fixtures/README.md).

Each ``*.hex`` file holds one whole packet per line, in the order the client sent them. The
expected values below are the ones the README lists for each line.

Re-encoding: our encoder writes properties in identifier order. Where the client did too (paho,
and mosquitto's CONNECT), ``decoded.encode()`` must give back the exact bytes. Mosquitto writes
PUBLISH properties in command-line order; a decoded PUBLISH keeps its raw property bytes (that is
what a broker forwards) so its own ``encode()`` is still exact, but a PUBLISH rebuilt from the
decoded properties is written in identifier order, so for that one we only check
``decode(encode(decode(x))) == decode(x)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mqttv5.protocol.packets import (
    Connect,
    Disconnect,
    Packet,
    PacketDecoder,
    Pingreq,
    Publish,
    PubRel,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode

FIXTURES = Path(__file__).parent / "fixtures"

# The protocol level each capture speaks (its CONNECT's level).
VERSION = {
    "mosquitto_pub_v5_qos1_props.hex": 5,
    "mosquitto_pub_v311_qos2.hex": 4,
    "mosquitto_sub_v5_sub.hex": 5,
    "paho_v5_connect_publish.hex": 5,
    "paho_v311_session.hex": 4,
}


def load(name: str) -> list[bytes]:
    """The packets of one fixture file, as bytes; checks the file's format on the way."""
    lines = (FIXTURES / name).read_text(encoding="ascii").splitlines()
    assert lines[0].startswith("# produced by: ")
    return [bytes.fromhex(line) for line in lines[1:] if line and not line.startswith("#")]


def decode_each(name: str) -> list[Packet]:
    """Decode every line on its own, with the file's protocol level."""
    out: list[Packet] = []
    for data in load(name):
        decoder = PacketDecoder(VERSION[name])
        (packet,) = decoder.feed(data)
        assert decoder.buffered == 0
        out.append(packet)
    return out


def reencode(packet: Packet, version: int) -> Packet:
    (again,) = PacketDecoder(version).feed(packet.encode(version))
    return again


class TestFixtureFiles:
    """Every capture decodes, as separate packets and as one stream."""

    def test_all_files_known(self) -> None:
        assert {p.name for p in FIXTURES.glob("*.hex")} == set(VERSION)

    @pytest.mark.parametrize("name", sorted(VERSION))
    def test_stream_equals_separate_packets(self, name: str) -> None:
        packets = decode_each(name)
        # Starting at level 5, the stream decoder switches to the CONNECT's own level.
        decoder = PacketDecoder(5)
        assert decoder.feed(b"".join(load(name))) == packets
        assert decoder.version == VERSION[name]

    @pytest.mark.parametrize("name", sorted(VERSION))
    def test_reencode(self, name: str) -> None:
        version = VERSION[name]
        for data, packet in zip(load(name), decode_each(name), strict=True):
            assert packet.encode(version) == data, f"{name}: {packet!r}"
            assert reencode(packet, version) == packet


class TestMosquittoPubV5:
    """mosquitto_pub -V 5 -q 1 with a will, credentials and three PUBLISH properties."""

    name = "mosquitto_pub_v5_qos1_props.hex"

    def test_connect(self) -> None:
        connect, _, _ = decode_each(self.name)
        assert isinstance(connect, Connect)
        assert connect == Connect(
            client_id="mqttv5-fixture-pub",
            protocol_level=5,
            clean_start=True,
            keep_alive=60,
            username="alice",
            password=b"s3cret",
            will=Will("fixtures/will", b"bye", qos=1, retain=True, properties=Properties()),
            properties=Properties(session_expiry_interval=30, receive_maximum=20),
            protocol_name="MQTT",
        )
        assert load(self.name)[0][9] == 0xEE  # the connect flags byte

    def test_publish(self) -> None:
        _, publish, _ = decode_each(self.name)
        assert isinstance(publish, Publish)
        assert (publish.topic, publish.payload) == ("fixtures/pub/v5", b"hello v5")
        assert (publish.qos, publish.retain, publish.dup, publish.packet_id) == (1, False, False, 1)
        assert publish.message_expiry_interval == 60
        props = publish.properties
        assert props.user_properties == [("k", "v")]
        assert props.content_type == "text/plain"
        assert props.message_expiry_interval == 60
        assert len(publish.props_raw) == 25
        # Mosquitto wrote User Property, Content Type, Message Expiry (command-line order) ...
        assert [publish.props_raw[0], publish.props_raw[7], publish.props_raw[20]] == [
            0x26,
            0x03,
            0x02,
        ]
        # ... so a PUBLISH rebuilt from the decoded properties (identifier order) differs in
        # bytes; compare decoded values instead: decode(encode(decode(x))) == decode(x).
        rebuilt = Publish(publish.topic, publish.payload, 1, packet_id=1, properties=props)
        assert rebuilt.encode() != load(self.name)[1]
        assert reencode(rebuilt, 5) == publish

    def test_disconnect(self) -> None:
        assert decode_each(self.name)[2] == Disconnect(ReasonCode.NORMAL_DISCONNECTION)
        assert load(self.name)[2] == b"\xe0\x00"


class TestMosquittoPubV311:
    """mosquitto_pub -V 311 -q 2 -r: a retained QoS 2 publish and its PUBREL."""

    name = "mosquitto_pub_v311_qos2.hex"

    def test_packets(self) -> None:
        connect, publish, pubrel, disconnect = decode_each(self.name)
        assert connect == Connect(
            "mqttv5-fixture-pub311", 4, clean_start=True, keep_alive=60, protocol_name="MQTT"
        )
        assert publish == Publish("fixtures/pub/v311", b"hello 3.1.1", 2, True, False, 1)
        assert isinstance(publish, Publish)
        assert publish.props_raw == b""
        assert pubrel == PubRel(1)
        assert disconnect == Disconnect()


class TestMosquittoSubV5:
    """mosquitto_sub -V 5 with two filters and a Subscription Identifier."""

    name = "mosquitto_sub_v5_sub.hex"

    def test_connect(self) -> None:
        connect = decode_each(self.name)[0]
        assert isinstance(connect, Connect)
        assert connect.client_id == "mqttv5-fixture-sub"
        assert connect.clean_start
        assert connect.keep_alive == 60
        assert connect.properties == Properties(receive_maximum=20)
        assert connect.properties.session_expiry_interval is None

    def test_subscribe(self) -> None:
        subscribe = decode_each(self.name)[1]
        assert subscribe == Subscribe(
            1,
            [Subscription("fixtures/+/state", 1), Subscription("$share/g/x", 1)],
            Properties(subscription_identifiers=[7]),
        )


class TestPahoV5:
    """paho-mqtt 2.2 MQTTv5: CONNECT with a will, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT."""

    name = "paho_v5_connect_publish.hex"

    def test_connect(self) -> None:
        connect = decode_each(self.name)[0]
        assert isinstance(connect, Connect)
        assert connect.client_id == "paho-v5-fixture"
        assert (connect.clean_start, connect.keep_alive) == (True, 30)
        assert connect.username is None
        assert connect.password is None
        assert connect.properties == Properties(
            session_expiry_interval=300,
            receive_maximum=20,
            topic_alias_maximum=10,
            user_properties=[("client", "paho")],
        )
        will_props = Properties(will_delay_interval=10)
        assert connect.will == Will("fixtures/will", b"gone", 1, False, will_props)

    def test_publish(self) -> None:
        publish = decode_each(self.name)[1]
        assert isinstance(publish, Publish)
        assert publish.topic == "fixtures/request"
        assert (publish.qos, publish.packet_id, publish.payload) == (1, 1, b"hello")
        assert publish.payload_format_indicator == 1
        assert publish.properties == Properties(
            payload_format_indicator=1,
            response_topic="fixtures/reply",
            correlation_data=b"\x01\x02\x03",
        )

    def test_subscribe_options(self) -> None:
        subscribe = decode_each(self.name)[2]
        assert isinstance(subscribe, Subscribe)
        assert subscribe.packet_id == 2
        # options 0x2d: QoS 1, No Local, Retain As Published, Retain Handling 2
        options = Subscription("fixtures/+/state", 1, True, True, 2)
        assert subscribe.subscriptions == [options]
        assert options.options_byte() == 0x2D
        assert subscribe.properties == Properties()

    def test_unsubscribe_and_disconnect(self) -> None:
        _, _, _, unsubscribe, disconnect = decode_each(self.name)
        assert unsubscribe == Unsubscribe(3, ["fixtures/+/state"])
        # e0 01 04: a reason code and no property length (remaining length < 2)
        assert disconnect == Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)


class TestPahoV311:
    """paho-mqtt 2.2 MQTTv311: persistent session, retained will, ping, unsubscribe."""

    name = "paho_v311_session.hex"

    def test_packets(self) -> None:
        connect, subscribe, ping, unsubscribe, disconnect = decode_each(self.name)
        assert connect == Connect(
            "paho-v311-fixture",
            4,
            clean_start=False,
            keep_alive=1,
            will=Will("fixtures/will", b"offline", qos=1, retain=True),
            protocol_name="MQTT",
        )
        assert subscribe == Subscribe(
            1, [Subscription("fixtures/a", 1), Subscription("fixtures/#", 2)]
        )
        assert ping == Pingreq()
        assert unsubscribe == Unsubscribe(2, ["fixtures/a", "fixtures/#"])
        assert disconnect == Disconnect()
