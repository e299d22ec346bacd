"""Broker conformance: CONNECT, CONNACK, Client Identifiers, sessions, Will Messages and
DISCONNECT (sections 3.1, 3.2, 3.14, 4.1), checked with raw packets over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest

from mqttv5.broker.auth import AuthRequest, AuthResult
from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import BrokerConfig, ListenerSettings
from mqttv5.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
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
    Will,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient

_ids = itertools.count(1)


class Bystanders:
    """A subscriber and a publisher on ``ok/#`` that must keep working while another client
    breaks a rule (the broker closes only the offender)."""

    def __init__(self, sub: RawClient, pub: RawClient) -> None:
        self.sub = sub
        self.pub = pub

    @classmethod
    async def start(cls, port: int) -> Bystanders:
        sub = await RawClient.connect(port, "bystander-sub")
        await sub.subscribe("ok/#", qos=1)
        return cls(sub, await RawClient.connect(port, "bystander-pub"))

    async def check(self) -> None:
        """One QoS 1 message from the publisher reaches the subscriber."""
        n = next(_ids)
        payload = b"still here %d" % n
        ack = await self.pub.publish(f"ok/{n}", payload, qos=1, packet_id=n % 65535 + 1)
        assert isinstance(ack, PubAck) and ack.reason_code == ReasonCode.SUCCESS, ack
        got = await self.sub.expect(Publish)
        assert got.payload == payload, got
        assert got.packet_id is not None
        self.sub.send(PubAck(got.packet_id))


@contextlib.asynccontextmanager
async def open_and_locked_listeners() -> AsyncIterator[tuple[MqttBroker, int, int]]:
    """A broker with two listeners: the first allows anonymous clients, the second refuses
    every client with 0x87 Not authorized. Yields ``(broker, open_port, locked_port)``."""
    config = BrokerConfig(
        listeners=[
            ListenerSettings(bind="127.0.0.1", port=0, allow_anonymous=True),
            ListenerSettings(bind="127.0.0.1", port=0, allow_anonymous=False),
        ],
        sys_interval=0,
        keepalive_sweep_interval=0.1,
    )
    broker = MqttBroker(config)
    await broker.start()
    try:
        open_port, locked_port = broker.ports
        yield broker, open_port, locked_port
    finally:
        await broker.stop()


def _expiry(seconds: int) -> Properties:
    return Properties(session_expiry_interval=seconds)


async def _refused(client: RawClient) -> Connack:
    """The packets before the close are exactly one refusing CONNACK: return it."""
    packets = await client.closed()
    assert len(packets) == 1 and isinstance(packets[0], Connack), packets
    assert packets[0].reason_code.is_error, packets[0]
    return packets[0]


class TestSessionsAndCleanStart:
    @pytest.mark.spec("MQTT-3.1.2-6", "MQTT-3.1.4-5", "MQTT-3.2.2-3")
    def test_clean_start_0_without_a_session_creates_one(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                c = await RawClient.connect(
                    port, "fresh", clean_start=False, properties=_expiry(60)
                )
                # [MQTT-3.2.2-3] no session held: Session Present 0, reason 0x00
                assert c.connack.reason_code == ReasonCode.SUCCESS
                assert c.connack.session_present is False
                await c.subscribe("fresh/#", qos=1)
                await c.disconnect()
                pub = await RawClient.connect(port, "pub")
                await pub.publish("fresh/1", b"kept", qos=1)
                # the session created by that first connection is there to resume
                c = await RawClient.connect(
                    port, "fresh", clean_start=False, properties=_expiry(60)
                )
                assert c.connack.session_present is True
                got = await c.expect(Publish)
                assert (got.topic, got.payload) == ("fresh/1", b"kept")

        run(main())

    @pytest.mark.spec("MQTT-3.1.3-2", "MQTT-3.2.2-3", "MQTT-3.1.4-4")
    def test_session_state_is_keyed_on_the_client_id(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                alpha = await RawClient.connect(port, "alpha", properties=_expiry(60))
                await alpha.subscribe("alpha/#", qos=1)
                await alpha.disconnect()
                # another ClientID does not see alpha's session
                beta = await RawClient.connect(port, "beta", clean_start=False)
                assert beta.connack.session_present is False
                await beta.disconnect()
                # alpha's own ClientID resumes it: Session Present 1, reason 0x00
                alpha = await RawClient.connect(
                    port, "alpha", clean_start=False, properties=_expiry(60)
                )
                assert alpha.connack.session_present is True
                assert alpha.connack.reason_code == ReasonCode.SUCCESS
                await alpha.disconnect()
                # [MQTT-3.1.4-4] Clean Start 1 on a later CONNECT discards it
                alpha = await RawClient.connect(port, "alpha", properties=_expiry(60))
                assert alpha.connack.session_present is False
                pub = await RawClient.connect(port, "pub")
                ack = await pub.publish("alpha/1", b"x", qos=1)
                assert isinstance(ack, PubAck)
                assert ack.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
                await alpha.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.2.2-6")
    def test_refusing_connack_has_session_present_0(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                held = await RawClient.connect(port, "held", properties=_expiry(60))
                await held.subscribe("held/#")
                await held.disconnect()
                # the broker holds a session for "held", but refuses this CONNECT
                c = await RawClient.open(port)
                c.send(
                    Connect(
                        "held",
                        clean_start=False,
                        properties=Properties(authentication_method="no-such-method"),
                    )
                )
                connack = await _refused(c)
                assert connack.session_present is False

        run(main())

    @pytest.mark.spec("MQTT-4.1.0-2")
    def test_session_state_is_discarded_when_the_expiry_interval_has_passed(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                c = await RawClient.connect(port, "expiring", properties=_expiry(1))
                await c.subscribe("exp/#", qos=1)
                await c.disconnect()
                pub = await RawClient.connect(port, "pub")
                ack = await pub.publish("exp/queued", b"x", qos=1, packet_id=1)
                assert isinstance(ack, PubAck) and ack.reason_code == ReasonCode.SUCCESS
                await asyncio.sleep(1.6)
                # the subscription went with the session ...
                ack = await pub.publish("exp/late", b"x", qos=1, packet_id=2)
                assert isinstance(ack, PubAck)
                assert ack.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
                # ... and so did the message queued for it
                c = await RawClient.connect(port, "expiring", clean_start=False)
                assert c.connack.session_present is False
                await c.nothing()

        run(main())


class TestClientIdentifier:
    @pytest.mark.spec("MQTT-3.1.3-5")
    def test_ids_of_1_to_23_alphanumerics_are_accepted(self) -> None:
        alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        ids = ["a", "Z", "7", alphabet[:23], alphabet[23:46], alphabet[39:62], "0" * 23]

        async def main() -> None:
            async with started_broker() as b:
                for client_id in ids:
                    c = await RawClient.connect(b.ports[0], client_id)
                    # accepted under the identifier it sent: none assigned in its place
                    assert c.connack.properties.assigned_client_identifier is None
                    await c.disconnect()

        run(main())

    @pytest.mark.spec("MQTT-3.1.3-7")
    def test_connection_is_handled_under_the_assigned_id(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                first = await RawClient.connect(port, "", properties=_expiry(60))
                assigned = first.connack.properties.assigned_client_identifier
                assert assigned
                await first.subscribe("assigned/#", qos=1)
                # a CONNECT with the assigned id takes over that same connection's session
                second = await RawClient.connect(
                    port, assigned, clean_start=False, properties=_expiry(60)
                )
                assert second.connack.session_present is True
                packets = await first.closed()
                assert isinstance(packets[-1], Disconnect), packets
                assert packets[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER
                pub = await RawClient.connect(port, "pub")
                await pub.publish("assigned/1", b"x", qos=1)
                got = await second.expect(Publish)
                assert got.topic == "assigned/1"

        run(main())

    @pytest.mark.spec("MQTT-3.1.3-8")
    def test_rejected_client_id_gets_0x85_and_the_close(self) -> None:
        async def main() -> None:
            async with started_broker(max_client_id_length=16) as b:
                port = b.ports[0]
                bystanders = await Bystanders.start(port)
                too_long = await RawClient.open(port)
                too_long.send(Connect("x" * 17))
                connack = await _refused(too_long)
                assert connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
                # an empty ClientID is accepted only with Clean Start 1 (this broker's choice)
                empty = await RawClient.open(port)
                empty.send(Connect("", clean_start=False))
                connack = await _refused(empty)
                assert connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
                await bystanders.check()

        run(main())


class TestConnectChecks:
    @pytest.mark.spec("MQTT-3.1.4-2")
    def test_failed_authorization_gets_an_error_connack_and_the_close(self) -> None:
        async def main() -> None:
            async with open_and_locked_listeners() as (_b, open_port, locked_port):
                bystanders = await Bystanders.start(open_port)
                c = await RawClient.open(locked_port)
                c.send(Connect("locked-out"))
                connack = await _refused(c)
                assert connack.reason_code == ReasonCode.NOT_AUTHORIZED
                assert connack.session_present is False
                await bystanders.check()

        run(main())

    @pytest.mark.spec("MQTT-3.1.4-6")
    def test_data_after_a_refused_connect_is_not_processed(self) -> None:
        async def main() -> None:
            async with open_and_locked_listeners() as (broker, open_port, locked_port):
                bystanders = await Bystanders.start(open_port)
                c = await RawClient.open(locked_port)
                c.send_bytes(
                    Connect("intruder").encode()
                    + Publish("ok/intruder", b"should not arrive", retain=True).encode()
                    + Subscribe(1, [Subscription("ok/#")]).encode()
                )
                connack = await _refused(c)
                assert connack.reason_code == ReasonCode.NOT_AUTHORIZED
                await bystanders.sub.nothing()
                assert broker.router.retained.get("ok/intruder") is None
                await bystanders.check()

        run(main())

    @pytest.mark.spec("MQTT-3.1.3-11")
    def test_will_topic_that_is_not_utf8_is_malformed(self) -> None:
        raw = Connect("w", will=Will("ab", b"x")).encode()
        assert raw.count(b"\x00\x02ab") == 1
        self._check_malformed(raw.replace(b"\x00\x02ab", b"\x00\x02\xff\xfe"))

    @pytest.mark.spec("MQTT-3.1.3-12")
    def test_user_name_that_is_not_utf8_is_malformed(self) -> None:
        raw = Connect("u", username="uu").encode()
        assert raw.count(b"\x00\x02uu") == 1
        self._check_malformed(raw.replace(b"\x00\x02uu", b"\x00\x02\xc3\x28"))

    @staticmethod
    def _check_malformed(connect: bytes) -> None:
        async def main() -> None:
            async with started_broker() as b:
                bystanders = await Bystanders.start(b.ports[0])
                c = await RawClient.open(b.ports[0])
                c.send_bytes(connect)
                connack = await _refused(c)
                assert connack.reason_code == ReasonCode.MALFORMED_PACKET
                await bystanders.check()

        run(main())


class TestMaximumQosAndRetain:
    @pytest.mark.spec("MQTT-3.2.2-9")
    @pytest.mark.parametrize(("maximum_qos", "advertised"), [(0, 0), (1, 1), (2, None)])
    def test_maximum_qos_is_advertised(self, maximum_qos: int, advertised: int | None) -> None:
        async def main() -> None:
            async with started_broker(maximum_qos=maximum_qos) as b:
                c = await RawClient.connect(b.ports[0], "q")
                assert c.connack.properties.maximum_qos == advertised

        run(main())

    @pytest.mark.spec("MQTT-3.2.2-10")
    @pytest.mark.parametrize("maximum_qos", [0, 1])
    def test_limited_server_still_accepts_subscribe_at_any_qos(self, maximum_qos: int) -> None:
        async def main() -> None:
            async with started_broker(maximum_qos=maximum_qos) as b:
                c = await RawClient.connect(b.ports[0], "q")
                c.send(Subscribe(7, [Subscription(f"q/{qos}", qos) for qos in (0, 1, 2)]))
                suback = await c.expect(Suback)
                assert suback.packet_id == 7
                assert suback.reason_codes == [min(q, maximum_qos) for q in (0, 1, 2)]

        run(main())

    @pytest.mark.spec("MQTT-3.2.2-12")
    def test_will_qos_above_maximum_qos_is_refused(self) -> None:
        async def main() -> None:
            async with started_broker(maximum_qos=1) as b:
                bystanders = await Bystanders.start(b.ports[0])
                c = await RawClient.open(b.ports[0])
                c.send(Connect("w", will=Will("will/t", b"bye", qos=2)))
                connack = await c.expect(Connack)
                assert connack.reason_code == ReasonCode.QOS_NOT_SUPPORTED, connack
                assert await c.closed() == []
                await bystanders.check()

        run(main())

    @pytest.mark.spec("MQTT-3.2.2-13")
    def test_will_retain_without_retain_support_is_refused(self) -> None:
        async def main() -> None:
            async with started_broker(retain_available=False) as b:
                bystanders = await Bystanders.start(b.ports[0])
                c = await RawClient.open(b.ports[0])
                c.send(Connect("w", will=Will("will/t", b"bye", retain=True)))
                connack = await c.expect(Connack)
                assert connack.reason_code == ReasonCode.RETAIN_NOT_SUPPORTED, connack
                assert await c.closed() == []
                await bystanders.check()

        run(main())


class TestConnack:
    @pytest.mark.spec("MQTT-3.2.0-1")
    def test_connack_goes_out_before_queued_messages(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                c = await RawClient.connect(port, "waiting", properties=_expiry(60))
                await c.subscribe("waiting/#", qos=1)
                await c.disconnect()
                pub = await RawClient.connect(port, "pub")
                for n in (1, 2, 3):
                    await pub.publish(f"waiting/{n}", b"queued", qos=1, packet_id=n)
                c = await RawClient.open(port)
                c.send(Connect("waiting", clean_start=False, properties=_expiry(60)))
                first = await c.recv()
                assert isinstance(first, Connack), first
                assert first.reason_code == ReasonCode.SUCCESS and first.session_present
                rest = [await c.expect(Publish) for _ in range(3)]
                assert [p.topic for p in rest] == ["waiting/1", "waiting/2", "waiting/3"]

        run(main())

    @pytest.mark.spec("MQTT-3.2.0-1")
    def test_connack_goes_out_before_the_answer_to_an_early_pingreq(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                # a client need not wait for CONNACK before sending more packets (3.1.4)
                c = await RawClient.open(b.ports[0])
                c.send_bytes(Connect("eager").encode() + Pingreq().encode())
                first = await c.recv()
                assert isinstance(first, Connack), first
                assert first.reason_code == ReasonCode.SUCCESS
                assert isinstance(await c.recv(), Pingresp)

        run(main())

    @pytest.mark.spec("MQTT-3.2.0-2", "MQTT-3.1.0-2")
    def test_second_connect_gets_no_second_connack(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                bystanders = await Bystanders.start(b.ports[0])
                c = await RawClient.connect(b.ports[0], "twice")
                c.send(Connect("twice"))
                packets = await c.closed()
                assert not any(isinstance(p, Connack) for p in packets), packets
                assert len(packets) == 1 and isinstance(packets[0], Disconnect), packets
                assert packets[0].reason_code == ReasonCode.PROTOCOL_ERROR
                await bystanders.check()

        run(main())

    @pytest.mark.spec("MQTT-3.2.0-2", "MQTT-3.1.0-2")
    def test_two_connects_in_one_segment(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                bystanders = await Bystanders.start(b.ports[0])
                c = await RawClient.open(b.ports[0])
                c.send_bytes(Connect("double").encode() + Connect("double").encode())
                packets = await c.closed()
                connacks = [p for p in packets if isinstance(p, Connack)]
                assert len(connacks) == 1 and packets[0] is connacks[0], packets
                if not connacks[0].reason_code.is_error:
                    assert len(packets) == 2 and isinstance(packets[1], Disconnect), packets
                    assert packets[1].reason_code == ReasonCode.PROTOCOL_ERROR
                else:
                    assert len(packets) == 1
                await asyncio.sleep(0.1)
                session = b.sessions.get("double")
                assert session is None or session.handler is None, session
                await bystanders.check()

        run(main())

    @pytest.mark.spec("MQTT-3.1.2-28")
    @pytest.mark.parametrize("request_response_information", [None, 0])
    def test_no_response_information_unless_requested(
        self, request_response_information: int | None
    ) -> None:
        async def main() -> None:
            async with started_broker() as b:
                props = Properties(request_response_information=request_response_information)
                c = await RawClient.connect(b.ports[0], "rri", properties=props)
                assert c.connack.properties.response_information is None

        run(main())

    @pytest.mark.spec("MQTT-4.12.0-6")
    def test_no_auth_and_no_method_without_a_method_in_connect(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "plain")
                assert c.connack.properties.authentication_method is None
                assert c.connack.properties.authentication_data is None
                await c.subscribe("plain/#", qos=1)
                c.send(Publish("plain/1", b"x", 1, packet_id=1))
                c.send(Pingreq())
                seen = [await c.recv() for _ in range(3)]
                assert {type(p) for p in seen} == {Publish, PubAck, Pingresp}, seen
                await c.nothing()
                assert not any(isinstance(p, Auth) for p in seen)

        run(main())


class TestWill:
    @pytest.mark.spec("MQTT-3.1.2-7")
    def test_will_is_stored_with_the_session(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "watcher")
                await sub.subscribe("will/#")
                will = Will("will/stored", b"gone", properties=Properties(will_delay_interval=1))
                c = await RawClient.connect(port, "mortal", will=will, properties=_expiry(30))
                loop = asyncio.get_running_loop()
                gone_at = loop.time()
                c.abort()
                # the connection is gone; the will outlives it in the session until the delay
                got = await sub.expect(Publish, wait=5.0)
                assert loop.time() - gone_at >= 0.9
                assert (got.topic, got.payload) == ("will/stored", b"gone")

        run(main())

    @pytest.mark.spec("MQTT-3.1.2-14")
    def test_will_retain_0_publishes_a_non_retained_message(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                live = await RawClient.connect(port, "live")
                await live.subscribe("will/#", retain_as_published=True)
                c = await RawClient.connect(port, "mortal", will=Will("will/plain", b"gone"))
                c.abort()
                got = await live.expect(Publish)
                assert got.payload == b"gone" and got.retain is False
                late = await RawClient.connect(port, "late")
                await late.subscribe("will/#")
                await late.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.1.2-15")
    def test_will_retain_1_publishes_a_retained_message(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                live = await RawClient.connect(port, "live")
                await live.subscribe("will/#", retain_as_published=True)
                will = Will("will/kept", b"gone", retain=True)
                c = await RawClient.connect(port, "mortal", will=will)
                c.abort()
                got = await live.expect(Publish)
                assert got.payload == b"gone" and got.retain is True
                late = await RawClient.connect(port, "late")
                await late.subscribe("will/#")
                got = await late.expect(Publish)
                assert (got.topic, got.payload, got.retain) == ("will/kept", b"gone", True)

        run(main())

    @pytest.mark.spec("MQTT-3.1.3-10")
    def test_will_user_properties_keep_their_order(self) -> None:
        pairs = [("z", "1"), ("a", "2"), ("z", "3"), ("m", ""), ("a", "1")]

        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "watcher")
                await sub.subscribe("will/#")
                will = Will("will/props", b"gone", properties=Properties(user_properties=pairs))
                c = await RawClient.connect(port, "mortal", will=will)
                c.abort()
                got = await sub.expect(Publish)
                assert got.properties.user_properties == pairs

        run(main())

    @pytest.mark.spec("MQTT-3.14.4-3")
    def test_normal_disconnect_discards_the_will(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                sub = await RawClient.connect(port, "watcher")
                await sub.subscribe("will/#")
                c = await RawClient.connect(port, "polite", will=Will("will/now", b"x"))
                await c.disconnect(ReasonCode.NORMAL_DISCONNECTION)
                # a delayed will in a session that outlives the connection is discarded too
                delayed = Will("will/later", b"x", properties=Properties(will_delay_interval=1))
                c = await RawClient.connect(port, "polite2", will=delayed, properties=_expiry(30))
                await c.disconnect(ReasonCode.NORMAL_DISCONNECTION)
                await sub.nothing(1.5)
                # against the same watcher, 0x04 Disconnect with Will Message does publish it
                c = await RawClient.connect(port, "rude", will=Will("will/asked", b"y"))
                await c.disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)
                got = await sub.expect(Publish)
                assert got.topic == "will/asked"

        run(main())


class TestDisconnect:
    @pytest.mark.spec("MQTT-3.14.0-1")
    def test_no_disconnect_before_a_successful_connack(self) -> None:
        async def main() -> None:
            async with open_and_locked_listeners() as (broker, open_port, locked_port):
                # a protocol error before CONNECT: closed, without DISCONNECT
                first_not_connect = await RawClient.open(open_port)
                first_not_connect.send(Publish("a", b"x"))
                packets = await first_not_connect.closed()
                assert not any(isinstance(p, Disconnect) for p in packets), packets
                # a malformed CONNECT: CONNACK 0x81, no DISCONNECT
                malformed = await RawClient.open(open_port)
                data = bytearray(Connect("m").encode())
                data[9] |= 0x01  # the reserved Connect Flags bit
                malformed.send_bytes(bytes(data))
                connack = await _refused(malformed)
                assert connack.reason_code == ReasonCode.MALFORMED_PACKET
                # refused, then more packets: still no DISCONNECT
                refused = await RawClient.open(locked_port)
                refused.send_bytes(Connect("r").encode() + bytes.fromhex("360400016100"))
                await _refused(refused)
                # the broker shuts down while a connection has not sent CONNECT yet
                silent = await RawClient.open(open_port)
                connected = await RawClient.connect(open_port, "connected")
                await asyncio.sleep(0.05)
                stopping = asyncio.create_task(broker.stop())
                assert await silent.closed() == []
                packets = await connected.closed()
                assert [type(p) for p in packets] == [Disconnect], packets
                await stopping

        run(main())

    @pytest.mark.spec("MQTT-3.14.4-2")
    def test_server_closes_the_connection_after_sending_disconnect(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                bystanders = await Bystanders.start(port)
                # after a violation: DISCONNECT 0x94, then end of stream
                bad = await RawClient.connect(port, "bad")
                bad.send(Publish("t", b"x", properties=Properties(topic_alias=999)))
                packets = await bad.closed()
                assert [type(p) for p in packets] == [Disconnect], packets
                assert bad.eof
                # on session takeover: DISCONNECT 0x8E to the old connection, then its close
                old = await RawClient.connect(port, "taken")
                await RawClient.connect(port, "taken")
                packets = await old.closed()
                assert [p.reason_code for p in packets] == [ReasonCode.SESSION_TAKEN_OVER]
                assert old.eof
                await bystanders.check()

        run(main())


class TestSessionState:
    @pytest.mark.spec("MQTT-3.1.2-23")
    def test_session_state_outlives_the_connection(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                port = b.ports[0]
                c = await RawClient.connect(port, "keeper", properties=_expiry(60))
                await c.subscribe("keep/#", qos=2)
                pub = await RawClient.connect(port, "pub")
                await pub.publish("keep/inflight", b"1", qos=1, packet_id=1)
                inflight = await c.expect(Publish)  # sent, not acknowledged
                # a QoS 2 message from the client, answered with PUBREC, not yet released
                c.send(Publish("keep/own", b"2", 2, packet_id=42))
                answers = [await c.recv() for _ in range(2)]  # PUBREC and its own copy
                assert [p.packet_id for p in answers if isinstance(p, PubRec)] == [42], answers
                c.abort()
                await pub.publish("keep/queued", b"3", qos=1, packet_id=2)
                c = await RawClient.connect(port, "keeper", clean_start=False)
                assert c.connack.session_present is True
                # the unacknowledged delivery is resent, the queued one follows, and the
                # incoming QoS 2 message is still known (PUBCOMP 0x00, not 0x92)
                c.send(PubRel(42))
                got = [await c.recv() for _ in range(4)]
                comps = [p for p in got if isinstance(p, PubComp)]
                assert [(p.packet_id, p.reason_code) for p in comps] == [(42, ReasonCode.SUCCESS)]
                publishes = [p for p in got if isinstance(p, Publish)]
                assert ("keep/inflight", inflight.packet_id, True) in [
                    (p.topic, p.packet_id, p.dup) for p in publishes
                ]
                assert "keep/queued" in [p.topic for p in publishes]

        run(main())


class _Reverse:
    """A toy authentication method: the server sends b"abc", the client must answer b"cba".
    Clients without an Authentication Method are let in."""

    def authenticate(self, request: AuthRequest) -> AuthResult:
        method = request.connect.properties.authentication_method
        if method is None:
            return AuthResult(ReasonCode.SUCCESS)
        if method != "REVERSE":
            return AuthResult(ReasonCode.BAD_AUTHENTICATION_METHOD)
        if request.auth is None or request.auth.reason_code == ReasonCode.RE_AUTHENTICATE:
            return AuthResult(
                ReasonCode.CONTINUE_AUTHENTICATION,
                properties=Properties(authentication_data=b"abc"),
            )
        if request.auth.properties.authentication_data == b"cba":
            return AuthResult(ReasonCode.SUCCESS)
        return AuthResult(ReasonCode.NOT_AUTHORIZED)


def _auth(code: ReasonCode, data: bytes | None = None) -> Auth:
    return Auth(code, Properties(authentication_method="REVERSE", authentication_data=data))


class TestReauthentication:
    @pytest.mark.spec("MQTT-4.12.1-2")
    def test_failed_reauthentication_closes_the_connection(self) -> None:
        async def main() -> None:
            config = BrokerConfig(
                listeners=[ListenerSettings(bind="127.0.0.1", port=0)], sys_interval=0
            )
            broker = MqttBroker(config, authenticator=_Reverse())
            await broker.start()
            try:
                port = broker.ports[0]
                bystanders = await Bystanders.start(port)
                c = await RawClient.open(port)
                c.send(Connect("reauth", properties=Properties(authentication_method="REVERSE")))
                assert (await c.expect(Auth)).properties.authentication_data == b"abc"
                c.send(_auth(ReasonCode.CONTINUE_AUTHENTICATION, b"cba"))
                assert (await c.expect(Connack)).reason_code == ReasonCode.SUCCESS
                c.send(_auth(ReasonCode.RE_AUTHENTICATE))
                assert (await c.expect(Auth)).reason_code == ReasonCode.CONTINUE_AUTHENTICATION
                c.send(_auth(ReasonCode.CONTINUE_AUTHENTICATION, b"wrong"))
                packets = await c.closed()
                assert c.eof
                assert all(isinstance(p, Disconnect) and p.reason_code.is_error for p in packets)
                await bystanders.check()
            finally:
                await broker.stop()

        run(main())
