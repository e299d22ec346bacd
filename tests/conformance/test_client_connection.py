"""Client conformance on the sans-I/O ``Connection(CLIENT)`` the client library drives: property
size limits on PUBREL, PUBCOMP and AUTH, the order of resent PUBLISH and of PUBREL, UTF-8
strings in CONNECT and PUBLISH, and the QoS 0 and QoS 2 flows (sections 3.1.3, 3.3.2, 3.6, 3.7,
3.15, 4.3, 4.6)."""

from __future__ import annotations

import pytest

from mqttv5.protocol.connection import CLIENT, Connection
from mqttv5.protocol.errors import LocalProtocolError
from mqttv5.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketDecoder,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Will,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.helpers import assert_sent, pair, pump, sent_packets

_RC = ReasonCode
_BIG = Properties(reason_string="r" * 60, user_properties=[("key", "v" * 60)])


def _connected_client(maximum_packet_size: int = 1 << 20) -> Connection:
    """A client Connection after CONNECT and a CONNACK with this Maximum Packet Size."""
    props = Properties(maximum_packet_size=maximum_packet_size)
    return pair(connack=Connack(properties=props))[0]


def _with(packet_type: type, props: Properties) -> Packet:
    if packet_type is Auth:
        props = props.copy()
        props.authentication_method = "SCRAM-SHA-1"
        return Auth(_RC.CONTINUE_AUTHENTICATION, props)
    packet: Packet = packet_type(3, _RC.PACKET_IDENTIFIER_NOT_FOUND, props.copy())
    return packet


def _without(packet: Packet) -> Packet:
    if isinstance(packet, Auth):
        return Auth(packet.reason_code, Properties(authentication_method="SCRAM-SHA-1"))
    assert isinstance(packet, PubRel | PubComp)
    return type(packet)(packet.packet_id, packet.reason_code)


class TestOmittedWhenTooLarge:
    @pytest.mark.spec(
        "MQTT-3.6.2-2",
        "MQTT-3.6.2-3",
        "MQTT-3.7.2-2",
        "MQTT-3.7.2-3",
        "MQTT-3.15.2-2",
        "MQTT-3.15.2-3",
    )
    @pytest.mark.parametrize("packet_type", [PubRel, PubComp, Auth])
    def test_reason_string_and_user_properties_left_out(self, packet_type: type) -> None:
        client = _connected_client(maximum_packet_size=40)
        packet = _with(packet_type, _BIG)
        assert len(packet.encode()) > 40
        client.send(packet)
        assert_sent(client, [_without(packet)])

    @pytest.mark.parametrize("packet_type", [PubRel, PubComp, Auth])
    def test_kept_when_they_fit(self, packet_type: type) -> None:
        client = _connected_client(maximum_packet_size=200)
        packet = _with(packet_type, Properties(reason_string="why", user_properties=[("k", "v")]))
        client.send(packet)
        assert_sent(client, [packet])


class TestOrder:
    @pytest.mark.spec("MQTT-4.6.0-1")
    def test_resent_publishes_keep_their_original_order(self) -> None:
        client, server = pair()
        for topic, qos in (("o/1", 1), ("o/2", 2), ("o/3", 1), ("o/4", 2), ("o/5", 1)):
            client.send(Publish(topic, topic.encode(), qos))
        pump(client, server)
        server.events_received()
        client.receive_eof()  # the network connection is lost before any acknowledgement
        again = Connection(CLIENT, inflight=client.inflight)
        again.send(Connect("client", clean_start=False, keep_alive=0))
        again.data_to_send()
        again.receive_data(Connack(session_present=True).encode())
        again.resend_inflight()
        resent = sent_packets(again)
        assert [(p.topic, p.dup) for p in resent if isinstance(p, Publish)] == [
            (f"o/{n}", True) for n in range(1, 6)
        ]

    @pytest.mark.spec("MQTT-4.6.0-4")
    def test_pubrel_follows_the_order_of_pubrec(self) -> None:
        client = _connected_client()
        for n in (1, 2, 3, 4):
            client.send(Publish(f"q2/{n}", b"x", 2, packet_id=n))
        client.data_to_send()
        order = [3, 1, 4, 2]
        client.receive_data(b"".join(PubRec(pid).encode() for pid in order))
        assert_sent(client, [PubRel(pid) for pid in order])


class TestConnectPayloadEncoding:
    @pytest.mark.spec("MQTT-3.1.3-11", "MQTT-3.1.3-12")
    def test_will_topic_and_user_name_are_utf8_strings(self) -> None:
        will_topic, user_name = "wé/☃/\U0001f600", "üser-名前"
        client = Connection(CLIENT)
        client.send(Connect("c", username=user_name, will=Will(will_topic, b"bye")))
        data = b"".join(client.data_to_send())
        for text in (will_topic, user_name):
            encoded = text.encode("utf-8")
            assert len(encoded).to_bytes(2, "big") + encoded in data
        (decoded,) = PacketDecoder(5).feed(data)
        assert isinstance(decoded, Connect) and decoded.will is not None
        assert (decoded.will.topic, decoded.username) == (will_topic, user_name)

    @pytest.mark.spec("MQTT-3.1.3-11", "MQTT-3.1.3-12")
    @pytest.mark.parametrize(
        "connect",
        [
            Connect("c", will=Will("lone\ud800surrogate", b"x")),
            Connect("c", username="lone\udfffsurrogate"),
            Connect("c", will=Will("nul\x00inside", b"x")),
        ],
        ids=["will-topic-surrogate", "user-name-surrogate", "will-topic-nul"],
    )
    def test_text_that_is_no_valid_utf8_string_is_never_sent(self, connect: Connect) -> None:
        client = Connection(CLIENT)
        with pytest.raises(LocalProtocolError) as info:
            client.send(connect)
        assert info.value.reason_code == _RC.MALFORMED_PACKET
        assert client.data_to_send() == []


