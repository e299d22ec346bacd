"""Broker conformance: which properties the server may send (Request Problem Information, the
peer's Maximum Packet Size on PUBREL, PUBCOMP, UNSUBACK and AUTH) and the Response Topic
encoding (sections 3.1.2.11, 3.3.2.3, 3.6-3.7, 3.11, 3.15).

The Maximum Packet Size rules are checked on the server-side ``Connection`` the broker's handler
sends through (``tests.helpers.pair``); the rest over real sockets with raw packets."""

from __future__ import annotations

import pytest

from mqttv5.protocol.connection import Connection
from mqttv5.protocol.packets import (
    Auth,
    Connect,
    Disconnect,
    Packet,
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
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient
from tests.conformance.test_server_connect import Bystanders
from tests.helpers import assert_sent, pair

_RC = ReasonCode
_BIG = Properties(reason_string="r" * 60, user_properties=[("key", "v" * 60)])


def _connected_server(maximum_packet_size: int) -> Connection:
    """A server Connection after CONNECT (with this Maximum Packet Size) and CONNACK."""
    props = Properties(maximum_packet_size=maximum_packet_size)
    return pair(connect=Connect("c", 5, keep_alive=0, properties=props, protocol_name="MQTT"))[1]


def _with(packet_type: type, props: Properties) -> Packet:
    if packet_type is Unsuback:
        return Unsuback(3, [_RC.NO_SUBSCRIPTION_EXISTED], props.copy())
    if packet_type is Auth:
        props = props.copy()
        props.authentication_method = "SCRAM-SHA-1"
        return Auth(_RC.CONTINUE_AUTHENTICATION, props)
    packet: Packet = packet_type(3, _RC.PACKET_IDENTIFIER_NOT_FOUND, props.copy())
    return packet


def _without(packet: Packet) -> Packet:
    if isinstance(packet, Auth):
        return Auth(packet.reason_code, Properties(authentication_method="SCRAM-SHA-1"))
    if isinstance(packet, Unsuback):
        return Unsuback(packet.packet_id, packet.reason_codes)
    assert isinstance(packet, PubRel | PubComp)
    return type(packet)(packet.packet_id, packet.reason_code)


class TestOmittedWhenTooLarge:
    @pytest.mark.spec(
        "MQTT-3.6.2-2",
        "MQTT-3.6.2-3",
        "MQTT-3.7.2-2",
        "MQTT-3.7.2-3",
        "MQTT-3.11.2-1",
        "MQTT-3.11.2-2",
        "MQTT-3.15.2-2",
        "MQTT-3.15.2-3",
    )
    @pytest.mark.parametrize("packet_type", [PubRel, PubComp, Unsuback, Auth])
    def test_reason_string_and_user_properties_left_out(self, packet_type: type) -> None:
        server = _connected_server(maximum_packet_size=40)
        packet = _with(packet_type, _BIG)
        assert len(packet.encode()) > 40
        server.send(packet)
        assert_sent(server, [_without(packet)])

    @pytest.mark.parametrize("packet_type", [PubRel, PubComp, Unsuback, Auth])
    def test_kept_when_they_fit(self, packet_type: type) -> None:
        server = _connected_server(maximum_packet_size=200)
        small = Properties(reason_string="why", user_properties=[("k", "v")])
        packet = _with(packet_type, small)
        server.send(packet)
        assert_sent(server, [packet])


class TestRequestProblemInformation:
    @pytest.mark.spec("MQTT-3.1.2-29")
    def test_problem_information_only_on_publish_connack_disconnect(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                props = Properties(request_problem_information=0)
                c = await RawClient.connect(port, "quiet", properties=props)
                got: list[Packet] = []
                # failures the broker answers with a reason code: PUBACK / PUBREC ...
                c.send(Publish("$SYS/forbidden", b"x", 1, packet_id=1))
                c.send(Publish("nobody/listens", b"x", 2, packet_id=2))
                got += [await c.expect(PubAck), await c.expect(PubRec)]
                # ... PUBREL / PUBCOMP for unknown packet identifiers ...
                c.send(PubRel(77))
                c.send(PubRec(78))
                got += [await c.expect(PubComp), await c.expect(PubRel)]
                # ... SUBACK and UNSUBACK failures
                c.send(Subscribe(3, [Subscription("bad/#/filter"), Subscription("$share/x")]))
                c.send(Unsubscribe(4, ["never/subscribed"]))
                got += [await c.expect(Suback), await c.expect(Unsuback)]
                assert all(p.reason_code.is_error or p.reason_code == 0x10 for p in got[:4])
                for packet in got:
                    props = packet.properties or Properties()
                    assert props.reason_string is None, packet
                    assert props.user_properties == [], packet
                # PUBLISH keeps the publisher's User Properties (they are the message's)
                await c.subscribe("loud/#")
                pub = await RawClient.connect(port, "pub")
                user = [("a", "1"), ("b", "2")]
                await pub.publish("loud/1", b"x", properties=Properties(user_properties=user))
                assert (await c.expect(Publish)).properties.user_properties == user
                # and DISCONNECT may carry a Reason String
                c.send(Publish("t", b"x", properties=Properties(topic_alias=99)))
                packets = await c.closed()
                assert [type(p) for p in packets] == [Disconnect]

        run(main())


class TestResponseTopic:
    @pytest.mark.spec("MQTT-3.3.2-13")
    def test_response_topic_is_forwarded_as_utf8(self) -> None:
        topic = "réponse/☃/\U0001f600/ǅ"

        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "sub")
                await sub.subscribe("req/#")
                pub = await RawClient.connect(b.ports[0], "pub")
                await pub.publish("req/1", b"x", properties=Properties(response_topic=topic))
                data = await sub.reader.read(65536)
                encoded = topic.encode("utf-8")
                # property 0x08, then a two-byte length and the UTF-8 bytes
                assert b"\x08" + len(encoded).to_bytes(2, "big") + encoded in data
                got = sub.decoder.feed(data)
                assert isinstance(got[0], Publish)
                assert got[0].properties.response_topic == topic

        run(main())

    @pytest.mark.spec("MQTT-3.3.2-13")
    def test_response_topic_that_is_not_utf8_is_malformed(self) -> None:
        raw = Publish("req/1", b"x", properties=Properties(response_topic="rt")).encode()
        assert raw.count(b"\x08\x00\x02rt") == 1
        raw = raw.replace(b"\x08\x00\x02rt", b"\x08\x00\x02\xed\xa0")  # a lone surrogate

        async def main() -> None:
            async with started_broker() as b:
                bystanders = await Bystanders.start(b.ports[0])
                c = await RawClient.connect(b.ports[0], "bad")
                c.send_bytes(raw)
                packets = await c.closed()
                assert [type(p) for p in packets] == [Disconnect], packets
                assert packets[0].reason_code == _RC.MALFORMED_PACKET
                await bystanders.check()

        run(main())
