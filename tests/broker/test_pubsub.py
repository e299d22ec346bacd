"""PUBLISH and SUBSCRIBE end to end (sections 3.3, 3.8-3.11, 4.3, 4.7, 4.8)."""

from __future__ import annotations

import asyncio

import pytest

from mqttv5.protocol.packets import (
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Unsuback,
    Unsubscribe,
)
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import RawClient


class TestQoS:
    @pytest.mark.spec("MQTT-4.3.1-1", "MQTT-2.2.1-2")
    def test_qos0(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "s")
                suback = await sub.subscribe("a/+", qos=0)
                assert suback.reason_codes == [ReasonCode.GRANTED_QOS_0]
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("a/b", b"zero")
                got = await sub.expect(Publish)
                assert (got.topic, got.payload, got.qos, got.packet_id) == ("a/b", b"zero", 0, None)

        run(main())

    @pytest.mark.spec("MQTT-4.3.2-1", "MQTT-2.2.1-5", "MQTT-2.2.1-4")
    def test_qos1_both_ways(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("q1", qos=1)
                pub = await RawClient.connect(b.ports[0], "p")
                ack = await pub.publish("q1", b"one", qos=1, packet_id=77)
                assert isinstance(ack, PubAck) and ack.packet_id == 77 and ack.reason_code == 0
                got = await sub.expect(Publish)
                assert got.qos == 1 and got.packet_id
                sub.send(PubAck(got.packet_id))

        run(main())

    @pytest.mark.spec("MQTT-4.3.3-1")
    def test_qos2_exactly_once_with_publisher_resend(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("q2", qos=2)
                pub = await RawClient.connect(b.ports[0], "p")
                pub.send(Publish("q2", b"two", 2, packet_id=5))
                assert (await pub.expect(PubRec)).packet_id == 5
                # the publisher resends before PUBREL (e.g. it lost the PUBREC): no second copy
                pub.send(Publish("q2", b"two", 2, dup=True, packet_id=5))
                assert (await pub.expect(PubRec)).packet_id == 5
                pub.send(PubRel(5))
                assert (await pub.expect(PubComp)).packet_id == 5
                got = await sub.expect(Publish)
                assert got.qos == 2 and got.payload == b"two"
                sub.send(PubRec(got.packet_id))
                assert (await sub.expect(PubRel)).packet_id == got.packet_id
                sub.send(PubComp(got.packet_id))
                await sub.nothing()

        run(main())

    def test_qos_downgraded_to_subscription(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("d", qos=0)
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("d", b"x", qos=2)
                got = await sub.expect(Publish)
                assert got.qos == 0

        run(main())

    @pytest.mark.spec("MQTT-3.3.4-7")
    def test_outbound_flow_control_honours_receive_maximum(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(
                    b.ports[0], "s", properties=Properties(receive_maximum=2)
                )
                await sub.subscribe("f", qos=1)
                pub = await RawClient.connect(b.ports[0], "p")
                for i in range(5):
                    await pub.publish("f", bytes([i]), qos=1, packet_id=i + 1)
                first = [await sub.expect(Publish), await sub.expect(Publish)]
                await sub.nothing()  # only two in flight
                for p in first:
                    sub.send(PubAck(p.packet_id))
                rest = [await sub.expect(Publish) for _ in range(2)]
                assert [p.payload for p in first + rest] == [b"\x00", b"\x01", b"\x02", b"\x03"]

        run(main())


class TestRetained:
    @pytest.mark.spec("MQTT-3.3.1-5", "MQTT-3.3.1-6", "MQTT-3.3.1-9")
    def test_set_replace_clear(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("r/1", b"old", qos=1, retain=True)
                await pub.publish("r/1", b"new", qos=1, retain=True)
                await pub.publish("r/2", b"two", retain=True)
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("r/#", qos=1)
                got = sorted(
                    [await sub.expect(Publish), await sub.expect(Publish)], key=lambda p: p.topic
                )
                assert [(p.topic, p.payload, p.retain) for p in got] == [
                    ("r/1", b"new", True),
                    ("r/2", b"two", True),
                ]
                await pub.publish("r/1", b"", retain=True)  # clear
                sub2 = await RawClient.connect(b.ports[0], "s2")
                await sub2.subscribe("r/1")
                await sub2.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.3.1-10", "MQTT-3.3.1-11")
    def test_retain_handling(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("h", b"kept", retain=True)
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("h", retain_handling=2)
                await sub.nothing()
                await sub.subscribe("h", retain_handling=1, packet_id=2)  # not new: nothing
                await sub.nothing()
                await sub.subscribe("h2", retain_handling=1, packet_id=3)
                await sub.subscribe("h", retain_handling=0, packet_id=4)
                assert (await sub.expect(Publish)).payload == b"kept"

        run(main())

    @pytest.mark.spec("MQTT-3.3.1-12", "MQTT-3.3.1-13")
    def test_retain_as_published(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                a = await RawClient.connect(b.ports[0], "a")
                await a.subscribe("rap", retain_as_published=True)
                c = await RawClient.connect(b.ports[0], "c")
                await c.subscribe("rap")
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("rap", b"x", retain=True)
                assert (await a.expect(Publish)).retain is True
                assert (await c.expect(Publish)).retain is False

        run(main())

    def test_retained_message_expiry(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish(
                    "exp", b"x", retain=True, properties=Properties(message_expiry_interval=1)
                )
                await asyncio.sleep(1.2)
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("exp")
                await sub.nothing()

        run(main())


class TestSubscriptions:
    @pytest.mark.spec("MQTT-3.3.4-2", "MQTT-3.3.4-3", "MQTT-3.3.4-4")
    def test_overlapping_subscriptions_one_copy_max_qos_all_ids(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe(
                    "o/#", qos=0, properties=Properties(subscription_identifiers=[3])
                )
                await sub.subscribe(
                    "o/+", qos=1, packet_id=2, properties=Properties(subscription_identifiers=[9])
                )
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("o/x", b"m", qos=1)
                got = await sub.expect(Publish)
                assert got.qos == 1
                assert sorted(got.properties.subscription_identifiers) == [3, 9]
                await sub.nothing()

        run(main())

    @pytest.mark.spec("MQTT-3.8.3-3")
    def test_no_local(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "me")
                await c.subscribe("nl", no_local=True)
                await c.publish("nl", b"mine")
                await c.nothing()
                other = await RawClient.connect(b.ports[0], "other")
                await other.publish("nl", b"theirs")
                assert (await c.expect(Publish)).payload == b"theirs"

        run(main())

    @pytest.mark.spec("MQTT-4.7.2-1")
    def test_wildcards_do_not_match_dollar_topics(self) -> None:
        async def main() -> None:
            async with started_broker(sys_interval=0.2) as b:
                c = await RawClient.connect(b.ports[0], "w")
                await c.subscribe("#")
                await c.subscribe("+/broker/#", packet_id=2)
                await c.nothing(0.5)
                s = await RawClient.connect(b.ports[0], "sys")
                await s.subscribe("$SYS/broker/version")
                got = await s.expect(Publish)
                assert got.payload.startswith(b"mqttv5 version")

        run(main())

    def test_invalid_filters_get_0x8f(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "f")
                suback = await c.subscribe("a/#/b", "ok/+", "x+", "$share/g/y", "$share//z")
                assert suback.reason_codes == [
                    ReasonCode.TOPIC_FILTER_INVALID,
                    ReasonCode.GRANTED_QOS_0,
                    ReasonCode.TOPIC_FILTER_INVALID,
                    ReasonCode.GRANTED_QOS_0,
                    ReasonCode.TOPIC_FILTER_INVALID,
                ]

        run(main())

    @pytest.mark.spec("MQTT-3.10.4-5", "MQTT-3.11.3-1")
    def test_unsubscribe_per_filter_codes(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "u")
                await c.subscribe("u/1")
                c.send(Unsubscribe(7, ["u/1", "u/2"]))
                unsuback = await c.expect(Unsuback)
                assert unsuback.packet_id == 7
                assert unsuback.reason_codes == [
                    ReasonCode.SUCCESS,
                    ReasonCode.NO_SUBSCRIPTION_EXISTED,
                ]
                p = await RawClient.connect(b.ports[0], "p")
                await p.publish("u/1", b"x")
                await c.nothing()

        run(main())

    @pytest.mark.spec("MQTT-4.8.2-3")
    def test_shared_subscription_round_robin(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                members = [await RawClient.connect(b.ports[0], f"m{i}") for i in range(3)]
                for m in members:
                    await m.subscribe("$share/grp/jobs/#", qos=1)
                pub = await RawClient.connect(b.ports[0], "p")
                for i in range(6):
                    await pub.publish("jobs/x", bytes([i]), qos=1, packet_id=i + 1)
                counts = []
                for m in members:
                    got = [await m.expect(Publish), await m.expect(Publish)]
                    for g in got:
                        m.send(PubAck(g.packet_id))
                    await m.nothing(0.1)
                    counts.append(len(got))
                assert counts == [2, 2, 2]

        run(main())

    def test_shared_member_session_end_hands_messages_to_another(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                a = await RawClient.connect(b.ports[0], "a")
                await a.subscribe("$share/g/t", qos=1)
                c = await RawClient.connect(b.ports[0], "c")
                await c.subscribe("$share/g/t", qos=1)
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("t", b"1", qos=1, packet_id=1)
                await pub.publish("t", b"2", qos=1, packet_id=2)
                first_a = await a.expect(Publish)  # unacknowledged by a
                first_c = await c.expect(Publish)
                c.send(PubAck(first_c.packet_id))
                a.abort()  # a's session (expiry 0) ends with one message unacknowledged
                redelivered = await c.expect(Publish)
                assert redelivered.payload == first_a.payload

        run(main())


class TestProperties:
    @pytest.mark.spec(
        "MQTT-3.3.2-15",
        "MQTT-3.3.2-16",
        "MQTT-3.3.2-17",
        "MQTT-3.3.2-18",
        "MQTT-3.3.2-19",
        "MQTT-3.3.2-20",
    )
    def test_properties_pass_through_unchanged_and_in_order(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("props")
                pub = await RawClient.connect(b.ports[0], "p")
                props = Properties(
                    payload_format_indicator=1,
                    content_type="text/plain",
                    response_topic="reply/here",
                    correlation_data=b"\x01\x02",
                    user_properties=[("z", "1"), ("a", "2"), ("z", "3")],
                )
                await pub.publish("props", "héllo".encode(), properties=props)
                got = await sub.expect(Publish)
                assert got.properties == props

        run(main())

    @pytest.mark.spec("MQTT-3.3.2-6")
    def test_message_expiry_decremented_for_queued(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                props = Properties(session_expiry_interval=60)
                sub = await RawClient.connect(b.ports[0], "s", properties=props)
                await sub.subscribe("m", qos=1)
                await sub.disconnect()
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish(
                    "m", b"x", qos=1, properties=Properties(message_expiry_interval=10)
                )
                await pub.publish(
                    "m",
                    b"gone",
                    qos=1,
                    packet_id=2,
                    properties=Properties(message_expiry_interval=1),
                )
                await asyncio.sleep(2.1)
                sub = await RawClient.connect(b.ports[0], "s", clean_start=False, properties=props)
                got = await sub.expect(Publish)
                assert got.payload == b"x"
                assert got.properties.message_expiry_interval in (7, 8)
                await sub.nothing()  # the expired one is not delivered

        run(main())

    @pytest.mark.spec("MQTT-3.3.2-7")
    def test_inbound_topic_alias_not_forwarded(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("alias/t")
                pub = await RawClient.connect(b.ports[0], "p")
                pub.send(Publish("alias/t", b"1", properties=Properties(topic_alias=1)))
                pub.send(Publish("", b"2", properties=Properties(topic_alias=1)))
                one, two = await sub.expect(Publish), await sub.expect(Publish)
                assert (one.topic, two.topic) == ("alias/t", "alias/t")
                assert one.properties.topic_alias is None and two.properties.topic_alias is None

        run(main())

    def test_outbound_topic_alias_when_client_allows(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                sub = await RawClient.connect(
                    b.ports[0], "s", properties=Properties(topic_alias_maximum=5)
                )
                await sub.subscribe("oa/#")
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("oa/long/topic", b"1")
                await pub.publish("oa/long/topic", b"2")
                one, two = await sub.expect(Publish), await sub.expect(Publish)
                assert one.topic == "oa/long/topic" and one.properties.topic_alias == 1
                assert two.topic == "" and two.properties.topic_alias == 1

        run(main())

    @pytest.mark.spec("MQTT-3.1.2-25")
    def test_oversize_publish_discarded_for_small_client(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                small = await RawClient.connect(
                    b.ports[0], "small", properties=Properties(maximum_packet_size=64)
                )
                await small.subscribe("big/#")
                big = await RawClient.connect(b.ports[0], "bigsub")
                await big.subscribe("big/#")
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("big/x", b"y" * 200)
                await pub.publish("big/x", b"tiny")
                assert (await small.expect(Publish)).payload == b"tiny"
                assert (await big.expect(Publish)).payload == b"y" * 200

        run(main())

    @pytest.mark.spec("MQTT-3.3.2-4")
    def test_payload_format_invalid(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "p")
                ack = await pub.publish(
                    "pfi", b"\xff\xfe", qos=1, properties=Properties(payload_format_indicator=1)
                )
                assert isinstance(ack, PubAck)
                assert ack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID

        run(main())

    def test_publish_to_sys_refused(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "p")
                ack = await pub.publish("$SYS/broker/fake", b"x", qos=1)
                assert isinstance(ack, PubAck) and ack.reason_code == ReasonCode.NOT_AUTHORIZED

        run(main())


class TestV311Interop:
    def test_v311_and_v5_exchange(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                old = await RawClient.connect(b.ports[0], "old", version=4)
                await old.subscribe("mix", qos=1)
                new = await RawClient.connect(b.ports[0], "new")
                await new.subscribe("mix", qos=1, no_local=True)
                await new.publish("mix", b"from5", qos=1, properties=Properties(content_type="x"))
                got_old = await old.expect(Publish)
                assert got_old.payload == b"from5" and got_old.qos == 1
                old.send(PubAck(got_old.packet_id))
                old.send(Publish("mix", b"from311", 1, packet_id=9))
                got = [await old.recv(), await old.recv()]  # its own copy (3.1.1) and the PUBACK
                assert sorted(type(p).__name__ for p in got) == ["PubAck", "Publish"]
                assert (await new.expect(Publish)).payload == b"from311"
                await old.disconnect()

        run(main())

    def test_disconnect_from_v5_client(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                c = await RawClient.connect(b.ports[0], "d")
                c.send(Disconnect())
                assert await c.closed() == []

        run(main())


class TestVerbatimForwarding:
    def test_qos0_forwarded_verbatim_only_where_nothing_varies(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                v5 = await RawClient.connect(b.ports[0], "v5")
                await v5.subscribe("vb/#")
                v4 = await RawClient.connect(b.ports[0], "v4", version=4)
                await v4.subscribe("vb/#")
                sid = await RawClient.connect(b.ports[0], "sid")
                await sid.subscribe("vb/#", properties=Properties(subscription_identifiers=[5]))
                pub = await RawClient.connect(b.ports[0], "p")
                sent = Publish("vb/1", b"data", properties=Properties(user_properties=[("a", "b")]))
                pub.send(sent)
                got5 = await v5.expect(Publish)
                assert got5.encode(5) == sent.encode(5)  # the very bytes
                got4 = await v4.expect(Publish)
                assert got4.payload == b"data"
                assert got4.properties == Properties()  # 3.1.1 carries no properties
                got_sid = await sid.expect(Publish)
                assert got_sid.properties.subscription_identifiers == [5]
                assert got_sid.properties.user_properties == [("a", "b")]

        run(main())


class TestLimits:
    def test_max_subscriptions_per_client(self) -> None:
        async def main() -> None:
            async with started_broker(max_subscriptions=2) as b:
                c = await RawClient.connect(b.ports[0], "lim")
                suback = await c.subscribe("a", "b", "c")
                assert suback.reason_codes == [
                    ReasonCode.GRANTED_QOS_0,
                    ReasonCode.GRANTED_QOS_0,
                    ReasonCode.QUOTA_EXCEEDED,
                ]
                again = await c.subscribe("a", qos=1, packet_id=2)  # replacing is not adding
                assert again.reason_codes == [ReasonCode.GRANTED_QOS_1]

        run(main())


class TestMatchCache:
    def test_subscription_changes_are_seen_by_the_next_publish(self) -> None:
        async def main() -> None:
            async with started_broker() as b:
                pub = await RawClient.connect(b.ports[0], "p")
                await pub.publish("mc/t", b"nobody", qos=1)  # caches "no match" for mc/t
                sub = await RawClient.connect(b.ports[0], "s")
                await sub.subscribe("mc/#")
                await pub.publish("mc/t", b"first", qos=1, packet_id=2)
                assert (await sub.expect(Publish)).payload == b"first"
                other = await RawClient.connect(b.ports[0], "o")
                await other.subscribe("mc/t")
                await pub.publish("mc/t", b"both", qos=1, packet_id=3)
                assert (await sub.expect(Publish)).payload == b"both"
                assert (await other.expect(Publish)).payload == b"both"
                await other.disconnect()
                await asyncio.sleep(0.05)
                sub.send(Unsubscribe(9, ["mc/#"]))
                await sub.expect(Unsuback)
                await pub.publish("mc/t", b"gone", qos=1, packet_id=4)
                await sub.nothing()

        run(main())