class TestPublishProperties:
    @pytest.mark.spec("MQTT-3.3.2-13", "MQTT-3.3.2-19")
    def test_response_topic_and_content_type_are_utf8_strings(self) -> None:
        response_topic, content_type = "réponse/☃", "text/plain; charset=ütf-8"
        client = _connected_client()
        props = Properties(response_topic=response_topic, content_type=content_type)
        client.send(Publish("req", b"x", properties=props))
        data = b"".join(client.data_to_send())
        for prop_id, text in ((b"\x08", response_topic), (b"\x03", content_type)):
            encoded = text.encode("utf-8")
            assert prop_id + len(encoded).to_bytes(2, "big") + encoded in data

    @pytest.mark.spec("MQTT-3.3.2-13", "MQTT-3.3.2-19")
    @pytest.mark.parametrize("field", ["response_topic", "content_type"])
    def test_invalid_text_is_never_sent(self, field: str) -> None:
        client = _connected_client()
        with pytest.raises(LocalProtocolError):
            client.send(Publish("req", b"x", properties=Properties(**{field: "a\udc00b"})))
        assert client.data_to_send() == []

    @pytest.mark.spec("MQTT-3.3.2-13")
    def test_received_response_topic_that_is_not_utf8_is_malformed(self) -> None:
        client = _connected_client()
        raw = Publish("req", b"x", properties=Properties(response_topic="rt")).encode()
        client.receive_data(raw.replace(b"\x08\x00\x02rt", b"\x08\x00\x02\xff\xfe"))
        (disconnect,) = sent_packets(client)
        assert isinstance(disconnect, Disconnect)
        assert disconnect.reason_code == _RC.MALFORMED_PACKET
        assert client.close_expected()


class TestQosFlows:
    @pytest.mark.spec("MQTT-4.3.1-1")
    def test_qos0_publish_has_qos_0_and_dup_0(self) -> None:
        client = _connected_client()
        client.send(Publish("q0", b"x"))
        data = b"".join(client.data_to_send())
        assert data[0] == 0x30  # PUBLISH, DUP 0, QoS 0, RETAIN 0

    @pytest.mark.spec("MQTT-4.3.3-6")
    def test_publish_not_resent_once_pubrel_was_sent(self) -> None:
        client, server = pair()
        client.send(Publish("q2", b"x", 2))
        pump(client, server)
        (publish,) = server.events_received()
        assert isinstance(publish, Publish) and publish.packet_id is not None
        server.ack(publish.packet_id)
        client.receive_data(b"".join(server.data_to_send()))  # PUBREC in ...
        assert sent_packets(client) == [PubRel(publish.packet_id)]  # ... PUBREL out
        client.receive_eof()  # no PUBCOMP: the connection is lost
        again = Connection(CLIENT, inflight=client.inflight)
        again.send(Connect("client", clean_start=False, keep_alive=0))
        again.data_to_send()
        again.receive_data(Connack(session_present=True).encode())
        again.resend_inflight()
        assert sent_packets(again) == [PubRel(publish.packet_id)]

    @pytest.mark.spec("MQTT-4.3.3-7")
    def test_sent_qos2_publish_is_not_expired(self) -> None:
        client, server = pair()
        expiring = Properties(message_expiry_interval=1)
        client.send(Publish("q2", b"x", 2, properties=expiring))
        pump(client, server)
        client.receive_eof()
        later = 3600.0  # long past the Message Expiry Interval
        again = Connection(CLIENT, inflight=client.inflight, now=later)
        again.send(Connect("client", clean_start=False, keep_alive=0))
        again.data_to_send()
        again.receive_data(Connack(session_present=True).encode(), later)
        again.resend_inflight()
        (resent,) = sent_packets(again)
        assert isinstance(resent, Publish) and resent.qos == 2 and resent.dup
        assert resent.payload == b"x"

    @pytest.mark.spec("MQTT-4.3.3-13")
    def test_receiver_completes_the_flow_of_an_expired_message(self) -> None:
        client = _connected_client()
        expiring = Properties(message_expiry_interval=1)
        client.receive_data(Publish("q2", b"x", 2, packet_id=4, properties=expiring).encode())
        client.events_received()
        client.ack(4)
        assert sent_packets(client) == [PubRec(4)]
        client.receive_data(PubRel(4).encode(), now=3600.0)
        assert sent_packets(client) == [PubComp(4)]
